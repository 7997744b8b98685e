"""``adapmtl prune``: one-shot pruning of a checkpoint's effective weights (magnitude, SNIP,
DiSparse, random), or ``--steps N`` rounds of prune + masked finetune (iterative pruning)."""

from __future__ import annotations

from pathlib import Path

from adapmtl_cli.config import Config
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.workflows._common import _evaluation_data_config
from adapmtl_cli.workflows.finetune import finetune


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

    from adapmtl_cli.engine.pruning import METHODS, apply_masks, compute_masks
    from adapmtl_cli.io.checkpoint import save_checkpoint

    _check_prune_arguments(ratio, method, scope, out, force)
    from adapmtl_cli.io.export import fold_without_model

    folded = fold_without_model(path)
    if folded is not None:  # saved from Python without a config: no model to rebuild
        return _prune_tensors(folded, ratio, out, method=method, scope=scope)
    model, config, checkpoint = dense_copy(path)
    sample = None
    if METHODS[method].needs_data:
        sample = _scoring_batches(config, data_root, batches)
    # match_overall: DiSparse removes the ratio of the whole model (only its function takes it).
    masks = compute_masks(model, method, ratio, scope, batches=sample, loss_fn=_loss_fn(config),
                          generator=torch.Generator().manual_seed(config.seed), match_overall=True)
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

    from adapmtl_cli.counting import sparsity_report
    from adapmtl_cli.engine.pruning import METHODS, weight_masks
    from adapmtl_cli.engine.prune_methods import spoken_list
    from adapmtl_cli.io import checkpoint as ckpt

    state, layers, _, checkpoint = folded
    if METHODS[method].needs_data:
        raise ConfigError(f"--method {method}: {checkpoint.path} was saved from Python without a config, so its model "
                          f"cannot be run for saliency; use {spoken_list(m for m in METHODS if not METHODS[m].needs_data)}, "
                          "or save it with config= (model.factory)")
    weights = {key: state[key] for key in layers}
    masks = weight_masks(method, weights, layers, ratio, scope, generator=torch.Generator().manual_seed(0))
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
    report = {"sparsity": sparsity_report(zeros, params), "thresholds": {},
              "metrics": json.loads(checkpoint.metadata.get("metrics") or "{}")}
    plain_layers = {key: {"component": component, "threshold": None} for key, component in layers.items()}
    ckpt.save_tensors(out, tensors, ckpt.metadata_of(plain_layers, "", checkpoint.step, checkpoint.tasks, report))
    from adapmtl_cli.io.inspect import inspect_file

    return inspect_file(out).as_dict()


def _check_prune_arguments(ratio: float, method: str, scope: str, out: Path, force: bool) -> None:
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"--ratio {ratio}: must be in (0, 1), the fraction of the non-zero weights to remove")
    from adapmtl_cli.engine.prune_methods import METHODS, SCOPES

    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if scope not in SCOPES:
        raise ConfigError(f"--scope {scope!r}: choose one of {', '.join(SCOPES)}")
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
