"""Task metrics against values worked by hand or by a second, plain numpy implementation
(REFERENCE.md 7), and each quirk switch moving its number the way the reference does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adapmtl_cli.tasks import MetricQuirks, build_task

NAN = float("nan")
STANDARD = MetricQuirks()


def one_hot_logits(labels, num_classes: int) -> torch.Tensor:
    """Logits [B, C, H, W] whose argmax is ``labels`` [B, H, W]."""
    labels = torch.as_tensor(labels)
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def column(*values) -> torch.Tensor:
    """A one-channel map [1, 1, 1, n]."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, len(values))


def run_metric(task, batches):
    meter = task.new_metric()
    for pred, target in batches:
        meter.update(pred, target)
    meter.reduce()  # a no-op without torch.distributed
    return meter.compute()


# --- segmentation ----------------------------------------------------------------------------

# Truth [[0, 0, 1], [1, 2, 255]] and prediction [[0, 1, 1], [1, 1, 0]]; the 255 pixel is ignored.
# Confusion (truth row, prediction column): class 0 -> {0: 1, 1: 1}; class 1 -> {1: 2}; class 2 -> {1: 1}.
# TP = (1, 2, 0); truth counts (2, 2, 1); prediction counts (1, 4, 0); union = (2, 4, 1);
# IoU = (0.5, 0.5, 0). Class 2 is in the truth but never hit.
SEG_TRUTH = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
SEG_PRED = one_hot_logits([[[0, 1, 1], [1, 1, 0]]], 3)


