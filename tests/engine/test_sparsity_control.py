"""The schedule controller: the plan's numbers by hand, and the thresholds it sets hit the plan."""

import pytest
import torch
from torch import nn

from adapmtl_cli.engine.sparsifier import Sparsifier
from adapmtl_cli.engine.controllers import ScheduleController, planned_sparsity


def test_cubic_plan_by_hand():
    # 100 steps, plan from step 10 to 70, target 0.9: halfway (step 40) 0.9 - 0.9 * 0.5**3 = 0.7875.
    plan = [planned_sparsity(s, 100, 0.9, 0.1, 0.7) for s in (0, 10, 40, 70, 100)]
    assert plan == pytest.approx([0.0, 0.0, 0.7875, 0.9, 0.9])
    assert planned_sparsity(20, 100, 0.5, 0.1, 0.7) == pytest.approx(0.5 - 0.5 * (5 / 6) ** 3)


def make_model(granularity="component"):
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3))
    model.head = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Conv2d(32, 4, 1))
    with torch.no_grad():
        model.head[0].weight.mul_(5.0)  # a different weight scale per component
    model.sparsifier = Sparsifier(model, {"backbone": model.backbone, "head": model.head}, granularity=granularity, init=-8.0)
    return model


def exact_overall(model):
    """Zeros of the effective weights the convs compute, counted independently of the sparsifier."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(int((c.weight == 0).sum()) for c in convs) / sum(c.weight.numel() for c in convs)


@pytest.mark.parametrize("granularity", ["component", "layer", "global"])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.98])
def test_controller_lands_on_the_plan(target, granularity):
    model = make_model(granularity)
    controller = ScheduleController(model.sparsifier, target, total_steps=100, start=0.1, end=0.7)
    before = torch.sigmoid(torch.stack(list(model.sparsifier.thresholds))).detach()
    initial = exact_overall(model)  # where the plan starts (sInit -8 already zeroes a few weights)
    controller.after_step(40)
    n = sum(layer.numel for layer in model.sparsifier.layers)
    assert exact_overall(model) == pytest.approx(planned_sparsity(40, 100, target, 0.1, 0.7, initial), abs=2 / n)
    controller.after_step(100)
    assert exact_overall(model) == pytest.approx(target, abs=2 / n)
    # One common factor: the ratios between thresholds (what the optimizer learns) are kept.
    after = torch.sigmoid(torch.stack(list(model.sparsifier.thresholds))).detach()
    ratios = after / before
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)


def test_controller_leaves_thresholds_alone_before_the_plan_starts():
    model = make_model()
    controller = ScheduleController(model.sparsifier, 0.9, total_steps=100, start=0.1, end=0.7)
    before = [p.item() for p in model.sparsifier.thresholds]
    controller.after_step(10)
    assert [p.item() for p in model.sparsifier.thresholds] == before


def test_sampled_quantile_on_a_big_model_is_within_a_few_hundredths_of_a_point():
    model = make_model()
    controller = ScheduleController(model.sparsifier, 0.9, total_steps=10, start=0.0, end=0.5, sample_size=2000)
    controller.after_step(6)  # not the last step: the sample decides
    assert exact_overall(model) == pytest.approx(0.9, abs=0.02)  # 2000 samples: sd of about 0.007
    controller.after_step(10)  # the last step counts (nearly) every weight
    n = sum(layer.numel for layer in model.sparsifier.layers)
    assert exact_overall(model) == pytest.approx(0.9, abs=2 / n)


def test_the_plan_starts_from_the_sparsity_already_reached():
    model = make_model()
    with torch.no_grad():
        for p in model.sparsifier.thresholds:
            p.fill_(-1.5)  # thresholds already bite before the plan starts
    before = exact_overall(model)
    assert before > 0.3
    controller = ScheduleController(model.sparsifier, 0.9, total_steps=100, start=0.1, end=0.7)
    controller.after_step(11)
    # 1/60 of the way: 0.9 + (before - 0.9) * (1 - 1/60)^3, never back to 0.
    expected = 0.9 + (before - 0.9) * (1 - 1 / 60) ** 3
    n = sum(layer.numel for layer in model.sparsifier.layers)
    assert exact_overall(model) == pytest.approx(expected, abs=2 / n)


@pytest.mark.parametrize("init", [-1000.0, -1e4, 20.0, 1e4])
@pytest.mark.parametrize("granularity", ["component", "layer"])
def test_controller_lands_from_thresholds_that_are_0_or_1_in_float32(init, granularity):
    """sigmoid(-1000) is exactly 0 in float32 and sigmoid(20) exactly 1: |W| / t is inf or every
    weight is zero. The controller must still land on the plan and leave finite thresholds."""
    model = make_model(granularity)
    with torch.no_grad():
        for param in model.sparsifier.thresholds:
            param.fill_(init)
    assert exact_overall(model) == (1.0 if init > 0 else 0.0)
    controller = ScheduleController(model.sparsifier, 0.8, total_steps=100, start=0.1, end=0.7)
    controller.after_step(100)
    n = sum(layer.numel for layer in model.sparsifier.layers)
    assert exact_overall(model) == pytest.approx(0.8, abs=2 / n)
    assert all(torch.isfinite(p).all() for p in model.sparsifier.thresholds)
