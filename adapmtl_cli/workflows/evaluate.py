"""``adapmtl eval``: a checkpoint's metrics and sparsity on a data split, and the Delta scores
against a baseline (an eval JSON or a checkpoint)."""

from __future__ import annotations

from pathlib import Path

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.workflows._common import _evaluation_data_config


def evaluate_checkpoint(path: Path, *, data_root: str | None = None, split: str = "test",
                        baseline: Path | None = None, device: str = "auto") -> dict:
    """Evaluate a checkpoint on a data split; with a baseline, add Delta_T and Delta_p.

    Returns the summary shape (step, sparsity, thresholds, metrics) plus ``file``, ``split``,
    ``data`` and, with a baseline, ``delta``. Without a dataset root the synthetic scenes are used.
    """
    import torch

    from adapmtl_cli import builders
    from adapmtl_cli.data import build_datasets
    from adapmtl_cli.engine.evaluator import evaluate
    from adapmtl_cli.io.checkpoint import load_model_from_checkpoint

    if split not in ("test", "val"):
        raise ConfigError(f"--split {split!r}: choose test or val")
    model, config, checkpoint = load_model_from_checkpoint(path)
    config, data_note = _evaluation_data_config(config, data_root)
    config.train.device = device  # validated by assignment
    target_device = builders.resolve_device(config)
    data = build_datasets(config)
    dataset = data.test if split == "test" else data.val
    validate = getattr(dataset, "validate", None)
    if validate is not None:
        validate()
    tasks = builders.build_tasks(config, data.class_weights)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.train.batch_size, num_workers=builders.loader_workers(config))
    model.to(target_device)
    metrics, losses = evaluate(model, loader, tasks, target_device, config.train.amp)
    result = {
        "file": str(path),
        "split": split,
        "data": data_note,
        "step": checkpoint.step,
        **model.sparsifier.stats().as_report(),
        "metrics": metrics,
        "losses": losses,
    }
    if baseline is not None:
        result["delta"] = delta_against(result["metrics"], baseline, tasks, data_root=data_root, split=split, device=device)
    return result


def delta_against(metrics: dict, baseline: Path, tasks: dict, **eval_options) -> dict:
    """Delta scores of ``metrics`` against a baseline eval JSON or checkpoint."""
    from adapmtl_cli.tasks.scores import delta_scores

    reference = load_metrics(baseline, **eval_options)
    scores = delta_scores(metrics, reference, metric_directions(list(tasks)))
    return {"per_task": scores.per_task, "delta_t": scores.delta_t, "delta_p": scores.delta_p,
            "per_task_mean": scores.per_task_mean, "per_metric": scores.per_metric,
            "definition": scores.definition, "baseline": str(baseline),
            "skipped": [vars(s) for s in scores.skipped]}


def load_metrics(path: Path, **eval_options) -> dict:
    """Metrics from an eval/summary JSON, or by evaluating a checkpoint."""
    return result_of(path, label="--baseline ", **eval_options)["metrics"]


def metric_directions(task_names: list[str]) -> dict[str, dict[str, bool]]:
    """Whether each metric is better higher, for every metric style of each task, from the task
    registry (directions do not depend on class counts)."""
    from adapmtl_cli.tasks import metric_directions as directions_of, task_names as registered

    directions: dict[str, dict[str, bool]] = {}
    for name in task_names:
        if name not in registered():
            raise ConfigError(f"unknown task {name!r} in the metrics; valid tasks: {', '.join(registered())}")
        directions[name] = directions_of(name)
    return directions


def result_of(path: Path, label: str = "", **eval_options) -> dict:
    """An eval result: read from an eval/summary JSON, or made by evaluating a checkpoint."""
    import json

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{label}{path}: no such file")
    if path.suffix != ".json":
        return evaluate_checkpoint(path, **eval_options)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{label}{path}: not valid JSON; pass an eval --json output or a checkpoint") from None
    if not isinstance(document, dict) or not isinstance(document.get("metrics"), dict):
        raise ConfigError(f"{label}{path}: no 'metrics' object; pass an eval --json output or a checkpoint")
    return document