def test_miou_and_pixel_acc_by_hand():
    metrics = run_metric(build_task("segment_semantic", num_classes=3), [(SEG_PRED, SEG_TRUTH)])
    assert set(metrics) == {"miou", "pixel_acc"}
    assert metrics["miou"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # class 2 counts with IoU 0
    assert metrics["pixel_acc"] == pytest.approx(3 / 5)  # 3 correct of 5 labelled pixels


def test_quirk_miou_tp_only_skips_the_missed_class():
    quirks = MetricQuirks(miou_tp_only=True)
    metrics = run_metric(build_task("segment_semantic", num_classes=3, quirks=quirks), [(SEG_PRED, SEG_TRUTH)])
    assert metrics["miou"] == pytest.approx((0.5 + 0.5) / 2)  # class 2 (no TP) left out: higher
    assert metrics["pixel_acc"] == pytest.approx(3 / 5)


def test_miou_counts_classes_only_predicted():
    # Truth all class 0; prediction 0, 1. Class 1 is only predicted: IoU 0 counts in standard mode.
    truth = torch.tensor([[[0, 0]]])
    pred = one_hot_logits([[[0, 1]]], 3)
    standard = run_metric(build_task("segment_semantic", num_classes=3), [(pred, truth)])
    assert standard["miou"] == pytest.approx((1 / 2 + 0) / 2)  # class 0: TP 1 / union 2; class 2 unseen
    paper = run_metric(build_task("segment_semantic", num_classes=3, quirks=MetricQuirks.paper()), [(pred, truth)])
    assert paper["miou"] == pytest.approx(1 / 2)


def test_segmentation_prediction_is_upsampled_nearest():
    # Prediction 1x2 (labels 0, 1) against a 1x4 truth: upsampled to 0, 0, 1, 1.
    pred = one_hot_logits([[[0, 1]]], 2)
    truth = torch.tensor([[[0, 1, 1, 1]]])
    metrics = run_metric(build_task("segment_semantic", num_classes=2), [(pred, truth)])
    assert metrics["pixel_acc"] == pytest.approx(3 / 4)
    # Class 0: TP 1, union 2 -> 0.5; class 1: TP 2, union 3 -> 2/3.
    assert metrics["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_quirk_batch_weighted_pixel_acc():
    # Batch A: one image, 4 labelled pixels, all right (acc 1). Batch B: two images with one
    # labelled pixel each, both wrong (acc 0).
    batch_a = (one_hot_logits([[[0, 1, 0, 1]]], 2), torch.tensor([[[0, 1, 0, 1]]]))
    batch_b = (one_hot_logits([[[0, 0]], [[1, 1]]], 2), torch.tensor([[[1, 255]], [[0, 255]]]))
    pooled = run_metric(build_task("segment_semantic", num_classes=2), [batch_a, batch_b])
    assert pooled["pixel_acc"] == pytest.approx(4 / 6)  # 4 correct of 6 labelled pixels
    quirk = build_task("segment_semantic", num_classes=2, quirks=MetricQuirks(batch_weighted_means=True))
    weighted = run_metric(quirk, [batch_a, batch_b])
    assert weighted["pixel_acc"] == pytest.approx((1.0 * 1 + 0.0 * 2) / 3)  # weights = batch sizes


def test_miou_matches_numpy_on_random_data():
    generator = torch.Generator().manual_seed(1)
    classes = 5
    batches = []
    for _ in range(3):
        pred = torch.randn(2, classes, 6, 7, generator=generator)
        truth = torch.randint(0, classes, (2, 12, 14), generator=generator)
        truth[torch.rand(truth.shape, generator=generator) < 0.2] = 255
        batches.append((pred, truth))
    confusion = np.zeros((classes, classes))
    for pred, truth in batches:
        upsampled = pred.argmax(1).numpy().repeat(2, axis=1).repeat(2, axis=2)  # exact 2x nearest
        keep = truth.numpy() < classes
        np.add.at(confusion, (truth.numpy()[keep], upsampled[keep]), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    expected_miou = np.mean(tp[union > 0] / union[union > 0])
    metrics = run_metric(build_task("segment_semantic", num_classes=classes), batches)
    assert metrics["miou"] == pytest.approx(expected_miou, abs=1e-12)
    assert metrics["pixel_acc"] == pytest.approx(tp.sum() / confusion.sum(), abs=1e-12)


def test_taskonomy_seg_err_is_mean_cross_entropy():
    task = build_task("segment_semantic", num_classes=2, style="taskonomy")
    assert task.higher_is_better == {"seg_err": False}
    pred = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    metrics = run_metric(task, [(pred, torch.tensor([[[0, 255, 1, 1]]]))])
    # Upsampled pixels: logits [2, 0] (label 0), [2, 0] (ignored), [0, 1] (label 1), [0, 1] (label 1).
    expected = (math.log(1 + math.exp(-2)) + 2 * math.log(1 + math.exp(-1))) / 3  # 0.251151
    assert metrics == {"seg_err": pytest.approx(expected, abs=1e-9)}


# --- normal ----------------------------------------------------------------------------------


def vectors_at_angles(degrees) -> torch.Tensor:
    """Predictions [1, 3, 1, n] at the given angles from (0, 0, 1), with different lengths."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    lengths = np.arange(1, len(degrees) + 1)
    vectors = np.stack([np.zeros_like(radians), np.sin(radians), np.cos(radians)]) * lengths
    return torch.tensor(vectors, dtype=torch.float32).reshape(1, 3, 1, len(degrees))


def test_normal_angles_by_hand():
    # Angles 5, 15, 25, 40, 60 and one invalid pixel (NaN truth).
    pred = vectors_at_angles([5, 15, 25, 40, 60, 0])
    truth = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1).repeat(1, 1, 1, 6)
    truth[..., 5] = NAN
    metrics = run_metric(build_task("normal"), [(pred, truth)])
    assert set(metrics) == {"angle_mean", "angle_median", "within_11_25", "within_22_5", "within_30"}
    assert metrics["angle_mean"] == pytest.approx((5 + 15 + 25 + 40 + 60) / 5, abs=1e-4)  # 29
    assert metrics["angle_median"] == pytest.approx(25, abs=0.005)  # one histogram bin
    assert metrics["within_11_25"] == pytest.approx(100 * 1 / 5)
    assert metrics["within_22_5"] == pytest.approx(100 * 2 / 5)
    assert metrics["within_30"] == pytest.approx(100 * 3 / 5)


def test_normal_metrics_match_numpy_on_random_data():
    generator = torch.Generator().manual_seed(2)
    batches, angles = [], []
    for _ in range(2):
        pred = torch.randn(2, 3, 5, 5, generator=generator)
        # Truth near (0, 0, 1) so that many angles fall under the thresholds.
        truth = torch.randn(2, 3, 10, 10, generator=generator) * 0.3 + torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
        truth[:, :, :3] = NAN  # invalid rows
        pred[:, 2] = pred[:, 2].abs() * 3
        batches.append((pred, truth))
        p = pred.double().numpy().repeat(2, axis=2).repeat(2, axis=3)
        t = truth.double().numpy()
        valid = np.isfinite(t).all(axis=1)
        cos = (p * t).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(np.nan_to_num(t), axis=1)
        angles.append(np.degrees(np.arccos(np.clip(cos[valid], -1, 1))))
    angles = np.concatenate(angles)  # 2 batches x 2 images x 70 valid pixels: an even count
    metrics = run_metric(build_task("normal"), batches)
    assert metrics["angle_mean"] == pytest.approx(angles.mean(), abs=1e-9)
    assert metrics["angle_median"] == pytest.approx(np.median(angles), abs=0.005 + 1e-9)
    for key, limit in (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30.0)):
        assert metrics[key] == pytest.approx(np.mean(angles < limit) * 100, abs=1e-9)


def test_taskonomy_normal_cosine_similarity():
    task = build_task("normal", style="taskonomy")
    assert task.higher_is_better == {"cosine_similarity": True}
    pred = vectors_at_angles([0, 60, 90])
    truth = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1).repeat(1, 1, 1, 3)
    metrics = run_metric(task, [(pred, truth)])
    assert metrics["cosine_similarity"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-6)


# --- depth -----------------------------------------------------------------------------------

# Truth 1, 2, 4 (and NaN: invalid). Prediction 1.1, 1.5, -1.
# Ratios max(p/g, g/p): 1.1, 4/3, and for -1: max(-0.25, -4) = -0.25 (negative: "within" every delta
# in the reference); clamped to 1e-6 it becomes 4 / 1e-6 = 4e6 (outside every delta).
# Thresholds: 1.25, 1.5625, 1.953125.
DEPTH_TRUTH = column(1.0, 2.0, 4.0, NAN)
DEPTH_PRED = column(1.1, 1.5, -1.0, 3.0)


def test_depth_metrics_by_hand_standard():
    metrics = run_metric(build_task("depth_zbuffer"), [(DEPTH_PRED, DEPTH_TRUTH)])
    assert set(metrics) == {"abs_err", "rel_err", "delta_1_25", "delta_1_25_2", "delta_1_25_3"}
    clamped_error = 4.0 - 1e-6  # |1e-6 - 4|
    assert metrics["abs_err"] == pytest.approx((0.1 + 0.5 + clamped_error) / 3, abs=1e-6)
    assert metrics["rel_err"] == pytest.approx((0.1 / 1 + 0.5 / 2 + clamped_error / 4) / 3, abs=1e-6)
    assert metrics["delta_1_25"] == pytest.approx(100 * 1 / 3)  # 1.1
    assert metrics["delta_1_25_2"] == pytest.approx(100 * 2 / 3)  # 1.1, 1.333
    assert metrics["delta_1_25_3"] == pytest.approx(100 * 2 / 3)


def test_quirk_depth_unclamped_counts_a_negative_prediction_within_delta():
    metrics = run_metric(build_task("depth_zbuffer", quirks=MetricQuirks(depth_unclamped=True)),
                         [(DEPTH_PRED, DEPTH_TRUTH)])
    assert metrics["abs_err"] == pytest.approx((0.1 + 0.5 + 5.0) / 3, abs=1e-6)  # |-1 - 4| = 5
    assert metrics["rel_err"] == pytest.approx((0.1 + 0.25 + 1.25) / 3, abs=1e-6)
    assert metrics["delta_1_25"] == pytest.approx(100 * 2 / 3)  # 1.1 and the negative one
    assert metrics["delta_1_25_2"] == pytest.approx(100.0)
    assert metrics["delta_1_25_3"] == pytest.approx(100.0)


def test_quirk_batch_weighted_depth_errors():
    # Batch A: one image, one valid pixel, error 1 (truth 2: rel 0.5). Batch B: two images, four
    # valid pixels, no error.
    batch_a = (column(1.0, 7.0), column(2.0, NAN))
    batch_b = (torch.full((2, 1, 1, 2), 3.0), torch.full((2, 1, 1, 2), 3.0))
    pooled = run_metric(build_task("depth_zbuffer"), [batch_a, batch_b])
    assert pooled["abs_err"] == pytest.approx(1 / 5)  # one unit of error over 5 pixels
    assert pooled["rel_err"] == pytest.approx(0.5 / 5)
    quirk = build_task("depth_zbuffer", quirks=MetricQuirks(batch_weighted_means=True))
    weighted = run_metric(quirk, [batch_a, batch_b])
    assert weighted["abs_err"] == pytest.approx((1.0 * 1 + 0.0 * 2) / 3)  # per-batch means, weights 1 and 2
    assert weighted["rel_err"] == pytest.approx((0.5 * 1 + 0.0 * 2) / 3)
    assert weighted["delta_1_25"] == pytest.approx(pooled["delta_1_25"])  # delta stays pooled


def test_depth_prediction_is_upsampled_nearest():
    metrics = run_metric(build_task("depth_zbuffer"), [(column(1.0, 2.0), column(1.0, 2.0, 2.0, 2.0))])
    # Upsampled 1, 1, 2, 2 against 1, 2, 2, 2: one error of 1 over 4 pixels.
    assert metrics["abs_err"] == pytest.approx(1 / 4)


def test_taskonomy_depth_abs_err_only_and_zero_truth_is_valid():
    task = build_task("depth_zbuffer", style="taskonomy")
    assert task.higher_is_better == {"abs_err": False}
    metrics = run_metric(task, [(column(0.5, 0.25, 9.0), column(0.0, 0.5, NAN))])
    assert metrics == {"abs_err": pytest.approx((0.5 + 0.25) / 2)}


@pytest.mark.parametrize("name, key", [("keypoints2d", "key_err"), ("edge_texture", "edge_err")])
def test_l1_task_metric_by_hand(name, key):
    task = build_task(name)
    assert task.higher_is_better == {key: False} and task.primary_metric == key
    batches = [(column(0.0, 1.0), column(0.5, NAN, 1.0, 3.0)), (column(-1.0), column(1.0, 1.0))]
    # Batch 1 upsampled 0, 0, 1, 1: errors 0.5, (NaN), 0, 2. Batch 2: -1, -1: errors 2, 2.
    assert run_metric(task, batches) == {key: pytest.approx((0.5 + 0 + 2 + 2 + 2) / 5)}


# --- shared behaviour ------------------------------------------------------------------------

ALL_TASKS = [
    ("segment_semantic", {"num_classes": 4}),
    ("segment_semantic", {"num_classes": 4, "style": "taskonomy", "class_weights": torch.tensor([1.0, 2.0, 0.5, 1.0])}),
    ("normal", {}),
    ("normal", {"style": "taskonomy"}),
    ("depth_zbuffer", {"quirks": MetricQuirks.paper()}),
    ("depth_zbuffer", {}),
    ("depth_zbuffer", {"style": "taskonomy"}),
    ("keypoints2d", {}),
    ("edge_texture", {}),
]


def random_batch(task, generator, batch=2):
    pred = torch.randn(batch, task.out_channels, 3, 4, generator=generator)
    if task.name == "segment_semantic":
        target = torch.randint(0, task.out_channels, (batch, 6, 8), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.2] = 255
    else:
        channels = 3 if task.name == "normal" else 1
        target = torch.rand(batch, channels, 6, 8, generator=generator) + 0.1
        target[:, :, 0] = NAN
    return pred, target


@pytest.mark.parametrize("name, options", ALL_TASKS)
def test_keys_directions_and_primary_metric(name, options):
    task = build_task(name, **options)
    generator = torch.Generator().manual_seed(3)
    metrics = run_metric(task, [random_batch(task, generator)])
    assert set(metrics) == set(task.higher_is_better)
    assert task.primary_metric in task.higher_is_better
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())


@pytest.mark.parametrize("name, options", ALL_TASKS)
def test_merging_two_meters_equals_one_meter_over_everything(name, options):
    # What reduce() does across processes: the sums add up, so split evaluation gives the same numbers.
    task = build_task(name, **options)
    generator = torch.Generator().manual_seed(4)
    batches = [random_batch(task, generator, batch=b) for b in (1, 2, 3)]
    whole = run_metric(task, batches)
    first, second = task.new_metric(), task.new_metric()
    first.update(*batches[0])
    for batch in batches[1:]:
        second.update(*batch)
    first.merge(second)
    assert first.compute() == pytest.approx(whole, abs=1e-12)


@pytest.mark.parametrize("name, options", ALL_TASKS)
def test_empty_meter_reports_nan(name, options):
    task = build_task(name, **options)
    metrics = task.new_metric().compute()
    assert set(metrics) == set(task.higher_is_better)
    assert all(math.isnan(value) for value in metrics.values())


@pytest.mark.parametrize("name, options", ALL_TASKS)
def test_update_never_reads_a_value_back_to_the_host(name, options, monkeypatch):
    task = build_task(name, **options)
    batch = random_batch(task, torch.Generator().manual_seed(5))
    meter = task.new_metric()

    def host_sync(*_args, **_kwargs):
        raise AssertionError("update() read a tensor back to the host")

    for method in ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, method, host_sync)
    meter.update(*batch)
    monkeypatch.undo()
    assert set(meter.compute()) == set(task.higher_is_better)


def _reduce_worker(rank: int, init_file: str, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        task = build_task("depth_zbuffer")
        meter = task.new_metric()
        if rank == 0:  # rank 1 sees no batch at all: its sums must still take part
            meter.update(column(1.0, 3.0), column(2.0, 3.0))
        meter.reduce()
        results[rank] = meter.compute()["abs_err"]
    finally:
        torch.distributed.destroy_process_group()


def test_reduce_sums_across_processes(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_reduce_worker, args=(str(tmp_path / "store"), results), nprocs=2, join=True)
        assert dict(results) == {0: pytest.approx(0.5), 1: pytest.approx(0.5)}  # (1 + 0) / 2 on both ranks
