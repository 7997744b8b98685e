"""The training state for ``--resume``: model, optimizer, scheduler, weighting windows,
frozen-threshold state and RNG states, in one safetensors file (never a pickle).

Tensors are flattened under prefixes (``model.``, ``threshold.``, ``optim.<param>.<key>``,
``weighting.``, ``rng.``); everything that is not a tensor is JSON in the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adapmtl_cli.errors import CheckpointError
from adapmtl_cli.io import checkpoint as ckpt

STATE_FORMAT = "adapmtl.state"


def save_training_state(path: Path, trainer, step: int, config_json: str, best: dict | None) -> None:
    """The state of ``trainer`` (engine/trainer.py: model, optimizer, scheduler, weighting,
    controller, scaler, device) after ``step`` steps, with the run's config and best selection."""
    tensors = {f"model.{k}": v for k, v in ckpt.checkpoint_tensors(trainer.model).items()}
    optimizer_state = trainer.optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
    for key, value in trainer.weighting.state_dict().items():
        tensors[f"weighting.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and trainer.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(trainer.device)
    metadata = {
        "format": STATE_FORMAT,
        "config": config_json,
        "step": str(step),
        "optimizer_groups": json.dumps(optimizer_state["param_groups"]),
        "scheduler": json.dumps(trainer.scheduler.state_dict()),
        "controller": json.dumps(trainer.controller.state_dict()),
        "best": json.dumps(best),
        "scaler": json.dumps(trainer.scaler.state_dict() if trainer.scaler.is_enabled() else {}),
    }
    ckpt.save_tensors(path, tensors, metadata)


def _read(path: Path) -> tuple[dict, dict]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from; was the run started with this --out?")
    tensors, metadata = ckpt.read_safetensors_verified(path)
    if metadata.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an adapmtl training state")
    return tensors, metadata


def load_training_state(path: Path, trainer) -> tuple[int, dict | None]:
    """Restore ``trainer`` from ``path``; returns ``(step, best)``."""
    tensors, metadata = _read(Path(path))
    model_tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    checkpoint = ckpt.Checkpoint(path=Path(path), tensors=model_tensors, metadata=metadata)
    ckpt.load_into_model(trainer.model, checkpoint)
    masks = checkpoint.masks()
    if masks:
        trainer.attach_masks(masks)

    optimizer_state = {"state": {}, "param_groups": json.loads(metadata["optimizer_groups"])}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optimizer_state["state"].setdefault(int(index), {})[name] = value.to(trainer.device) if name != "step" else value
    for group in optimizer_state["param_groups"]:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    trainer.optimizer.load_state_dict(optimizer_state)
    trainer.scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    trainer.controller.load_state_dict(json.loads(metadata["controller"]))
    trainer.weighting.load_state_dict({k[len("weighting."):]: v for k, v in tensors.items() if k.startswith("weighting.")})
    scaler_state = json.loads(metadata.get("scaler", "{}"))
    if scaler_state and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(scaler_state)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], trainer.device)
    return int(metadata["step"]), json.loads(metadata.get("best", "null"))
