"""safetensors checkpoints with enough metadata to rebuild and explain the model (docs/internals.md).

Nothing here unpickles. Writes are atomic: the bytes go to a temporary file in the same folder,
are flushed to disk, then renamed over the target, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

import adapmtl_cli
from adapmtl_cli.errors import CheckpointError
from adapmtl_cli.io.formats import is_torch_save_file
from adapmtl_cli.keys import plain_key
from adapmtl_cli.report import jsonout

FORMAT = "adapmtl.checkpoint"
FORMAT_VERSION = "1"
THRESHOLD_PREFIX = "threshold."
MASK_PREFIX = "mask."


def atomic_write_bytes(path: Path, data: bytes, option: str = "--out") -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.
    ``option`` is the one an error message tells the user to change."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write here ({exc.strerror}); choose a writable {option}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"{path}: write failed ({exc.strerror}); free space or choose another {option}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Atomically write a safetensors file whose metadata carries the SHA-256 of its weights."""
    # safetensors wants contiguous CPU tensors that share no memory.
    prepared = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    atomic_write_bytes(Path(path), safetensors_with_checksum(prepared, metadata))


def data_section_sha256(data: bytes | memoryview) -> str:
    """SHA-256 of a safetensors file's data section (after the 8-byte length and the header)."""
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    return hashlib.sha256(memoryview(data)[8 + length:]).hexdigest()


def verify_checksum(path: Path, data: bytes | memoryview, metadata: dict[str, str]) -> None:
    """A bit flip in the weights changes the data section's hash: refuse such a file."""
    expected = metadata.get("content_sha256")
    if expected is not None and data_section_sha256(data) != expected:
        raise CheckpointError(f"{path}: the weights do not match the file's checksum (content_sha256); the file is damaged")


def safetensors_with_checksum(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes whose metadata holds the SHA-256 of the data section. The data section
    does not depend on the metadata, so it is hashed from a first serialisation."""
    from safetensors.torch import save

    prepared = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    digest = data_section_sha256(save(prepared, metadata=metadata))
    return save(prepared, metadata=dict(metadata, content_sha256=digest))


@dataclass
class Checkpoint:
    """A checkpoint file read back: tensors plus parsed metadata."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    info: dict = field(default_factory=dict)

    @property
    def config_json(self) -> str:
        return self.metadata.get("config", "")

    @property
    def step(self) -> int:
        return int(self.metadata.get("step", "0"))

    @property
    def tasks(self) -> list[str]:
        return json.loads(self.metadata.get("tasks", "[]"))

    @property
    def layers(self) -> dict[str, dict]:
        return json.loads(self.metadata.get("layers", "{}"))

    def thresholds(self) -> dict[str, Tensor]:
        return {k[len(THRESHOLD_PREFIX):]: v for k, v in self.tensors.items() if k.startswith(THRESHOLD_PREFIX)}

    def model_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.tensors.items() if not k.startswith((THRESHOLD_PREFIX, MASK_PREFIX))}

    def masks(self) -> dict[str, Tensor]:
        """Keep-masks of pruned layers (weight key -> bool), empty when the model was not pruned."""
        return {k[len(MASK_PREFIX):]: v.bool() for k, v in self.tensors.items() if k.startswith(MASK_PREFIX)}


def checkpoint_tensors(model: torch.nn.Module) -> dict[str, Tensor]:
    """The model's raw state under plain keys plus each threshold once."""
    from adapmtl_cli.engine.sparsifier import plain_state_dict

    tensors = plain_state_dict(model)
    sparsifier = model.sparsifier
    for name, param in zip(sparsifier.threshold_names, sparsifier.thresholds):
        tensors[THRESHOLD_PREFIX + name] = param.detach()
    # Masks of a pruned model (set by prune / finetune) travel with it.
    for key, mask in getattr(model, "masks", {}).items():
        tensors[MASK_PREFIX + key] = mask.to(torch.uint8)
    return tensors


def checkpoint_metadata(model: torch.nn.Module, config_json: str, step: int, report: dict, kind: str = FORMAT,
                        tasks: list[str] | None = None) -> dict[str, str]:
    layers = {layer.key: {"component": layer.component, "threshold": layer.threshold} for layer in model.sparsifier.layers}
    tasks = list(tasks) if tasks is not None else recorded_tasks(model, config_json)
    return metadata_of(layers, config_json, step, tasks, report, kind)


def metadata_of(layers: dict[str, dict], config_json: str, step: int, tasks: list[str], report: dict,
                kind: str = FORMAT) -> dict[str, str]:
    """A checkpoint's metadata from its parts (docs/internals.md, "Checkpoints")."""
    return {
        "format": kind,
        "format_version": FORMAT_VERSION,
        "adapmtl_version": adapmtl_cli.__version__,
        "config": config_json,
        "step": str(step),
        "tasks": json.dumps(list(tasks)),
        "layers": json.dumps(layers),
        "sparsity": jsonout.dumps(report.get("sparsity", {})),
        "thresholds": jsonout.dumps(report.get("thresholds", {})),
        "metrics": jsonout.dumps(report.get("metrics", {})),
    }


def recorded_tasks(model: torch.nn.Module, config_json: str) -> list[str]:
    """The tasks a checkpoint records: the config's, in its order (a user's model from
    ``model.factory`` may have no ``heads``); a model's ``heads`` only without a config."""
    try:
        tasks = json.loads(config_json).get("tasks") if config_json else None
    except (json.JSONDecodeError, AttributeError):
        tasks = None
    return list(tasks) if isinstance(tasks, list) else list(getattr(model, "heads", {}))


