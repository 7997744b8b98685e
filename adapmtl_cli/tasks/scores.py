"""Multitask scores relative to a baseline (the dense model): Delta_T (AdapMTL's) and Delta_p.

For metric j of task i with value M and baseline B, the signed relative change in percent is
``r_ij = (-1)^l_j * (M - B) / B * 100`` with ``l_j = 1`` when lower is better (REFERENCE.md 8).

- Delta_T (the AdapMTL paper's): ``Delta_Ti = sum_j r_ij`` per task, then the mean over tasks.
- Delta_p (LibMTL; Delta_m of Maninis et al. 2019): ``mean_j r_ij`` per task, then the mean over
  tasks.

The two differ whenever tasks have different numbers of metrics: under Delta_T a task with five
metrics weighs five times more than one with a single metric. Compute them from unrounded metrics.
Only metrics present (and finite) in both the metrics and the baseline are used; a metric that is
undefined on either side (``None``: null in strict JSON, e.g. paper-mode mIoU with no true
positive; or NaN) or whose baseline is 0 has no relative change and is skipped. Every skipped
metric is recorded with why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

DEFINITIONS = {
    "delta_t": "Delta_T (AdapMTL): per task, the SUM over its metrics of (-1)^l * (M - B) / B * 100 "
               "(l = 1 when lower is better, B = baseline), then the mean over tasks",
    "delta_p": "Delta_p (LibMTL) / Delta_m (Maninis et al. 2019): per task, the MEAN over its metrics of "
               "(-1)^l * (M - B) / B * 100, then the mean over tasks",
}


@dataclass(frozen=True)
class SkippedMetric:
    task: str
    metric: str
    reason: str


@dataclass(frozen=True)
class DeltaScores:
    """Relative scores in percent; positive = better than the baseline.

    ``per_metric[task][key]`` is the signed relative change r of each metric used; ``per_task``
    its sum per task (Delta_Ti, the paper's per-task value) and ``per_task_mean`` its mean per task.
    Tasks with no usable metric are left out of every mean (and their metrics listed in
    ``skipped``); with no task left ``delta_t`` and ``delta_p`` are NaN.
    """

    per_metric: dict[str, dict[str, float]]
    per_task: dict[str, float]
    per_task_mean: dict[str, float]
    delta_t: float
    delta_p: float
    skipped: list[SkippedMetric] = field(default_factory=list)
    definition: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))

    def to_dict(self) -> dict:
        return asdict(self)


def relative_change(value: float, baseline: float, higher_is_better: bool) -> float:
    """``(-1)^l * (value - baseline) / baseline * 100``: positive when ``value`` is better."""
    sign = 1.0 if higher_is_better else -1.0
    return sign * (value - baseline) / baseline * 100.0


def delta_scores(metrics: dict[str, dict[str, float | None]], baseline: dict[str, dict[str, float | None]],
                 higher_is_better: dict[str, dict[str, bool]]) -> DeltaScores:
    """Delta_T and Delta_p of ``metrics`` against ``baseline`` (both ``task -> key -> value``).

    ``higher_is_better[task][key]`` gives each metric's direction (``Task.higher_is_better``);
    a metric used without a known direction is a programming error (``ValueError``).
    """
    per_metric: dict[str, dict[str, float]] = {}
    skipped: list[SkippedMetric] = []
    for task in _ordered_union(metrics, baseline):
        changes = _task_changes(task, metrics.get(task, {}), baseline.get(task, {}),
                                higher_is_better.get(task, {}), skipped)
        if changes:
            per_metric[task] = changes
    per_task = {task: sum(changes.values()) for task, changes in per_metric.items()}
    per_task_mean = {task: sum(changes.values()) / len(changes) for task, changes in per_metric.items()}
    return DeltaScores(
        per_metric=per_metric,
        per_task=per_task,
        per_task_mean=per_task_mean,
        delta_t=_mean(per_task.values()),
        delta_p=_mean(per_task_mean.values()),
        skipped=skipped,
    )


def _task_changes(task: str, values: dict[str, float], base: dict[str, float], directions: dict[str, bool],
                  skipped: list[SkippedMetric]) -> dict[str, float]:
    changes = {}
    for key in _ordered_union(values, base):
        reason = _skip_reason(key, values, base)
        if reason:
            skipped.append(SkippedMetric(task, key, reason))
            continue
        if key not in directions:
            raise ValueError(f"no direction (higher_is_better) known for metric {task}.{key}")
        changes[key] = relative_change(float(values[key]), float(base[key]), directions[key])
    return changes


def _skip_reason(key: str, values: dict[str, float], base: dict[str, float]) -> str:
    if key not in values:
        return "missing from the metrics"
    if key not in base:
        return "missing from the baseline"
    if _undefined(values[key]):
        return "undefined (null or not finite) in the metrics"
    if _undefined(base[key]):
        return "undefined (null or not finite) in the baseline"
    if float(base[key]) == 0.0:
        return "baseline is 0: no relative change"
    return ""


def _undefined(value) -> bool:
    """None (null in JSON: e.g. paper-mode mIoU with no true positive) or a non-finite number."""
    return value is None or not math.isfinite(float(value))


def _ordered_union(first: dict, second: dict) -> list:
    """Keys of ``first`` in order, then those only in ``second``."""
    return list(first) + [key for key in second if key not in first]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan
