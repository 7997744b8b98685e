"""Task-loss weighting strategies, one file each behind the small interface of ``base.py``."""

from __future__ import annotations

from adapmtl_cli.engine.weighting.adaptive import AdaptiveWeighting
from adapmtl_cli.engine.weighting.base import TaskWeighting
from adapmtl_cli.engine.weighting.equal import EqualWeighting

STRATEGIES: dict[str, type[TaskWeighting]] = {"adaptive": AdaptiveWeighting, "equal": EqualWeighting}


def build_weighting(method: str, num_tasks: int, **options) -> TaskWeighting:
    return STRATEGIES[method](num_tasks, **options)


__all__ = ["AdaptiveWeighting", "EqualWeighting", "TaskWeighting", "STRATEGIES", "build_weighting"]
