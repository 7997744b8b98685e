"""``adapmtl compare``: several models against one baseline, in the paper's Table 2 layout (the
table itself is drawn by ``report.tables``).

An input is an eval JSON, a checkpoint (evaluated here) or a run folder (its ``summary.json``).
Without an explicit baseline, the dense inputs (no zero weight) are the baseline: one as it is,
several (seeds) pooled into their mean (``pool_dense``).
"""

from __future__ import annotations

import math
from pathlib import Path

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.workflows.evaluate import metric_directions, result_of

SUMMARY = "summary.json"


def compare(files: list[Path], baseline: Path | None = None, **eval_options) -> dict:
    """The paper's Table 2 for several models: every metric, Delta per task, component sparsity,
    Delta_T and Delta_p against the baseline. Each input is an eval JSON, a checkpoint or a run
    folder. Without ``baseline`` the dense inputs are the baseline (``pool_dense``) and stay rows."""
    from adapmtl_cli.tasks.scores import delta_scores

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
