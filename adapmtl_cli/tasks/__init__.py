"""Task kinds: each one's loss, metrics and metric directions, looked up by task name in a registry.

    task = build_task("segment_semantic", num_classes=40, quirks=MetricQuirks.paper())
    loss = task.loss(outputs["segment_semantic"], targets["segment_semantic"])
    meter = task.new_metric(); meter.update(pred, target); meter.reduce(); meter.compute()

A kind is a ``Task`` subclass registered under its ``name``. Its options are its constructor's
keyword parameters (``task_options``): ``segment_semantic``: ``num_classes`` (required),
``class_weights``, ``style``; ``normal``, ``depth_zbuffer``: ``style``; ``keypoints2d``,
``edge_texture``: none; every kind: ``quirks`` (a ``MetricQuirks``). Styles are ``"nyuv2"``
(default) and ``"taskonomy"``. ``builders.build_tasks`` hands each kind the options it names, so a
kind of your own needs one call, ``register_task(MyTask)``, and is then valid in a config's
``tasks`` (the config reads ``task_names()`` when it is validated).

Importing this package imports no torch: the built-in kinds are imported on first use, so that a
config's validation stays light (``adapmtl presets list``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING

from adapmtl_cli.errors import ConfigError

if TYPE_CHECKING:
    from adapmtl_cli.tasks.base import Task

# The built-in kinds, each imported when first used: "module:class".
_BUILTIN = {
    "segment_semantic": "adapmtl_cli.tasks.segmentation:SegmentationTask",
    "normal": "adapmtl_cli.tasks.normal:NormalTask",
    "depth_zbuffer": "adapmtl_cli.tasks.depth:DepthTask",
    "keypoints2d": "adapmtl_cli.tasks.keypoints2d:KeypointsTask",
    "edge_texture": "adapmtl_cli.tasks.edge_texture:EdgeTextureTask",
}
_KINDS: dict[str, type[Task] | str] = dict(_BUILTIN)

# Names resolved on first use (module __getattr__), so that importing the registry stays torch-free.
_LAZY = {"Task": "adapmtl_cli.tasks.base", "Metric": "adapmtl_cli.tasks.base", "MetricQuirks": "adapmtl_cli.tasks.base"}

__all__ = ["TASK_KINDS", "Metric", "MetricQuirks", "Task", "build_task", "higher_is_better_of", "metric_directions",
           "register_task", "task_kind", "task_names", "task_options", "unregister_task"]


def task_names() -> tuple[str, ...]:
    """The names of every registered task kind, built-in ones first."""
    return tuple(_KINDS)


def register_task(kind: type[Task], *, replace: bool = False) -> type[Task]:
    """Register a ``Task`` subclass under its ``name``; returns it (usable as a class decorator).
    ``replace=True`` lets it take the place of a kind of the same name."""
    from adapmtl_cli.tasks.base import Task

    if not (isinstance(kind, type) and issubclass(kind, Task)):
        raise TypeError(f"register_task takes a Task subclass, got {kind!r}")
    name = getattr(kind, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{kind.__name__}.name must be a task name (letters, digits and '_'), got {name!r}")
    if name in _KINDS and not replace:
        raise ValueError(f"a task kind named {name!r} is registered already; pass replace=True to replace it")
    _KINDS[name] = kind
    return kind


def unregister_task(name: str) -> None:
    """Remove a registered kind; a built-in one comes back as it was."""
    if name in _BUILTIN:
        _KINDS[name] = _BUILTIN[name]
    else:
        _KINDS.pop(name, None)


def task_kind(name: str) -> type[Task]:
    """The class of the kind called ``name``; a ``ConfigError`` lists the valid names."""
    kind = _KINDS.get(name)
    if kind is None:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(_KINDS)}")
    if isinstance(kind, str):
        module, _, attribute = kind.partition(":")
        kind = getattr(importlib.import_module(module), attribute)
        if kind.name != name:
            raise TypeError(f"{module}.{attribute} is registered as {name!r} but its name is {kind.name!r}")
        _KINDS[name] = kind
    return kind


def task_options(name: str) -> tuple[str, ...]:
    """The options a kind takes: its constructor's parameters."""
    return tuple(_parameters(task_kind(name)))


def _parameters(kind: type[Task]) -> dict[str, inspect.Parameter]:
    """The named parameters of the kind's constructor (none for a kind that defines none)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: parameter for name, parameter in inspect.signature(kind.__init__).parameters.items()
            if name != "self" and parameter.kind in named}


def build_task(name: str, **options) -> Task:
    """The task called ``name``, configured by ``options``; a ``ConfigError`` names what is wrong."""
    kind = task_kind(name)
    _check_options(name, kind, options)
    return kind(**options)


def _check_options(name: str, kind: type[Task], options: dict) -> None:
    from adapmtl_cli.tasks.base import MetricQuirks

    parameters = _parameters(kind)
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ConfigError(
            f"task {name!r} has no option {unknown[0]!r}; its options: {', '.join(parameters)}"
        )
    missing = [p for p, spec in parameters.items() if spec.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"task {name!r} needs the option {missing[0]!r}")
    if "quirks" in options and not isinstance(options["quirks"], MetricQuirks):
        raise ConfigError(f"task {name!r}: quirks must be a MetricQuirks, got {type(options['quirks']).__name__}")


def metric_directions(name: str) -> dict[str, bool]:
    """Every metric key a task called ``name`` can report, whatever its options (style, class
    count), with its direction: what comparing result files needs (``Task.metric_directions``)."""
    return task_kind(name).metric_directions()


def higher_is_better_of(tasks: dict[str, Task]) -> dict[str, dict[str, bool]]:
    """Each task's metric directions, in the shape ``scores.delta_scores`` takes."""
    return {name: dict(task.higher_is_better) for name, task in tasks.items()}


def __getattr__(name: str):
    if name == "TASK_KINDS":  # the registered names now, as a tuple
        return task_names()
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adapmtl_cli.tasks' has no attribute {name!r}")
