"""``adapmtl compare``: several models against one baseline, in the paper's Table 2 layout (the
table itself is drawn by ``report.tables``), and the sparsity-accuracy curve as plain numbers (drawn
by ``report.plots``).

An input is an eval JSON, a checkpoint (evaluated here) or a run folder (its ``summary.json``).
Without an explicit baseline, the dense inputs (no zero weight) are the baseline: one as it is,
several (seeds) pooled into their mean (``pool_dense``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.workflows.evaluate import metric_directions, result_of

SUMMARY = "summary.json"
# Points of one method closer than this in overall sparsity (a fraction) are one point: 0.1 points.
SPARSITY_DECIMALS = 3
DELTA_METRICS = {"delta_t": "Delta_T", "delta_p": "Delta_p"}
METHOD_RULE = "the label without its '-'/'_'-separated tokens that contain a digit"


def compare(files: list[Path], baseline: Path | None = None, *, curve_metric: str | None = None,
            method_of: str | None = None, **eval_options) -> dict:
    """The paper's Table 2 for several models: every metric, Delta per task, component sparsity,
    Delta_T and Delta_p against the baseline. Each input is an eval JSON, a checkpoint or a run
    folder. Without ``baseline`` the dense inputs are the baseline (``pool_dense``) and stay rows.

    With ``curve_metric`` (or ``method_of``) the result also has ``curve``: ``sparsity_curve`` of
    that metric (default ``delta_t``)."""
    from adapmtl_cli.tasks.scores import delta_scores

    pattern = method_pattern(method_of)  # a bad expression fails before any checkpoint is evaluated
    if baseline is not None:
        reference = result_of(input_file(baseline, "--baseline "), label="--baseline ", **eval_options)
    inputs = [(input_label(f), str(f), result_of(input_file(f), **eval_options)) for f in files]
    if baseline is not None:
        head = [("baseline", str(baseline), reference)]
        description, name, baseline_files = str(baseline), input_label(baseline), [str(baseline)]
    else:
        reference, head, description, name, baseline_files = implicit_baseline(inputs)
    rows = head + inputs
    directions = metric_directions(list(reference["metrics"]))
    table = []
    for label, path, result in rows:
        scores = delta_scores(result["metrics"], reference["metrics"], directions)
        table.append({
            "model": label, "file": path, "metrics": result["metrics"],
            "sparsity": result.get("sparsity") or {},
            "delta": {"per_task": scores.per_task, "delta_t": scores.delta_t, "delta_p": scores.delta_p,
                      "skipped": [vars(s) for s in scores.skipped]},
        })
    comparison = {"baseline": description, "baseline_name": name, "baseline_files": baseline_files,
                  "baseline_metrics": reference["metrics"], "rows": table, "definition": scores.definition}
    if curve_metric is not None or method_of is not None:
        comparison["curve"] = sparsity_curve(comparison, table[len(head):], curve_metric or "delta_t", pattern)
    return comparison


# -- inputs ---------------------------------------------------------------------------------


def input_file(path: Path, label: str = "") -> Path:
    """The file behind an input: a run folder's ``summary.json``, or the path itself."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / SUMMARY).is_file():
        raise ConfigError(f"{label}{path}: not a run folder: no {SUMMARY}; pass a run folder, an eval JSON or a checkpoint")
    return path / SUMMARY


def input_label(path: Path) -> str:
    """A row's name: a run folder's name (also for its ``summary.json``), else the file's stem."""
    path = Path(path)
    if path.is_dir() or path.name == SUMMARY:
        return path.resolve().name if path.is_dir() else path.resolve().parent.name
    return path.stem


def is_dense(result: dict) -> bool:
    """No zero weight: the zero counts sum to 0, or without counts the overall sparsity is 0, or
    the result has no sparsity record at all."""
    sparsity = result.get("sparsity") or {}
    zeros = sparsity.get("zeros")
    if isinstance(zeros, dict):
        return sum(zeros.values()) == 0
    if zeros is not None:
        return zeros == 0
    return not sparsity.get("overall")


def implicit_baseline(inputs: list[tuple[str, str, dict]]):
    """The baseline when none is given: the dense inputs, one as it is, several pooled
    (``pool_dense``) and shown as a first row. Returns (result, rows to put first, description,
    short name, files)."""
    dense = [(label, path, result) for label, path, result in inputs if is_dense(result)]
    if not dense:
        raise ConfigError("no dense model among the inputs (every one has zero weights); pass --baseline FILE")
    files = [path for _, path, _ in dense]
    if len(dense) == 1:
        label, _, result = dense[0]
        return result, [], label, label, files
    name = f"mean of {len(dense)} dense models"
    description = f"{name}: {', '.join(label for label, _, _ in dense)}"
    pooled = pool_dense([result for _, _, result in dense])
    return pooled, [("dense mean", description, pooled)], description, name, files


def pool_dense(results: list[dict]) -> dict:
    """One baseline from several dense results (seeds): each metric is the mean over them, null
    where any of them lacks it or has it undefined. One result is returned as it is."""
    if len(results) == 1:
        return results[0]
    metrics: dict[str, dict[str, float | None]] = {}
    for result in results:
        for task, values in result["metrics"].items():
            for key in values:
                metrics.setdefault(task, {})[key] = None
    for task, values in metrics.items():
        for key in values:
            column = [result["metrics"].get(task, {}).get(key) for result in results]
            if all(v is not None and math.isfinite(float(v)) for v in column):
                values[key] = sum(float(v) for v in column) / len(column)
    components = {name: 0.0 for result in results for name in (result.get("sparsity") or {}).get("components", {})}
    return {"metrics": metrics, "sparsity": {"overall": 0.0, "components": components}}


# -- the sparsity-accuracy curve ------------------------------------------------------------


def method_pattern(method_of: str | None) -> re.Pattern | None:
    if method_of is None:
        return None
    try:
        return re.compile(method_of)
    except re.error as exc:
        raise ConfigError(f"--method-of '{method_of}': not a regular expression ({exc})") from None


def method_name(label: str, pattern: re.Pattern | None = None) -> str:
    """An input's method. By default ``METHOD_RULE``: ``adapmtl-0.9-seed1``, ``adapmtl_s95_seed2``
    and ``adapmtl`` are all ``adapmtl`` (the label itself when no token is left). With
    ``pattern``: its first group (or whole match, without a group) searched in the label."""
    if pattern is not None:
        match = pattern.search(label)
        method = (match.group(1) if pattern.groups else match.group(0)) if match else None
        if not method:
            raise ConfigError(f"--method-of '{pattern.pattern}' finds no method in the label {label!r}")
        return method
    kept = [(separator, token) for separator, token in re.findall(r"([-_]*)([^-_]+)", label)
            if not re.search(r"\d", token)]
    if not kept:
        return label
    return kept[0][1] + "".join(separator + token for separator, token in kept[1:])


def metric_choices(comparison: dict) -> list[str]:
    """The names ``--metric`` accepts for this comparison."""
    metrics = comparison["baseline_metrics"]
    return (list(DELTA_METRICS) + [f"delta/{task}" for task in metrics]
            + [f"{task}/{key}" for task, values in metrics.items() for key in values])


def metric_value(row: dict, metric: str) -> float | None:
    """A row's value of a ``--metric`` name; None when it is undefined there."""
    if metric in DELTA_METRICS:
        value = row["delta"][metric]
    elif metric.startswith("delta/"):
        value = row["delta"]["per_task"].get(metric[len("delta/"):])
    else:
        task, key = metric.split("/", 1)
        value = row["metrics"].get(task, {}).get(key)
    return None if value is None or not math.isfinite(float(value)) else float(value)


def sparsity_curve(comparison: dict, rows: list[dict], metric: str = "delta_t", pattern: re.Pattern | None = None) -> dict:
    """The plotted series of ``metric`` against overall sparsity, as plain numbers.

    ``rows`` are the inputs' rows of ``comparison``. A sparse input is a point of its method
    (``method_name``); points of one method whose sparsity rounds to the same 0.001 are one point
    with the mean sparsity ``x`` (a fraction), the mean value ``y``, the sample sd (n - 1) ``sd``
    when ``n`` >= 2, and their ``labels``. A dense input is no point: the dense inputs give the
    ``baseline`` band (their mean, sd and n) around the baseline's value (0 for a Delta). An input
    whose value is undefined is listed under ``skipped``."""
    choices = metric_choices(comparison)
    if metric not in choices:
        raise ConfigError(f"--metric {metric!r}: choose one of {', '.join(choices)}")
    groups: dict[str, dict[float, list[tuple[str, float, float]]]] = {}
    dense: list[tuple[str, float]] = []
    skipped = []
    for row in rows:
        value = metric_value(row, metric)
        if value is None:
            skipped.append({"label": row["model"], "reason": f"{metric} is undefined (null)"})
        elif is_dense(row):
            dense.append((row["model"], value))
        else:
            x = float(row["sparsity"].get("overall") or 0.0)
            method = method_name(row["model"], pattern)
            groups.setdefault(method, {}).setdefault(round(x, SPARSITY_DECIMALS), []).append((row["model"], x, value))
    methods = {}
    for method in sorted(groups):
        points = []
        for key in sorted(groups[method]):
            labels, xs, ys = zip(*groups[method][key])
            points.append({"x": _mean(xs), "y": _mean(ys), "sd": _sample_sd(ys), "n": len(ys), "labels": list(labels)})
        methods[method] = points
    dense_values = [value for _, value in dense]
    return {
        "metric": metric,
        "title": f"{_metric_title(metric)} against overall sparsity",
        "y_label": _y_label(metric, comparison),
        "x": "overall sparsity, the fraction of weights that are zero (each input's own report)",
        "method_rule": f"--method-of '{pattern.pattern}'" if pattern is not None else METHOD_RULE,
        "methods": methods,
        "baseline": {
            "description": comparison["baseline"],
            "y": _baseline_value(comparison, metric),
            "dense_inputs": [label for label, _ in dense],
            "dense_mean": _mean(dense_values) if dense_values else None,
            "sd": _sample_sd(dense_values),
            "n": len(dense_values),
        },
        "skipped": skipped,
    }


def _baseline_value(comparison: dict, metric: str) -> float | None:
    if metric in DELTA_METRICS or metric.startswith("delta/"):
        return 0.0
    task, key = metric.split("/", 1)
    value = comparison["baseline_metrics"].get(task, {}).get(key)
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _metric_title(metric: str) -> str:
    if metric in DELTA_METRICS:
        return DELTA_METRICS[metric]
    if metric.startswith("delta/"):
        return f"Delta {metric[len('delta/'):]}"
    return metric


def _y_label(metric: str, comparison: dict) -> str:
    if metric in DELTA_METRICS or metric.startswith("delta/"):
        return f"{_metric_title(metric)} (points) vs {comparison['baseline_name']}"
    task, key = metric.split("/", 1)
    higher = metric_directions([task])[task].get(key)
    return metric + ("" if higher is None else " (higher is better)" if higher else " (lower is better)")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _sample_sd(values) -> float | None:
    """The sample standard deviation (n - 1); None below two values."""
    values = list(values)
    if len(values) < 2:
        return None
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
