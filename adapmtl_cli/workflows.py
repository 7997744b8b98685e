"""What each command does, as plain Python functions: they take a Config or a path and return a
result; the CLI only parses, calls, renders and picks the exit code."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from adapmtl_cli.config import (
    Config,
    config_to_toml,
    list_presets,
    load_config,
    resolve_preset_path,
)
from adapmtl_cli.errors import ConfigError


# -- train ----------------------------------------------------------------------------------


def prepare_config(preset: str, overrides: list[str], data_root: str | None = None) -> Config:
    overrides = list(overrides)
    if data_root is not None:
        overrides.append(f"data.root={_quote(data_root)}")
    return load_config(preset, overrides)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_run_dir(config: Config) -> Path:
    return Path("runs") / config.name / time.strftime("%Y%m%d-%H%M%S")


def make_run_dir(out: Path, force: bool = False) -> Path:
    """Create a fresh run directory; an existing non-empty one is kept unless ``force``."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"--out {out} already holds a run; pass --force to overwrite it, or --resume {out} to continue it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the run directory ({exc.strerror})") from None
    return out


def train(config: Config, out: Path, *, console=None, force: bool = False, quiet: bool = False) -> dict:
    """Train a new run in ``out``; returns the summary (the contents of summary.json)."""
    from adapmtl_cli.io.checkpoint import atomic_write_text
    from adapmtl_cli.run import TrainingRun

    if _is_rank_zero_env():  # under torchrun only rank 0 writes; the process group starts later
        make_run_dir(out, force)
        atomic_write_text(out / "config.toml", config_to_toml(config))
    return _fit_and_leave(TrainingRun(config, out, console=console, quiet=quiet))


def _fit_and_leave(run) -> dict:
    """Run the training run; under torchrun, leave the process group cleanly whatever happens (a
    barrier first only on success: after a failure another rank may never reach it)."""
    from adapmtl_cli.engine import distributed

    try:
        summary = run.fit()
        distributed.barrier()
        return summary
    finally:
        distributed.shutdown()


def resume(run_dir: Path, *, console=None, quiet: bool = False) -> dict:
    """Continue the run in ``run_dir`` from its state.safetensors, exactly where it stopped."""
    from adapmtl_cli.run import TrainingRun

    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.toml there; is it an adapmtl run directory?")
    config = load_config(str(config_path))
    return _fit_and_leave(TrainingRun(config, run_dir, console=console, resume=True, quiet=quiet))


def _is_rank_zero_env() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


# -- presets --------------------------------------------------------------------------------


def preset_descriptions() -> dict[str, str]:
    """Each shipped preset's name and one-line description, validated on the way."""
    return {name: load_config(str(path)).description for name, path in list_presets().items()}


def preset_text(name: str) -> str:
    return resolve_preset_path(name).read_text(encoding="utf-8")


def copy_preset(name: str, destination: Path, force: bool = False) -> Path:
    source = resolve_preset_path(name)
    if destination.exists() and not force:
        raise ConfigError(f"{destination} exists; pass --force to overwrite it")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    except OSError as exc:
        raise ConfigError(f"{destination}: cannot write ({exc.strerror})") from None
    return destination


def validate_preset(name_or_file: str, overrides: list[str] = ()) -> Config:
    return load_config(name_or_file, list(overrides))


# -- eval -----------------------------------------------------------------------------------


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


def _evaluation_data_config(config: Config, data_root: str | None) -> tuple[Config, str]:
    config = config.model_copy(deep=True)
    if config.data.factory:
        return config, f"data.factory = {config.data.factory!r}"
    if data_root is not None:
        config.data.root = data_root
    if config.data.source != "synthetic" and not config.data.root:
        from adapmtl_cli.builders import num_classes

        config.data.num_classes = num_classes(config)  # the model's classes, before the source changes
        config.data.source = "synthetic"
        config.data.workers = 0  # generated in-process faster than worker processes start
        return config, "synthetic scenes (no data root given; pass --data-root for the real dataset)"
    if config.data.source == "synthetic":
        return config, f"synthetic scenes (seed {config.seed}, {config.data.resolution}px)"
    return config, f"{config.data.source} at {config.data.root}"


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
    return _result_of(path, label="--baseline ", **eval_options)["metrics"]


