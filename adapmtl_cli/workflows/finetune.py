"""``adapmtl finetune``: a checkpoint trained on in a new run directory, its pruning masks kept
(``masked``) or its thresholds reset and pushed to a higher target (``resparsify``)."""

from __future__ import annotations

import time
from pathlib import Path

from adapmtl_cli.config import config_to_toml
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.workflows.train import make_run_dir


def default_finetune_dir(checkpoint: Path) -> Path:
    return Path("runs") / f"{checkpoint.stem}-finetune" / time.strftime("%Y%m%d-%H%M%S")


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
