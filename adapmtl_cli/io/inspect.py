"""What a checkpoint holds, read from the file alone: no model, no dataset, and for safetensors
files not even torch (numpy reads the tensors memory-mapped), so it answers fast.

Sparsity is counted as the engine counts it: a weight is zero in W_eff exactly when
|W| <= sigmoid(s) of its threshold; layers without a threshold count exact zeros.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adapmtl_cli.counting import fraction, sparsity_report, threshold_value
from adapmtl_cli.errors import CheckpointError
from adapmtl_cli.io.formats import is_torch_save_file


@dataclass
class LayerInfo:
    key: str
    component: str
    params: int
    zeros: int
    threshold: float | None


@dataclass
class InspectReport:
    path: Path
    kind: str
    file_size: int
    preset: str | None
    tasks: list[str]
    step: int | None
    layers: list[LayerInfo]
    thresholds: dict[str, float]
    metrics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def component_totals(self) -> dict[str, tuple[int, int]]:
        totals: dict[str, list[int]] = {}
        for layer in self.layers:
            entry = totals.setdefault(layer.component, [0, 0])
            entry[0] += layer.params
            entry[1] += layer.zeros
        return {name: (params, zeros) for name, (params, zeros) in totals.items()}

    def as_dict(self, with_layers: bool = False) -> dict:
        totals = self.component_totals()
        document = {
            "file": str(self.path),
            "kind": self.kind,
            "file_size": self.file_size,
            "preset": self.preset,
            "tasks": self.tasks,
            "step": self.step,
            "sparsity": sparsity_report({name: z for name, (_, z) in totals.items()}, {name: p for name, (p, _) in totals.items()}),
            "thresholds": self.thresholds,
            "metrics": self.metrics,
            "params": {name: p for name, (p, _) in totals.items()},
            "nonzeros": {name: p - z for name, (p, z) in totals.items()},
        }
        if with_layers:
            document["layers"] = {
                layer.key: {"component": layer.component, "params": layer.params,
                            "sparsity": fraction(layer.zeros, layer.params), "threshold": layer.threshold}
                for layer in self.layers
            }
        return document


def inspect_file(path: Path | str) -> InspectReport:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if _is_export_program(path):
        raise CheckpointError(f"{path}: a torch.export program (adapmtl export --format program); inspect reads checkpoints "
                              "and dense or sparse exports: inspect the checkpoint it came from")
    if is_torch_save_file(path):
        return _inspect_reference(path)
    return _inspect_safetensors(path)


def _is_export_program(path: Path) -> bool:
    """A ``torch.export`` archive written by ``adapmtl export --format program`` (a zip holding
    ``<archive>/extra/adapmtl.json``); only the zip directory is read."""
    import zipfile

    if path.suffix == ".safetensors":
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/extra/adapmtl.json") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _inspect_safetensors(path: Path) -> InspectReport:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="np")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason}); is it complete?") from None
    with handle:
        metadata = handle.metadata() or {}
        kind = metadata.get("format", "")
        if not kind.startswith("adapmtl"):
            raise CheckpointError(f"{path}: a safetensors file, but not written by adapmtl (no 'format' metadata)")
        if "content_sha256" in metadata:  # exports (adapmtl export) carry a checksum of their weights
            _verify_export_checksum(path, metadata)
        try:
            layer_map = json.loads(metadata["layers"])
            sparse = json.loads(metadata["sparse"]) if kind == "adapmtl.sparse" else {}
            keys = set(handle.keys())
            thresholds = {
                name[len("threshold."):]: threshold_value(float(handle.get_tensor(name)))
                for name in keys if name.startswith("threshold.")
            }
            layers = [
                _count_sparse_layer(handle, keys, key, info, sparse, path) if key in sparse
                else _count_layer(handle, keys, key, info, thresholds, path)
                for key, info in layer_map.items()
            ]
            if not thresholds and "thresholds_folded" in metadata:
                # an export: the thresholds are folded into the weights; show what they were
                thresholds = _json(metadata["thresholds_folded"], {})
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: metadata or tensors are inconsistent ({exc}); the file is damaged") from None
    config = _json(metadata.get("config"), {})
    return InspectReport(
        path=path, kind=kind, file_size=path.stat().st_size, preset=config.get("name"),
        tasks=_json(metadata.get("tasks"), []), step=int(metadata["step"]) if "step" in metadata else None,
        layers=layers, thresholds=thresholds, metrics=_json(metadata.get("metrics"), {}),
    )


def _count_layer(handle, keys: set[str], key: str, info: dict, thresholds: dict[str, float], path: Path) -> LayerInfo:
    if key not in keys:
        raise CheckpointError(f"{path}: metadata lists {key!r} but the file has no such tensor")
    weight = handle.get_tensor(key)
    threshold_name = info.get("threshold")
    if threshold_name is None:
        zeros = int(np.count_nonzero(weight == 0))
        threshold = None
    else:
        threshold = thresholds[threshold_name]
        zeros = int(np.count_nonzero(np.abs(weight.astype(np.float32, copy=False)) <= np.float32(threshold)))
    return LayerInfo(key=key, component=info["component"], params=int(weight.size), zeros=zeros, threshold=threshold)


def _count_sparse_layer(handle, keys: set[str], key: str, info: dict, sparse: dict, path: Path) -> LayerInfo:
    """A weight of a sparse export (adapmtl export --format sparse): zeros = numel - popcount of
    its bitmask (numpy.packbits order, padding bits zero), checked against the stored values."""
    mask_key, values_key = f"bitmask.{key}", f"values.{key}"
    if mask_key not in keys or values_key not in keys:
        raise CheckpointError(f"{path}: metadata lists {key!r} but the file has no bitmask or values for it")
    params = int(np.prod(sparse[key]["shape"], dtype=np.int64))
    bitmask = handle.get_tensor(mask_key)
    if bitmask.dtype != np.uint8 or bitmask.size != (params + 7) // 8:
        raise CheckpointError(f"{path}: the bitmask of {key!r} does not fit its shape {sparse[key]['shape']}; the file is damaged")
    nonzeros = int(np.bitwise_count(bitmask).sum(dtype=np.int64))
    stored = int(np.prod(handle.get_slice(values_key).get_shape(), dtype=np.int64))
    if nonzeros != stored:
        raise CheckpointError(f"{path}: the bitmask of {key!r} marks {nonzeros} non-zeros but {stored} values are stored; the file is damaged")
    return LayerInfo(key=key, component=info["component"], params=params, zeros=params - nonzeros, threshold=None)


def _verify_export_checksum(path: Path, metadata: dict) -> None:
    """SHA-256 of the data section (after the 8-byte length and the JSON header), as written by
    adapmtl export; read through a memory map so large files are not copied."""
    import hashlib
    import mmap
    import struct

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        (length,) = struct.unpack("<Q", data[:8])
        with memoryview(data) as view, view[8 + length:] as body:
            digest = hashlib.sha256(body).hexdigest()
    if digest != metadata["content_sha256"]:
        raise CheckpointError(f"{path}: the weights do not match the file's checksum (content_sha256); the file is damaged, export it again")


def _json(text: str | None, default):
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


def _inspect_reference(path: Path) -> InspectReport:
    """A reference AdapMTL ``.model`` file, through the restricted importer."""
    from adapmtl_cli.io.reference import load_reference_checkpoint

    reference = load_reference_checkpoint(path)
    thresholds = {name: threshold_value(float(value)) for name, value in reference.thresholds.items()}
    layers = []
    for key, tensor in reference.state_dict.items():
        # Conv weights only (4-d), by design: the reference's models (REFERENCE.md 4) have no Linear
        # layer, and a .model file carries no layer list to say which 2-d tensors were thresholded.
        # adapmtl's own files go by their ``layers`` metadata, Linear weights included.
        if tensor.dim() != 4 or not key.endswith(".weight"):
            continue
        component = "backbone" if key.startswith("backbone.") else f"head.{key.split('.')[1]}"
        threshold = thresholds.get(component)
        weight = tensor.float()
        zeros = int((weight.abs() <= threshold).sum()) if threshold is not None else int((weight == 0).sum())
        layers.append(LayerInfo(key=key, component=component, params=weight.numel(), zeros=zeros, threshold=threshold))
    return InspectReport(
        path=path, kind="reference.adapmtl", file_size=path.stat().st_size, preset=None, tasks=reference.tasks,
        step=reference.step, layers=layers, thresholds=thresholds,
        notes=[f"reference AdapMTL checkpoint ({reference.backbone} backbone), read without executing any code"],
    )
