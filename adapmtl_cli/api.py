"""Checkpoints for a user's own training loop (the public API, ``adapmtl_cli.__all__``).

A checkpoint saved here is the same safetensors file a CLI run writes: raw weights under plain
keys, one threshold per component, and the metadata ``inspect`` reads (layers, components,
sparsity counts, thresholds), so ``adapmtl inspect``, ``export`` and ``prune`` read it like a
run's. With ``config`` (a Config whose ``model.factory`` builds the same network) ``eval`` and the
program export can rebuild the model too.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


def save_checkpoint(path: str | Path, model: nn.Module, *, step: int = 0, tasks: list[str] | None = None,
                    metrics: dict | None = None, config=None) -> None:
    """Write ``model`` (with a :class:`~adapmtl_cli.Sparsifier` attached) to ``path``, atomically.

    ``tasks`` names the model's outputs (default: the keys of ``model.heads`` if it has them);
    ``metrics`` (``{task: {metric: value}}``) are stored for ``inspect``.
    """
    from adapmtl_cli.config import config_to_json
    from adapmtl_cli.io import checkpoint as ckpt

    sparsifier = getattr(model, "sparsifier", None)
    if sparsifier is None:
        raise ValueError("the model has no sparsifier: create adapmtl_cli.Sparsifier(model, components) first")
    report = {**sparsifier.stats().as_report(), "metrics": metrics or {}}
    config_json = config_to_json(config) if config is not None else ""
    ckpt.save_checkpoint(Path(path), model, config_json, step, report, tasks=tasks)


def load_checkpoint(path: str | Path, model: nn.Module) -> int:
    """Load a checkpoint's weights and thresholds into ``model`` (built the same way, with its
    sparsifier attached); returns the checkpoint's step. Mismatched keys or shapes raise a
    one-line ``CheckpointError``."""
    from adapmtl_cli.io import checkpoint as ckpt

    checkpoint = ckpt.read_checkpoint(path)
    ckpt.load_into_model(model, checkpoint)
    masks = checkpoint.masks()
    if masks:
        model.masks = masks
    return checkpoint.step
