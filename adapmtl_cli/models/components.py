"""What a network must offer the sparsifier and the training loop, checked on any ``nn.Module``:
its components (named submodules that get a threshold each) and its forward's outputs.

Torch only; nothing here imports the engine. Faults are one-line :class:`ConfigError`s naming the
config key at fault.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import torch
from torch import nn

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.plugins import describe_exception


def default_components(model: nn.Module, tasks: list[str]) -> dict[str, str] | None:
    """``backbone`` and ``head.<task>`` when the model has a ``backbone`` submodule and a
    ``heads.<task>`` submodule for every task (the built-in networks); None otherwise."""
    paths = {"backbone": "backbone", **{f"head.{task}": f"heads.{task}" for task in tasks}}
    return paths if all(_submodule(model, path) is not None for path in paths.values()) else None


def resolve_components(model: nn.Module, paths: Mapping[str, str], tasks: list[str], origin: str) -> dict[str, nn.Module]:
    """Component name -> submodule of ``model``, from ``model.components`` (``paths``) or, when
    that is empty, the default of :func:`default_components`. ``origin`` says where the model came
    from (for messages). Explicit components come in the model's module order, so the order does
    not depend on how the table was written or read back from a checkpoint's JSON."""
    if not paths:
        default = default_components(model, tasks)
        if default is None:
            children = ", ".join(name for name, _ in model.named_children()) or "none"
            raise ConfigError(
                f"model.components is not set and {origin} has no `backbone` and `heads.<task>` submodules to "
                f"sparsify by default; set model.components to name them, e.g. {{backbone = \"...\", "
                f"\"head.{tasks[0]}\" = \"...\"}} (its top-level submodules: {children})"
            )
        components = {name: _submodule(model, path) for name, path in default.items()}
        _check_convs(components, default)
        return components
    found = {}
    for name, path in paths.items():
        module = _submodule(model, path)
        if module is None:
            raise ConfigError(f"model.components.{name} = {path!r}: {origin} has no such submodule{_closest_path(model, path)}")
        found[name] = (path, module)
    order = {}
    for index, (_, module) in enumerate(model.named_modules()):
        order.setdefault(id(module), index)
    ranked = sorted(found, key=lambda name: (order.get(id(found[name][1]), len(order)), found[name][0]))
    components = {name: found[name][1] for name in ranked}
    _check_convs(components, {name: found[name][0] for name in ranked})
    return components


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    if path == "":
        return model
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Module) else None


def _closest_path(model: nn.Module, path: str) -> str:
    names = [name for name, _ in model.named_modules() if name]
    match = difflib.get_close_matches(path, names, n=1, cutoff=0.0)
    return f" (closest: {match[0]!r})" if match else " (it has no submodules; use \"\" for the whole model)"


def _check_convs(components: dict[str, nn.Module], paths: dict[str, str]) -> None:
    """Every component holds a Conv2d, and no conv belongs to two components."""
    owner: dict[int, str] = {}
    for name, module in components.items():
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ConfigError(f"model.components.{name} = {paths[name]!r} holds no Conv2d layer (only Conv2d weights are "
                              "sparsified); name a submodule with convs, or leave it out to keep it dense")
        for conv in convs:
            other = owner.setdefault(id(conv), name)
            if other != name:
                raise ConfigError(f"model.components.{name} = {paths[name]!r} overlaps model.components.{other} = "
                                  f"{paths[other]!r} (they share convs); name disjoint submodules")


def check_outputs(model: nn.Module, out_channels: Mapping[str, int], resolution: int, origin: str) -> None:
    """One forward of a zero image ``[1, 3, resolution, resolution]`` in eval mode without
    gradients: the output must be a dict with a ``[1, C_task, h, w]`` float tensor per task.
    The model's train/eval mode is restored."""
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    shape = f"[1, 3, {resolution}, {resolution}]"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(torch.zeros(1, 3, resolution, resolution, device=device))
    except Exception as exc:  # noqa: BLE001 - any fault of the user's forward becomes one line
        raise ConfigError(f"{origin}: the model's forward on a zero image {shape} raised {describe_exception(exc)}") from None
    finally:
        model.train(was_training)
    if not isinstance(outputs, Mapping):
        raise ConfigError(f"{origin}: the model's forward returned a {type(outputs).__name__}, not a dict; "
                          f"return {{task: [B, C, h, w]}} with one output per task of `tasks`")
    missing = [task for task in out_channels if task not in outputs]
    if missing:
        given = ", ".join(map(str, outputs)) or "nothing"
        raise ConfigError(f"{origin}: the model's forward returned no output for task {missing[0]!r} "
                          f"(it returned: {given}); return one output per task of `tasks`")
    for task, channels in out_channels.items():
        out = outputs[task]
        good = (isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() == 4
                and out.shape[0] == 1 and out.shape[1] == channels)
        if not good:
            got = (f"{str(out.dtype).removeprefix('torch.')} {list(out.shape)}" if isinstance(out, torch.Tensor)
                   else f"a {type(out).__name__}")
            raise ConfigError(f"{origin}: the model's output for {task!r} on a zero image {shape} is {got}; expected a float "
                              f"tensor [1, {channels}, h, w] ({task} has {channels} output channel{'s' if channels > 1 else ''})")

