"""Task kinds: each one's loss, metrics and metric directions, looked up by task name.

    task = build_task("segment_semantic", num_classes=40, quirks=MetricQuirks.paper())
    loss = task.loss(outputs["segment_semantic"], targets["segment_semantic"])
    meter = task.new_metric(); meter.update(pred, target); meter.reduce(); meter.compute()

Options per kind: ``segment_semantic``: ``num_classes`` (required), ``class_weights``, ``style``;
``normal``, ``depth_zbuffer``: ``style``; ``keypoints2d``, ``edge_texture``: none. Every kind takes
``quirks`` (a ``MetricQuirks``). Styles are ``"nyuv2"`` (default) and ``"taskonomy"``.
"""

from __future__ import annotations

import inspect

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks.base import Metric, MetricQuirks, Task
from adapmtl_cli.tasks.depth import DepthTask
from adapmtl_cli.tasks.edge_texture import EdgeTextureTask
from adapmtl_cli.tasks.keypoints2d import KeypointsTask
from adapmtl_cli.tasks.normal import NormalTask
from adapmtl_cli.tasks.segmentation import SegmentationTask

_KINDS: dict[str, type[Task]] = {
    kind.name: kind for kind in (SegmentationTask, NormalTask, DepthTask, KeypointsTask, EdgeTextureTask)
}
TASK_KINDS: tuple[str, ...] = tuple(_KINDS)

__all__ = ["TASK_KINDS", "Metric", "MetricQuirks", "Task", "build_task", "higher_is_better_of"]


def build_task(name: str, **options) -> Task:
    """The task called ``name``, configured by ``options``; a ``ConfigError`` names what is wrong."""
    kind = _KINDS.get(name)
    if kind is None:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_KINDS)}")
    _check_options(name, kind, options)
    return kind(**options)


def _check_options(name: str, kind: type[Task], options: dict) -> None:
    parameters = inspect.signature(kind.__init__).parameters
    accepted = [p for p in parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"task {name!r} has no option {unknown[0]!r}; its options: {', '.join(accepted)}"
        )
    missing = [p for p, spec in parameters.items()
               if p != "self" and spec.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"task {name!r} needs the option {missing[0]!r}")
    if "quirks" in options and not isinstance(options["quirks"], MetricQuirks):
        raise ConfigError(f"task {name!r}: quirks must be a MetricQuirks, got {type(options['quirks']).__name__}")


def higher_is_better_of(tasks: dict[str, Task]) -> dict[str, dict[str, bool]]:
    """Each task's metric directions, in the shape ``scores.delta_scores`` takes."""
    return {name: dict(task.higher_is_better) for name, task in tasks.items()}
