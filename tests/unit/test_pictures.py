"""TensorBoard pictures: each task renders its prediction and ground truth the documented way."""

import torch

from adapmtl_cli.report.pictures import picture_grid
from adapmtl_cli.tasks import build_task


def test_normals_render_as_half_plus_half_n_and_invalid_black():
    task = build_task("normal")
    target = torch.zeros(3, 2, 2)
    target[2] = 1.0  # every normal (0, 0, 1)
    target[:, 0, 0] = float("nan")
    pred = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 1, 1).clone()  # (1, 0, 0) everywhere
    pred_rgb, gt_rgb = task.render(pred, target)
    assert pred_rgb.shape == gt_rgb.shape == (3, 2, 2)
    assert torch.allclose(pred_rgb[:, 1, 1], torch.tensor([1.0, 0.5, 0.5]))
    assert torch.allclose(gt_rgb[:, 1, 1], torch.tensor([0.5, 0.5, 1.0]))
    assert torch.equal(gt_rgb[:, 0, 0], torch.zeros(3))


def test_segmentation_renders_classes_in_distinct_colours_and_ignore_black():
    task = build_task("segment_semantic", num_classes=4)
    target = torch.tensor([[0, 1], [2, 255]])
    logits = torch.zeros(4, 2, 2)
    logits[3] = 1.0  # predicts class 3 everywhere
    pred_rgb, gt_rgb = task.render(logits, target)
    colours = {tuple(gt_rgb[:, i, j].tolist()) for i, j in [(0, 0), (0, 1), (1, 0)]}
    assert len(colours) == 3  # three classes, three colours
    assert torch.equal(gt_rgb[:, 1, 1], torch.zeros(3))
    assert tuple(pred_rgb[:, 0, 0].tolist()) not in colours  # class 3 has its own colour


def test_depth_renders_grey_scaled_by_the_target_range():
    task = build_task("depth_zbuffer")
    target = torch.tensor([[[1.0, 3.0], [2.0, float("nan")]]])
    pred = torch.full((1, 1, 1), 2.0)
    pred_rgb, gt_rgb = task.render(pred, target)
    assert torch.allclose(gt_rgb[0], torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    assert torch.allclose(pred_rgb, torch.full((3, 2, 2), 0.5))


def test_grid_has_a_row_per_sample_and_two_tiles_per_task():
    tasks = {"normal": build_task("normal"), "depth_zbuffer": build_task("depth_zbuffer")}
    images = torch.randn(2, 3, 8, 8)
    targets = {"normal": torch.nn.functional.normalize(torch.randn(2, 3, 8, 8), dim=1), "depth_zbuffer": torch.rand(2, 1, 8, 8) + 1}
    outputs = {"normal": torch.randn(2, 3, 2, 2), "depth_zbuffer": torch.randn(2, 1, 2, 2)}
    grid = picture_grid(images, targets, outputs, tasks, gap=2)
    assert grid.shape == (3, 2 * (8 + 2), 5 * (8 + 2))  # input + 2 tasks x (truth, prediction)
    assert 0.0 <= grid.min() and grid.max() <= 1.0
