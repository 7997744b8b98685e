"""Reading the reference AdapMTL implementation's ``.model`` checkpoints without trusting them.

Those files are ``torch.save`` pickles of ``{"iter", "state_dict", "layout", "optimizer",
"scheduler"}`` (REFERENCE.md 13). Unpickling runs whatever globals a file names, so this reader
admits only what a state dict needs - torch's tensor-rebuild functions, storages and plain
containers. The pickled TreeMTL ``Layout`` becomes an inert stand-in that only holds data. Any other
global (``os.system``, ``builtins.eval``, ...) stops the read with a one-line error before it
could be called.

Reference keys already follow adapmtl's module names; the per-conv copies of each component's
threshold (``...conv1.sparseThreshold``) collapse into one value per component.
"""

from __future__ import annotations

import pickle
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from adapmtl_cli.errors import CheckpointError

THRESHOLD_SUFFIX = "sparseThreshold"

# (module, name) pairs a state dict legitimately needs.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): None,
    ("torch._utils", "_rebuild_tensor_v2"): None,
    ("torch._utils", "_rebuild_parameter"): None,
    ("torch._utils", "_rebuild_parameter_with_state"): None,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
}


class InertStandIn:
    """What a pickled TreeMTL object becomes: its state as plain data, no behaviour."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"InertStandIn({type(self).__name__})"


def _stand_in(module: str, name: str) -> type:
    return type(name, (InertStandIn,), {"__module__": f"adapmtl.inert.{module}"})


def _reconstructor(cls, base, state):
    """copyreg._reconstructor for stand-ins only (protocols 0 and 1)."""
    if not (isinstance(cls, type) and issubclass(cls, InertStandIn)):
        raise pickle.UnpicklingError("copyreg._reconstructor of a class that is not admitted")
    return cls.__new__(cls)


# Protocol-2 pickles name some modules by their Python 2 names.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _ALLOWED:
            allowed = _ALLOWED[(module, name)]
            return allowed if allowed is not None else getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if name == "Layout" or "layout" in module.lower():
            return _stand_in(module, name)
        raise pickle.UnpicklingError(f"refused to load the global {module}.{name}")


# torch.load takes a module-like object that provides Unpickler (and load, for old files).
_restricted_pickle = types.SimpleNamespace(
    __name__="adapmtl_restricted_pickle",
    Unpickler=RestrictedUnpickler,
    load=lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load(),
)


@dataclass
class ReferenceCheckpoint:
    path: Path
    state_dict: dict[str, Tensor]
    thresholds: dict[str, Tensor]
    tasks: list[str]
    backbone: str
    step: int | None
    iter_raw: str = ""
    extra: dict = field(default_factory=dict)


def _read_pickle(path: Path) -> dict:
    try:
        document = torch.load(path, map_location="cpu", pickle_module=_restricted_pickle, weights_only=False)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: {exc}; the file may be malicious, nothing in it was run") from None
    except Exception as exc:  # a truncated zip, random bytes, an old or damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable reference AdapMTL checkpoint ({reason})") from None
    if not isinstance(document, dict) or not isinstance(document.get("state_dict"), dict):
        raise CheckpointError(f"{path}: a pickle, but without a 'state_dict': not a reference AdapMTL checkpoint")
    return document


def _component_of(key: str) -> str | None:
    parts = key.split(".")
    if parts[0] == "backbone":
        return "backbone"
    if parts[0] == "heads" and len(parts) > 2:
        return f"head.{parts[1]}"
    return None


def load_reference_checkpoint(path: Path | str) -> ReferenceCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    document = _read_pickle(path)
    state, thresholds, tasks = {}, {}, []
    copies: dict[str, list[Tensor]] = {}
    for key, value in document["state_dict"].items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: state_dict entry {key!r} is not a tensor")
        component = _component_of(key)
        if component is None:
            raise CheckpointError(f"{path}: unexpected state_dict key {key!r} (neither backbone.* nor heads.<task>.*)")
        if component.startswith("head.") and component[5:] not in tasks:
            tasks.append(component[5:])
        if key.endswith(THRESHOLD_SUFFIX):
            owner = key[: -len(THRESHOLD_SUFFIX) - 1]
            if owner in ("backbone", f"heads.{component[5:]}"):  # the component's own value
                thresholds[component] = value.detach().reshape(())
            else:  # a per-conv copy: must agree with the component's value
                copies.setdefault(component, []).append(value.detach().reshape(()))
            continue
        state[key] = value.detach()
    for component, values in copies.items():
        reference = thresholds.get(component, values[0])
        thresholds.setdefault(component, reference)
        worst = max(abs(float(v) - float(reference)) for v in values)
        if worst > 1e-6:
            raise CheckpointError(f"{path}: the per-conv thresholds of {component} differ from the component's by {worst:.3g}")
    backbone = "resnet34" if any(k.startswith("backbone.blocks.") for k in state) else \
        "mobilenetv2" if any(k.startswith("backbone.features.") for k in state) else "unknown"
    raw_iter = document.get("iter")
    step = raw_iter if isinstance(raw_iter, int) else None
    return ReferenceCheckpoint(path=path, state_dict=state, thresholds=thresholds, tasks=tasks, backbone=backbone,
                               step=step, iter_raw=str(raw_iter))


def reference_config(reference: ReferenceCheckpoint):
    """The paper preset that matches a reference checkpoint's backbone and tasks."""
    from adapmtl_cli.config import load_config

    if reference.backbone == "unknown":
        raise CheckpointError(f"{reference.path}: cannot tell its backbone (no backbone.blocks.* or backbone.features.* keys)")
    suffix = "resnet34" if reference.backbone == "resnet34" else "mnv2"
    dataset = "taskonomy" if len(reference.tasks) == 5 else "nyuv2"
    config = load_config(f"{dataset}-{suffix}")
    config.tasks = reference.tasks
    first_head = f"heads.{reference.tasks[0]}.fc1.conv1.weight" if reference.tasks else None
    if first_head in reference.state_dict:  # the paper's 1024, unless the file says otherwise
        config.model.head_hidden = int(reference.state_dict[first_head].shape[0])
    return config
