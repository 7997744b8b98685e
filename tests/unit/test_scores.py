"""Delta_T and Delta_p: every Delta_T of the published NYUv2 / MobileNetV2 table (REFERENCE.md 9)
recomputed from its twelve metric values with the Dense row as baseline, plus hand checks."""

from __future__ import annotations

import math

import pytest

from adapmtl_cli.tasks import build_task, higher_is_better_of
from adapmtl_cli.tasks.scores import DEFINITIONS, delta_scores

# The table's metric columns, grouped by task, with each metric's direction (True = higher is
# better): seg mIoU, PixAcc up; normal Mean, Median down, 11.25 / 22.5 / 30 up; depth Abs, Rel down,
# the three deltas up.
COLUMNS = {
    "segment_semantic": [("miou", True), ("pixel_acc", True)],
    "normal": [("angle_mean", False), ("angle_median", False), ("within_11_25", True), ("within_22_5", True),
               ("within_30", True)],
    "depth_zbuffer": [("abs_err", False), ("rel_err", False), ("delta_1_25", True), ("delta_1_25_2", True),
                      ("delta_1_25_3", True)],
}
DIRECTIONS = {task: dict(columns) for task, columns in COLUMNS.items()}

# model: (12 metric values in COLUMNS order, published Delta_T)
TABLE = {
    "Dense": ([19.94, 48.71, 17.85, 16.21, 29.77, 72.19, 86.19, 0.64, 0.24, 58.93, 86.27, 96.16], 0.00),
    "SNIP": ([18.96, 46.93, 18.33, 16.97, 28.93, 71.21, 85.78, 0.64, 0.25, 56.75, 85.71, 95.33], -9.99),
    "LTH": ([19.14, 47.25, 17.67, 16.32, 29.67, 72.15, 86.22, 0.65, 0.25, 57.68, 85.89, 96.13], -5.12),
    "IMP": ([18.76, 48.12, 18.71, 16.68, 29.63, 71.76, 85.91, 0.64, 0.23, 59.75, 86.52, 96.31], -3.41),
    "DiSparse": ([19.87, 48.83, 17.92, 16.79, 29.87, 71.76, 85.64, 0.65, 0.24, 58.42, 85.72, 96.28], -2.64),
    "AdapMTL, one threshold": ([18.93, 47.51, 18.16, 16.87, 28.37, 71.53, 86.63, 0.65, 0.24, 58.26, 85.82, 95.92],
                               -7.30),
    "AdapMTL": ([20.16, 49.14, 17.53, 15.96, 30.16, 72.36, 86.51, 0.64, 0.24, 59.03, 86.57, 96.38], 2.66),
}


def as_metrics(values: list[float]) -> dict[str, dict[str, float]]:
    metrics, remaining = {}, iter(values)
    for task, columns in COLUMNS.items():
        metrics[task] = {key: next(remaining) for key, _ in columns}
    return metrics


BASELINE = as_metrics(TABLE["Dense"][0])


@pytest.mark.parametrize("model", list(TABLE))
def test_every_published_delta_t_reproduces(model):
    values, published = TABLE[model]
    scores = delta_scores(as_metrics(values), BASELINE, DIRECTIONS)
    assert scores.delta_t == pytest.approx(published, abs=0.01)
    assert not scores.skipped


def test_adapmtl_per_task_values_of_reference_section_8():
    scores = delta_scores(as_metrics(TABLE["AdapMTL"][0]), BASELINE, DIRECTIONS)
    # seg: (20.16 - 19.94) / 19.94 + (49.14 - 48.71) / 48.71 = 1.103 % + 0.883 % = 1.99
    assert scores.per_task["segment_semantic"] == pytest.approx((0.22 / 19.94 + 0.43 / 48.71) * 100)
    published = {"segment_semantic": 1.99, "normal": 5.25, "depth_zbuffer": 0.75}
    assert scores.per_task == pytest.approx(published, abs=0.005)
    assert scores.delta_t == pytest.approx((1.99 + 5.25 + 0.75) / 3, abs=0.005)


def test_task_directions_match_the_table():
    tasks = {name: build_task(name, **({"num_classes": 40} if name == "segment_semantic" else {}))
             for name in COLUMNS}
    assert higher_is_better_of(tasks) == DIRECTIONS


def test_delta_p_by_hand():
    metrics = {"a": {"x": 11.0, "y": 1.5}, "b": {"z": 3.0}}
    baseline = {"a": {"x": 10.0, "y": 2.0}, "b": {"z": 4.0}}
    directions = {"a": {"x": True, "y": False}, "b": {"z": True}}
    scores = delta_scores(metrics, baseline, directions)
    # a: x +10 % (up), y (1.5 - 2) / 2 = -25 %, lower is better -> +25 %. b: z -25 %.
    assert scores.per_metric["a"] == pytest.approx({"x": 10.0, "y": 25.0})
    assert scores.per_metric["b"] == pytest.approx({"z": -25.0})
    assert scores.per_task == pytest.approx({"a": 35.0, "b": -25.0})
    assert scores.per_task_mean == pytest.approx({"a": 17.5, "b": -25.0})
    assert scores.delta_t == pytest.approx((35.0 - 25.0) / 2)  # 5.0
    assert scores.delta_p == pytest.approx((17.5 - 25.0) / 2)  # -3.75
    assert set(scores.definition) == {"delta_t", "delta_p"} and scores.definition == DEFINITIONS


def test_delta_p_of_the_adapmtl_row():
    values = TABLE["AdapMTL"][0]
    scores = delta_scores(as_metrics(values), BASELINE, DIRECTIONS)
    assert scores.delta_p == pytest.approx((scores.per_task["segment_semantic"] / 2 + scores.per_task["normal"] / 5
                                            + scores.per_task["depth_zbuffer"] / 5) / 3)
    assert scores.delta_p == pytest.approx((1.99 / 2 + 5.25 / 5 + 0.75 / 5) / 3, abs=0.005)  # 0.73


def test_only_shared_metrics_count_and_skips_are_recorded():
    metrics = {"a": {"x": 11.0, "y": 5.0, "only_here": 1.0}, "b": {"z": 2.0}, "c": {"w": 1.0}}
    baseline = {"a": {"x": 10.0, "y": 0.0}, "b": {"z": float("nan")}, "c": {"w": 2.0}, "d": {"v": 1.0}}
    directions = {"a": {"x": True, "y": True, "only_here": True}, "b": {"z": True}, "c": {"w": False}}
    scores = delta_scores(metrics, baseline, directions)
    assert scores.per_task == pytest.approx({"a": 10.0, "c": 50.0})  # b has no usable metric: left out
    assert scores.delta_t == pytest.approx(30.0)
    skipped = {(s.task, s.metric): s.reason for s in scores.skipped}
    assert set(skipped) == {("a", "y"), ("a", "only_here"), ("b", "z"), ("d", "v")}
    assert "baseline is 0" in skipped[("a", "y")]


def test_no_usable_metric_gives_nan():
    scores = delta_scores({"a": {"x": 1.0}}, {"a": {"x": 0.0}}, {"a": {"x": True}})
    assert math.isnan(scores.delta_t) and math.isnan(scores.delta_p)


def test_unknown_direction_is_an_error():
    with pytest.raises(ValueError, match="a.x"):
        delta_scores({"a": {"x": 1.0}}, {"a": {"x": 2.0}}, {"a": {}})