# -- compare --------------------------------------------------------------------------------


def compare(files: list[Path], baseline: Path, **eval_options) -> dict:
    """The paper's Table 2 for several models: every metric, Delta per task, component sparsity,
    Delta_T and Delta_p against ``baseline``. Each file is an eval JSON or a checkpoint."""
    from adapmtl_cli.tasks.scores import delta_scores

    reference = _result_of(baseline, **eval_options)
    rows = [("baseline", baseline, reference)] + [(Path(f).stem, f, _result_of(f, **eval_options)) for f in files]
    directions = metric_directions(list(reference["metrics"]))
    table = []
    for label, path, result in rows:
        scores = delta_scores(result["metrics"], reference["metrics"], directions)
        table.append({
            "model": label, "file": str(path), "metrics": result["metrics"],
            "sparsity": result.get("sparsity", {}),
            "delta": {"per_task": scores.per_task, "delta_t": scores.delta_t, "delta_p": scores.delta_p,
                      "skipped": [vars(s) for s in scores.skipped]},
        })
    return {"baseline": str(baseline), "rows": table, "definition": scores.definition if rows else {}}


def metric_directions(task_names: list[str]) -> dict[str, dict[str, bool]]:
    """Whether each metric is better higher, for every metric style of each task, from the task
    registry (directions do not depend on class counts)."""
    from adapmtl_cli.tasks import TASK_KINDS, build_task

    directions: dict[str, dict[str, bool]] = {}
    for name in task_names:
        if name not in TASK_KINDS:
            raise ConfigError(f"unknown task {name!r} in the metrics; valid tasks: {', '.join(TASK_KINDS)}")
        styles = ("nyuv2", "taskonomy") if name in ("segment_semantic", "normal", "depth_zbuffer") else (None,)
        for style in styles:
            options = {} if style is None else {"style": style}
            if name == "segment_semantic":
                options["num_classes"] = 2
            directions.setdefault(name, {}).update(build_task(name, **options).higher_is_better)
    return directions


def _result_of(path: Path, label: str = "", **eval_options) -> dict:
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


# -- prune and finetune ---------------------------------------------------------------------

PRUNE_METHODS = ("magnitude", "snip", "disparse", "random")
PRUNE_SCOPES = ("global", "component", "layer")


def dense_copy(path: Path):
    """A checkpoint's model as a dense (threshold-free) model holding its effective weights, with
    its masks, if any. Returns ``(model, dense_config, checkpoint)``."""
    from adapmtl_cli.builders import build_model_and_tasks
    from adapmtl_cli.engine.sparsifier import effective_state_dict
    from adapmtl_cli.io.checkpoint import load_model_from_checkpoint, load_plain_weights

    model, config, checkpoint = load_model_from_checkpoint(path)
    dense_config = config.model_copy(deep=True)
    dense_config.sparsity.enabled = False
    dense, _ = build_model_and_tasks(dense_config)
    load_plain_weights(dense, effective_state_dict(model), str(path))
    masks = checkpoint.masks()
    if masks:
        dense.masks = masks
    return dense.eval(), dense_config, checkpoint


def prune(path: Path, ratio: float, out: Path, *, method: str = "magnitude", scope: str = "global",
          data_root: str | None = None, batches: int = 4, force: bool = False) -> dict:
    """One-shot pruning of a checkpoint's effective weights; writes a dense checkpoint with masks.

    ``ratio`` is the fraction of the currently non-zero conv weights to remove (REFERENCE.md 10);
    existing zeros stay pruned. Returns the inspect-style report of the output.
    """
    import torch

    from adapmtl_cli.engine.pruning import apply_masks, compute_masks
    from adapmtl_cli.io.checkpoint import save_checkpoint

    _check_prune_arguments(ratio, method, scope, out, force)
    from adapmtl_cli.io.export import _fold_without_model

    folded = _fold_without_model(path)
    if folded is not None:  # saved from Python without a config: no model to rebuild
        return _prune_tensors(folded, ratio, out, method=method, scope=scope)
    model, config, checkpoint = dense_copy(path)
    sample = None
    if method in ("snip", "disparse"):
        sample = _scoring_batches(config, data_root, batches)
    masks = compute_masks(model, method, ratio, scope, batches=sample, loss_fn=_loss_fn(config),
                          generator=torch.Generator().manual_seed(config.seed), match_overall=method == "disparse")
    previous = getattr(model, "masks", {})
    masks = {key: mask & previous[key] if key in previous else mask for key, mask in masks.items()}
    apply_masks(model, masks)
    model.masks = masks
    report = model.sparsifier.stats().as_report()
    save_checkpoint(out, model, _config_json(config), checkpoint.step, report)
    from adapmtl_cli.io.inspect import inspect_file

    return inspect_file(out).as_dict()


def _prune_tensors(folded, ratio: float, out: Path, *, method: str, scope: str) -> dict:
    """Magnitude or random pruning of a checkpoint saved from Python without a config, on its
    folded tensors (SNIP and DiSparse need the model's forward: a one-line error)."""
    import json

    import torch

    import adapmtl_cli
    from adapmtl_cli.counting import sparsity_report
    from adapmtl_cli.engine.pruning import magnitude_masks, random_masks
    from adapmtl_cli.io import checkpoint as ckpt

    state, layers, _, checkpoint = folded
    if method not in ("magnitude", "random"):
        raise ConfigError(f"--method {method}: {checkpoint.path} was saved from Python without a config, so its model "
                          "cannot be run for saliency; use magnitude or random, or save it with config= (model.factory)")
    weights = {key: state[key] for key in layers}
    if method == "magnitude":
        masks = magnitude_masks(weights, layers, ratio, scope)
    else:
        masks = random_masks(weights, layers, ratio, scope, generator=torch.Generator().manual_seed(0))
    previous = checkpoint.masks()
    masks = {key: mask & previous[key] if key in previous else mask for key, mask in masks.items()}
    tensors = dict(state)
    zeros, params = {}, {}
    for key, component in layers.items():
        if key in masks:
            tensors[key] = state[key] * masks[key].to(state[key].dtype)
            tensors[ckpt.MASK_PREFIX + key] = masks[key].to(torch.uint8)
        zeros[component] = zeros.get(component, 0) + int((tensors[key] == 0).sum())
        params[component] = params.get(component, 0) + tensors[key].numel()
    metadata = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "adapmtl_version": adapmtl_cli.__version__,
                "config": "", "step": str(checkpoint.step), "tasks": json.dumps(checkpoint.tasks),
                "layers": json.dumps({key: {"component": component, "threshold": None} for key, component in layers.items()}),
                "sparsity": json.dumps(sparsity_report(zeros, params)), "thresholds": "{}",
                "metrics": checkpoint.metadata.get("metrics", "{}")}
    ckpt.save_tensors(out, tensors, metadata)
    from adapmtl_cli.io.inspect import inspect_file

    return inspect_file(out).as_dict()


def _check_prune_arguments(ratio: float, method: str, scope: str, out: Path, force: bool) -> None:
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"--ratio {ratio}: must be in (0, 1), the fraction of the non-zero weights to remove")
    if method not in PRUNE_METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(PRUNE_METHODS)}")
    if scope not in PRUNE_SCOPES:
        raise ConfigError(f"--scope {scope!r}: choose one of {', '.join(PRUNE_SCOPES)}")
    if Path(out).exists() and not force:
        raise ConfigError(f"--out {out} exists; pass --force to overwrite it")


def _config_json(config: Config) -> str:
    from adapmtl_cli.config import config_to_json

    return config_to_json(config)


def _scoring_batches(config: Config, data_root: str | None, count: int) -> list:
    """A few training batches for SNIP / DiSparse saliency (the synthetic scenes without a root)."""
    import itertools

    import torch

    from adapmtl_cli.data import build_datasets

    config, _ = _evaluation_data_config(config, data_root)
    data = build_datasets(config)
    loader = torch.utils.data.DataLoader(data.train, batch_size=config.train.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(config.seed))
    return list(itertools.islice(loader, count))


