"""Task losses against values worked by hand (REFERENCE.md 6): nearest downsampling of the ground
truth, ignore 255 / NaN, class weights, and a 0 that keeps the graph when nothing is valid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks import TASK_KINDS, MetricQuirks, Task, build_task

NAN = float("nan")


def seg_pred(*pixel_logits) -> torch.Tensor:
    """Logits [1, C, 1, n] from one list of C logits per pixel."""
    logits = torch.tensor(pixel_logits, dtype=torch.float32).T
    return logits.reshape(1, logits.shape[0], 1, logits.shape[1]).requires_grad_()


# Cross entropy of a 2-class pixel with logits [a, b] and label 0: log(1 + e^(b - a)).
CE_PIXEL0 = math.log(1 + math.exp(-2))  # logits [2, 0], label 0 -> 0.126928
CE_PIXEL1 = math.log(1 + math.exp(-1))  # logits [0, 1], label 1 -> 0.313262


# --- registry --------------------------------------------------------------------------------


def test_registry_names_and_channels():
    assert TASK_KINDS == ("segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
    assert build_task("segment_semantic", num_classes=40).out_channels == 40
    assert build_task("normal").out_channels == 3
    for name in ("depth_zbuffer", "keypoints2d", "edge_texture"):
        task = build_task(name, quirks=MetricQuirks.paper())
        assert isinstance(task, Task) and task.name == name and task.out_channels == 1


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        build_task("segmentation")
    assert "segment_semantic" in str(error.value) and "edge_texture" in str(error.value)


@pytest.mark.parametrize("name, options, fragment", [
    ("segment_semantic", {}, "num_classes"),
    ("segment_semantic", {"num_classes": 0}, "num_classes"),
    ("segment_semantic", {"num_classes": 3, "class_weights": torch.ones(4)}, "class weights"),
    ("normal", {"style": "kitti"}, "nyuv2"),
    ("depth_zbuffer", {"num_classes": 3}, "num_classes"),
    ("keypoints2d", {"style": "taskonomy"}, "style"),
    ("edge_texture", {"quirks": None}, "MetricQuirks"),
])
def test_bad_options_are_config_errors(name, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_task(name, **options)


# --- segmentation ----------------------------------------------------------------------------


def test_segmentation_nearest_downsampling_and_ignore():
    task = build_task("segment_semantic", num_classes=2)
    # A 2x4 label downsampled to the 1x2 prediction keeps row 0 and columns 0 and 2: labels 0 and 1.
    # The 255 and the out-of-range 9s are dropped by the downsampling itself.
    target = torch.tensor([[[0, 255, 1, 255], [9, 9, 9, 9]]])
    loss = task.loss(seg_pred([2.0, 0.0], [0.0, 1.0]), target)
    assert loss.item() == pytest.approx((CE_PIXEL0 + CE_PIXEL1) / 2, abs=1e-6)  # 0.220095


def test_segmentation_ignores_255_and_labels_outside_the_classes():
    task = build_task("segment_semantic", num_classes=2)
    # Three pixels: label 0, 255 (ignored), 7 (not a class: ignored). Only pixel 0 counts.
    pred = seg_pred([2.0, 0.0], [0.0, 1.0], [5.0, -5.0])
    loss = task.loss(pred, torch.tensor([[[0, 255, 7]]]))
    assert loss.item() == pytest.approx(CE_PIXEL0, abs=1e-6)


def test_segmentation_class_weights_are_a_weighted_mean():
    task = build_task("segment_semantic", num_classes=2, class_weights=torch.tensor([1.0, 3.0]), style="taskonomy")
    loss = task.loss(seg_pred([2.0, 0.0], [0.0, 1.0]), torch.tensor([[[0, 1]]]))
    # (1 * CE0 + 3 * CE1) / (1 + 3), as PyTorch's weighted mean divides by the summed weights.
    assert loss.item() == pytest.approx((CE_PIXEL0 + 3 * CE_PIXEL1) / 4, abs=1e-6)  # 0.266679


def test_segmentation_without_a_label_is_zero_with_a_graph():
    task = build_task("segment_semantic", num_classes=2)
    pred = seg_pred([2.0, 0.0], [0.0, 1.0])
    loss = task.loss(pred, torch.tensor([[[255, 255]]]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


# --- normal ----------------------------------------------------------------------------------


def test_normal_cosine_loss_over_valid_pixels():
    task = build_task("normal")
    pred = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]).T.reshape(1, 3, 1, 2).requires_grad_()
    # Target 1x4 -> columns 0 and 2. Pixel 0: gt (1, 1, 0), cos = 1/sqrt(2). Column 1 is NaN but
    # dropped by the downsampling; column 2 is NaN: pixel 1 is invalid.
    target = torch.tensor([[1.0, NAN, NAN, 0.0], [1.0, NAN, NAN, 0.0], [0.0, NAN, NAN, 1.0]]).reshape(1, 3, 1, 4)
    loss = task.loss(pred, target)
    assert loss.item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)  # 0.292893
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.equal(pred.grad[..., 1], torch.zeros(1, 3, 1))


def test_normal_loss_only_sees_directions_raw_byte_ground_truth():
    # QUIRK (NYUv2 paper mode): gt is the raw 0..254 byte vector; only its direction matters.
    task = build_task("normal")
    pred = torch.tensor([3.0, 4.0, 0.0]).reshape(1, 3, 1, 1)
    unit = task.loss(pred, torch.tensor([0.0, 1.0, 0.0]).reshape(1, 3, 1, 1))
    raw = task.loss(pred, torch.tensor([0.0, 254.0, 0.0]).reshape(1, 3, 1, 1))
    assert unit.item() == pytest.approx(1 - 0.8, abs=1e-6)  # cos = 4 / 5
    assert raw.item() == pytest.approx(unit.item(), abs=1e-6)


def test_normal_without_valid_pixel_is_zero_with_a_graph():
    task = build_task("normal")
    pred = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss = task.loss(pred, torch.full((2, 3, 4, 4), NAN))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


# --- L1 tasks --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["depth_zbuffer", "keypoints2d", "edge_texture"])
def test_l1_loss_by_hand(name):
    task = build_task(name)
    pred = torch.tensor([0.0, 0.0, 5.0]).reshape(1, 1, 1, 3).requires_grad_()
    # Target 1x6 -> columns 0, 2, 4: values 1, 3 and NaN (invalid). Columns 1, 3, 5 (100) are skipped.
    target = torch.tensor([1.0, 100.0, 3.0, 100.0, NAN, 100.0]).reshape(1, 1, 1, 6)
    loss = task.loss(pred, target)
    assert loss.item() == pytest.approx((1 + 3) / 2)  # |0 - 1| and |0 - 3| over 2 valid pixels
    loss.backward()
    assert pred.grad.flatten().tolist() == pytest.approx([-0.5, -0.5, 0.0])


@pytest.mark.parametrize("name", ["depth_zbuffer", "keypoints2d", "edge_texture"])
def test_l1_without_valid_pixel_is_zero_with_a_graph(name):
    pred = torch.randn(2, 1, 3, 3, requires_grad=True)
    loss = build_task(name).loss(pred, torch.full((2, 1, 6, 6), NAN))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """PyTorch's legacy "nearest": output i reads input floor(i * in / out)."""
    return np.floor(np.arange(size_out) * (size_in / size_out)).astype(int)


def test_l1_matches_a_numpy_implementation_on_odd_sizes():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 1, 4, 5, generator=generator)
    target = torch.randn(3, 1, 11, 13, generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.3] = NAN
    rows, cols = nearest_indices(11, 4), nearest_indices(13, 5)
    small = target.numpy()[:, :, rows][:, :, :, cols]
    valid = np.isfinite(small)
    expected = np.abs(pred.numpy() - np.where(valid, small, 0))[valid].mean()
    assert build_task("depth_zbuffer").loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
