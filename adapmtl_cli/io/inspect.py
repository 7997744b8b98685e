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

from adapmtl_cli.errors import CheckpointError


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
        params = sum(p for p, _ in totals.values())
        zeros = sum(z for _, z in totals.values())
        document = {
            "file": str(self.path),
            "kind": self.kind,
            "file_size": self.file_size,
            "preset": self.preset,
            "tasks": self.tasks,
            "step": self.step,
            "sparsity": {
                "overall": zeros / params if params else 0.0,
                "components": {name: z / p if p else 0.0 for name, (p, z) in totals.items()},
            },
            "thresholds": self.thresholds,
            "metrics": self.metrics,
            "params": {name: p for name, (p, _) in totals.items()},
            "nonzeros": {name: p - z for name, (p, z) in totals.items()},
        }
        if with_layers:
            document["layers"] = {
                layer.key: {"component": layer.component, "params": layer.params,
                            "sparsity": layer.zeros / layer.params, "threshold": layer.threshold}
                for layer in self.layers
            }
        return document


def _sigmoid(s: float) -> np.float32:
    # float32 like the engine, so borderline weights are counted the same way
    return np.float32(1.0) / (np.float32(1.0) + np.exp(np.float32(-s), dtype=np.float32))


def inspect_file(path: Path | str) -> InspectReport:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if _looks_like_torch_save(path):
        return _inspect_reference(path)
    return _inspect_safetensors(path)


def _looks_like_torch_save(path: Path) -> bool:
    """A reference ``.model`` file: torch.save's zip archive (or an old raw pickle)."""
    if path.suffix == ".safetensors":
        return False
    with open(path, "rb") as handle:
        head = handle.read(2)
    return path.suffix in (".model", ".pt", ".pth") or head == b"PK" or head[:1] == b"\x80"


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
        try:
            layer_map = json.loads(metadata["layers"])
            keys = set(handle.keys())
            thresholds = {
                name[len("threshold."):]: float(_sigmoid(float(handle.get_tensor(name))))
                for name in keys if name.startswith("threshold.")
            }
            layers = [_count_layer(handle, keys, key, info, thresholds, path) for key, info in layer_map.items()]
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
        zeros = int(np.count_nonzero(np.abs(weight) <= np.float32(threshold)))
    return LayerInfo(key=key, component=info["component"], params=int(weight.size), zeros=zeros, threshold=threshold)


def _json(text: str | None, default):
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


def _inspect_reference(path: Path) -> InspectReport:
    """A reference AdapMTL ``.model`` file, through the restricted importer."""
    import torch

    from adapmtl_cli.io.reference import load_reference_checkpoint

    reference = load_reference_checkpoint(path)
    thresholds = {name: float(torch.sigmoid(value.float())) for name, value in reference.thresholds.items()}
    layers = []
    for key, tensor in reference.state_dict.items():
        if tensor.dim() != 4 or not key.endswith(".weight"):
            continue  # only conv weights are sparsified
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