def _loss_fn(config: Config):
    from adapmtl_cli.builders import build_tasks

    tasks = build_tasks(config)

    def loss_fn(outputs, targets):
        return {name: task.loss(outputs[name], targets[name]) for name, task in tasks.items()}

    return loss_fn


def finetune(path: Path, out: Path, *, overrides: list[str] = (), preset: str | None = None, mode: str = "auto",
             rewind: Path | None = None, console=None, force: bool = False, quiet: bool = False) -> dict:
    """Finetune a checkpoint into a new run directory.

    - ``masked``: a pruned checkpoint (with masks) trains densely with pruned weights held at
      exactly zero; ``rewind`` (the run's init.safetensors) restores the survivors to their initial
      values first (lottery ticket).
    - ``resparsify``: soft-threshold training resumed from the checkpoint's effective weights with
      thresholds reset to ``sparsity.init`` and a fresh optimizer, towards ``sparsity.target`` (the
      reference's "from 60% to 90%").
    ``auto`` picks ``masked`` when the checkpoint has masks.
    """
    from adapmtl_cli.config import load_config, validate_config
    from adapmtl_cli.engine.sparsifier import effective_state_dict
    from adapmtl_cli.io.checkpoint import atomic_write_text, load_model_from_checkpoint, read_checkpoint
    from adapmtl_cli.run import TrainingRun

    if mode not in ("auto", "masked", "resparsify"):
        raise ConfigError(f"--mode {mode!r}: choose auto, masked or resparsify")
    model, config, checkpoint = load_model_from_checkpoint(path)
    masks = checkpoint.masks()
    if mode == "auto":
        mode = "masked" if masks else "resparsify"
    if mode == "masked" and not masks:
        from adapmtl_cli.errors import CheckpointError

        raise CheckpointError(f"{path}: has no masks, so it cannot be finetuned with masks kept; prune it first (adapmtl prune) or use --mode resparsify")
    base = load_config(preset, []) if preset else config
    raw = base.model_dump(mode="json")
    raw["tasks"], raw["model"] = config.tasks, config.model.model_dump(mode="json")  # the checkpoint's network
    raw["sparsity"]["enabled"] = mode == "resparsify"
    from adapmtl_cli.config import apply_override

    for override in overrides:
        apply_override(raw, override)
    new_config = validate_config(raw, source="finetune overrides")
    start = effective_state_dict(model)
    if rewind is not None:
        if mode != "masked":
            raise ConfigError("--rewind restores the survivors of a pruned model: the checkpoint needs masks")
        start = read_checkpoint(rewind).model_state()
    make_run_dir(out, force)
    atomic_write_text(out / "config.toml", config_to_toml(new_config))
    run = TrainingRun(new_config, out, console=console, quiet=quiet, start_weights=start, masks=masks if mode == "masked" else None)
    return run.fit()


def prune_iteratively(path: Path, ratio: float, stages: int, out: Path, *, overrides: list[str] = (),
                      method: str = "magnitude", scope: str = "global", data_root: str | None = None,
                      console=None, force: bool = False, quiet: bool = False) -> dict:
    """Iterative pruning (IMP): ``stages`` rounds of prune + masked finetune, each removing the
    same fraction of the remaining weights, so that the last round reaches ``ratio`` of the
    starting non-zeros. The stage runs are kept next to ``out`` in ``<out>.stages/``."""
    import shutil

    from adapmtl_cli.engine.pruning import iterative_schedule

    _check_prune_arguments(ratio, method, scope, out, force)
    if stages < 1:
        raise ConfigError(f"--steps {stages}: must be at least 1")
    work = Path(str(out) + ".stages")
    current = Path(path)
    for index, stage_ratio in enumerate(iterative_schedule(ratio, stages), start=1):
        pruned = work / f"stage{index}-pruned.safetensors"
        work.mkdir(parents=True, exist_ok=True)
        prune(current, stage_ratio, pruned, method=method, scope=scope, data_root=data_root, force=True)
        run = work / f"stage{index}-finetune"
        finetune(pruned, run, overrides=overrides, mode="masked", console=console, force=True, quiet=quiet)
        current = run / "model.safetensors"
    shutil.copyfile(current, out)
    from adapmtl_cli.io.inspect import inspect_file

    return inspect_file(out).as_dict()