def save_checkpoint(path: Path, model: torch.nn.Module, config_json: str, step: int, report: dict,
                    tasks: list[str] | None = None) -> None:
    save_tensors(path, checkpoint_tensors(model), checkpoint_metadata(model, config_json, step, report, tasks=tasks))


def read_checkpoint(path: Path | str) -> Checkpoint:
    """Read an adapmtl safetensors checkpoint; any fault becomes a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    tensors, metadata = read_safetensors_verified(path)
    if metadata.get("format", "").split(".")[0] != "adapmtl":
        raise CheckpointError(f"{path}: a safetensors file, but not an adapmtl checkpoint (no 'format' metadata)")
    return Checkpoint(path=path, tensors=tensors, metadata=metadata)


def read_safetensors_verified(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, its checksum verified; faults are CheckpointErrors."""
    from safetensors.torch import load

    data = Path(path).read_bytes()
    try:
        tensors = load(data)
        (length,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8:8 + length]).get("__metadata__") or {}
    except Exception as exc:  # safetensors raises its own error types for every kind of corruption
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({reason}); is the file complete?") from None
    verify_checksum(path, data, metadata)
    return tensors, metadata


def load_model_from_checkpoint(path: Path | str, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes and load its weights and thresholds.

    Returns ``(model, config, checkpoint)``; the model is in eval mode.
    """
    from adapmtl_cli.builders import build_model_and_tasks
    from adapmtl_cli.config import config_from_json

    if is_torch_save_file(Path(path)):
        return _load_reference_model(Path(path), device)
    checkpoint = read_checkpoint(path)
    if checkpoint.metadata.get("format") in ("adapmtl.dense", "adapmtl.sparse"):
        return _load_export_model(checkpoint, device)
    config = config_from_json(checkpoint.config_json, source=f"{path} (embedded config)")
    model, tasks = build_model_and_tasks(config)
    load_into_model(model, checkpoint)
    masks = checkpoint.masks()
    if masks:
        model.masks = masks
    return model.to(device).eval(), config, checkpoint


def load_into_model(model: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Load a checkpoint's tensors into a model built from its config; mismatches are errors."""
    load_plain_weights(model, checkpoint.model_state(), str(checkpoint.path))
    sparsifier = model.sparsifier
    thresholds = checkpoint.thresholds()
    values = {}
    for index, name in enumerate(sparsifier.threshold_names):
        if name not in thresholds:
            raise CheckpointError(f"{checkpoint.path}: lacks the threshold of {name!r}")
        values[f"thresholds.{index}"] = thresholds[name].reshape(())
    sparsifier.load_state_dict(values, strict=True)


def load_plain_weights(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load a state under plain keys (``conv.weight`` = the raw W) into a possibly parametrized
    model; thresholds are left as they are. Every key must match in name and shape."""
    target = model.state_dict()
    key_map = {plain_key(k): k for k in target if not k.startswith("sparsifier.")}
    missing = sorted(set(key_map) - set(state))
    unexpected = sorted(set(state) - set(key_map))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        what = "lacks" if missing else "has an unexpected"
        raise CheckpointError(
            f"{source}: does not fit its recorded model: it {what} tensor {first!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    converted = {}
    for key, value in state.items():
        expected = target[key_map[key]]
        if expected.shape != value.shape:
            raise CheckpointError(
                f"{source}: does not fit its recorded model: tensor {key!r} has shape {tuple(value.shape)}, the model {tuple(expected.shape)}"
            )
        converted[key_map[key]] = value
    # Non-strict only for the thresholds (sparsifier.*), which the caller handles; every other
    # key was matched above.
    model.load_state_dict(converted, strict=False)


def _load_reference_model(path: Path, device):
    """A reference AdapMTL checkpoint as an adapmtl model, through the restricted importer."""
    from adapmtl_cli.builders import build_model_and_tasks
    from adapmtl_cli.config import config_to_json
    from adapmtl_cli.io.reference import load_reference_checkpoint, reference_config

    reference = load_reference_checkpoint(path)
    config = reference_config(reference)
    model, _ = build_model_and_tasks(config)
    tensors = dict(reference.state_dict)
    tensors.update({THRESHOLD_PREFIX + name: value for name, value in reference.thresholds.items()})
    checkpoint = Checkpoint(path=path, tensors=tensors,
                            metadata={"format": "reference.adapmtl", "config": config_to_json(config),
                                      "step": str(reference.step or 0), "tasks": json.dumps(reference.tasks)})
    load_into_model(model, checkpoint)
    return model.to(device).eval(), config, checkpoint


def _load_export_model(checkpoint: Checkpoint, device):
    """A dense or sparse export as a dense model (its weights are already the effective ones)."""
    from adapmtl_cli.config import config_from_json
    from adapmtl_cli.io.export import dense_model, read_export

    state, _ = read_export(checkpoint.path)
    config = config_from_json(checkpoint.config_json, source=f"{checkpoint.path} (embedded config)")
    model = dense_model(config, state)
    config = config.model_copy(deep=True)
    config.sparsity.enabled = False  # the model it describes now: thresholds folded in
    return model.to(device).eval(), config, checkpoint
