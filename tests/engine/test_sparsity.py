"""The soft threshold, its gradients, threshold sharing and the stop rule (REFERENCE.md 1-2)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from adapmtl_cli.engine.sparsifier import Sparsifier, effective_state_dict, plain_state_dict
from adapmtl_cli.engine.controllers import FreezeController


def logit(p: float) -> float:
    return math.log(p / (1 - p))


class TwoComponentNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1, bias=False))
        self.heads = nn.ModuleDict({"a": nn.Conv2d(2, 1, 1), "b": nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 1, 1))})

    def components(self):
        return {"backbone": self.backbone, "head.a": self.heads["a"], "head.b": self.heads["b"]}

    def forward(self, x):
        f = self.backbone(x)
        return {k: h(f) for k, h in self.heads.items()}


def single_conv_sparsifier(weights, threshold):
    model = nn.Sequential(nn.Conv2d(1, len(weights), 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(weights).view(-1, 1, 1, 1))
    sparsifier = Sparsifier(model, {"backbone": model}, init=logit(threshold))
    model.sparsifier = sparsifier  # registers the thresholds as the model's parameters
    return model, sparsifier


def test_soft_threshold_forward_is_soft_shrink_by_sigmoid_s():
    # t = sigmoid(s) ~ 0.1: survivors shrink by t, |W| <= t become exactly 0 - a weight exactly
    # at t included. The rule's t: sigmoid of the float32 s in float64, rounded to float32.
    s32 = float(np.float32(logit(0.1)))
    t = float(np.float32(1.0 / (1.0 + math.exp(-s32))))
    model, _ = single_conv_sparsifier([0.5, -0.2, 0.05, -0.01, 0.0, t], threshold=0.1)
    expected = torch.tensor([0.4, -0.1, 0.0, 0.0, 0.0, 0.0])
    assert torch.allclose(model[0].weight.flatten(), expected, atol=1e-7)
    assert (model[0].weight.flatten()[2:] == 0).all()


def test_soft_threshold_gradients_match_hand_values():
    model, sparsifier = single_conv_sparsifier([0.5, -0.2, 0.05, -0.01, 0.0], threshold=0.1)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (model[0].weight.flatten() * upstream).sum().backward()
    raw = model[0].parametrizations.weight.original
    # dW_eff/dW = 1 on survivors (|W| > t), 0 elsewhere.
    assert torch.allclose(raw.grad.flatten(), torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0]))
    # dW_eff/ds = -sign(W) * sigmoid'(s) on survivors: (-1*1 + 1*2) * 0.1 * 0.9 = 0.09.
    assert sparsifier.thresholds[0].grad.item() == pytest.approx(0.09, rel=1e-5)


def test_component_granularity_stores_one_threshold_per_component():
    model = TwoComponentNet()
    model.sparsifier = Sparsifier(model, model.components(), init=-5.0)
    assert model.sparsifier.threshold_names == ["backbone", "head.a", "head.b"]
    threshold_keys = [k for k in model.state_dict() if "threshold" in k]
    assert threshold_keys == ["sparsifier.thresholds.0", "sparsifier.thresholds.1", "sparsifier.thresholds.2"]
    # The parameters are shared, not copied: every conv of head.b uses the same tensor.
    assert sum(1 for _ in model.parameters()) == len(list(plain_state_dict_params(model))) + 3
    with torch.no_grad():
        model.sparsifier.thresholds[2].fill_(10.0)  # sigmoid(10) ~ 1: head.b is all zeros
    assert (model.heads["b"][0].weight == 0).all() and (model.heads["b"][1].weight == 0).all()
    assert (model.heads["a"].weight != 0).any()


def plain_state_dict_params(model):
    return [p for n, p in model.named_parameters() if "sparsifier" not in n]


@pytest.mark.parametrize("granularity,count", [("layer", 5), ("global", 1), ("component", 3)])
def test_granularities(granularity, count):
    model = TwoComponentNet()
    model.sparsifier = Sparsifier(model, model.components(), granularity=granularity, init=-5.0)
    assert len(model.sparsifier.thresholds) == count
    if granularity == "layer":
        assert "heads.b.1" in model.sparsifier.threshold_names


def test_stats_count_zeros_per_layer_component_and_overall():
    model = TwoComponentNet()
    model.sparsifier = Sparsifier(model, model.components(), init=logit(0.3))
    values = {
        "backbone.0": [0.1, 0.5],                 # 1 zero of 2
        "backbone.2": [0.2, 0.31, -0.29, 0.9],    # 2 zeros of 4
        "heads.a": [0.1, 0.1],                    # 2 of 2
        "heads.b.0": [1.0, 1.0, 1.0, 1.0],        # 0 of 4
        "heads.b.1": [-0.3, 0.7],                 # 1 of 2 (|W| = t is zero)
    }
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in values.items():
            modules[name].parametrizations.weight.original.copy_(torch.tensor(w).view_as(modules[name].parametrizations.weight.original))
    stats = model.sparsifier.stats()
    assert stats.layers["backbone.2.weight"] == pytest.approx(0.5)
    assert stats.components == pytest.approx({"backbone": 3 / 6, "head.a": 1.0, "head.b": 1 / 6})
    assert stats.overall == pytest.approx(6 / 14)
    assert stats.thresholds["head.a"] == pytest.approx(0.3)
    assert stats.component_params == {"backbone": 6, "head.a": 2, "head.b": 6}


def test_effective_and_plain_state_dicts_use_plain_keys():
    model, _ = single_conv_sparsifier([0.5, -0.05], threshold=0.1)
    plain = plain_state_dict(model)
    effective = effective_state_dict(model)
    assert set(plain) == {"0.weight"} == set(effective)  # thresholds are stored apart
    assert plain["0.weight"].flatten().tolist() == pytest.approx([0.5, -0.05])
    assert effective["0.weight"].flatten().tolist() == pytest.approx([0.4, 0.0])


def _adam_setup(weight_decay=0.1):
    model, sparsifier = single_conv_sparsifier([0.5, -0.2], threshold=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=weight_decay)
    return model, sparsifier, optimizer


def _step(model, optimizer, controller):
    optimizer.zero_grad()
    model[0].weight.sum().backward()
    controller.after_backward()
    optimizer.step()


def test_stop_rule_freezes_thresholds_without_update_or_decay_and_keeps_moments():
    model, sparsifier, optimizer = _adam_setup()
    controller = FreezeController(sparsifier, target=0.9, counts_itself=False)  # the trainer's way: observe
    s = sparsifier.thresholds[0]
    controller.observe(0.5)  # below target: thresholds move
    _step(model, optimizer, controller)
    moved = s.item()
    assert moved != pytest.approx(logit(0.1))
    moments = {k: v.clone() for k, v in optimizer.state[s].items()}

    controller.observe(0.9)  # at target: frozen; weight decay alone would also have moved s
    assert controller.frozen
    raw_before = model[0].parametrizations.weight.original.detach().clone()
    _step(model, optimizer, controller)
    assert s.item() == moved
    for key, value in moments.items():
        assert torch.equal(optimizer.state[s][key], value), key
    # The weights keep training.
    assert not torch.equal(model[0].parametrizations.weight.original, raw_before)

    controller.observe(0.85)  # fell below the target again: the thresholds move again
    _step(model, optimizer, controller)
    assert s.item() != moved


def test_stop_rule_can_freeze_only_named_thresholds():
    model = TwoComponentNet()
    model.sparsifier = Sparsifier(model, model.components(), init=-3.0)
    controller = FreezeController(model.sparsifier, target=0.5, freeze_only=["head.a"], counts_itself=False)
    out = model(torch.randn(1, 1, 2, 2))
    sum(v.sum() for v in out.values()).backward()
    controller.observe(0.6)
    controller.after_backward()
    grads = [p.grad for p in model.sparsifier.thresholds]
    assert grads[1] is None and grads[0] is not None and grads[2] is not None


def test_the_stop_rule_counts_for_a_loop_of_ones_own_on_its_check_steps(monkeypatch):
    """A user's loop calls only after_backward/after_step: the controller counts the sparsity
    itself on the steps wants_check picks; the trainer's controller (counts_itself=False) never
    does, so a resumed run counts exactly where an uninterrupted one does."""
    model, sparsifier, optimizer = _adam_setup()
    counted = []
    monkeypatch.setattr(type(sparsifier), "overall_sparsity", lambda self: counted.append(1) or torch.tensor(0.95))
    controller = FreezeController(sparsifier, target=0.9, check_every=2)
    s = sparsifier.thresholds[0]
    for step in range(4):
        before = s.item()
        _step(model, optimizer, controller)
        controller.after_step(step + 1)
        assert s.item() == before  # 0.95 >= 0.9 from the first count on: frozen
    assert len(counted) == 2  # steps 0 and 2
    trainers = FreezeController(sparsifier, target=0.9, check_every=2, counts_itself=False)
    for step in range(4):
        trainers.after_backward()
        trainers.after_step(step + 1)
    assert len(counted) == 2


def test_dense_models_are_counted_without_thresholds():
    model = TwoComponentNet()
    with torch.no_grad():
        model.heads["a"].weight.zero_()
    model.sparsifier = Sparsifier(model, model.components(), enabled=False)
    stats = model.sparsifier.stats()
    assert len(model.sparsifier.thresholds) == 0
    assert stats.components["head.a"] == 1.0
    assert stats.overall == pytest.approx(2 / 14)


def test_fused_soft_shrink_matches_the_formula_through_autograd():
    """A second implementation: autograd through sign(W) * relu(|W| - sigmoid(s))."""
    from adapmtl_cli.engine.shrink import soft_shrink

    torch.manual_seed(0)
    weight = torch.randn(64, 32, 3, 3)
    upstream = torch.randn_like(weight)
    s = torch.tensor(-0.5)
    results = []
    for fused in (True, False):
        w = weight.clone().requires_grad_(True)
        s_ = s.clone().requires_grad_(True)
        out = soft_shrink(w, s_) if fused else torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(s_))
        (out * upstream).sum().backward()
        results.append((out.detach(), w.grad, s_.grad))
    (out_a, gw_a, gs_a), (out_b, gw_b, gs_b) = results
    assert torch.allclose(out_a, out_b, atol=1e-7)
    assert torch.equal(gw_a, gw_b)
    assert gs_a.item() == pytest.approx(gs_b.item(), rel=1e-4)


# Output channels of the second conv: "small" (288 weights) takes the multi-tensor path like the
# first conv (216); "wide" (73,728) is over BUFFER_MIN_NUMEL and takes the persistent-buffer path in
# one chunk; "huge" (589,824) spans two chunks of CHUNK_NUMEL.
WIDTHS = {"small": 4, "wide": 1024, "huge": 8192}


class _TwoConvs(nn.Module):
    def __init__(self, wide: str):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, WIDTHS[wide], 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _two_convs(channels_last: bool = False, wide: str = "small", shared: bool = False):
    torch.manual_seed(0)
    model = _TwoConvs(wide)
    components = {"backbone": model.a, "head": model.b}
    model.sparsifier = Sparsifier(model, components, init=-3.0, granularity="global" if shared else "component")
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _formula_grads(inputs, wide: str, shared: bool):
    """A second implementation: autograd through sign(W) * relu(|W| - sigmoid(s)), no buffers."""
    model = _two_convs(wide=wide, shared=shared)
    weights = [model.a.parametrizations.weight.original, model.b.parametrizations.weight.original]
    s = list(model.sparsifier.thresholds) * (2 if shared else 1)
    effective = [torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(t)) for w, t in zip(weights, s)]
    total = 0
    for x in inputs:
        hidden = torch.relu(nn.functional.conv2d(x, effective[0], model.a.bias))
        total = total + nn.functional.conv2d(hidden, effective[1], model.b.bias).square().sum()
    total.backward()
    return [p.grad for p in model.parameters()]


def test_layer_sizes_reach_every_path():
    from adapmtl_cli.engine.shrink import BUFFER_MIN_NUMEL, CHUNK_NUMEL

    assert _two_convs(wide="small").b.weight.numel() < BUFFER_MIN_NUMEL
    assert BUFFER_MIN_NUMEL <= _two_convs(wide="wide").b.weight.numel() <= CHUNK_NUMEL
    assert _two_convs(wide="huge").b.weight.numel() > CHUNK_NUMEL


@pytest.mark.parametrize("shared", [False, True], ids=["a threshold each", "one shared threshold"])
@pytest.mark.parametrize("wide", ["small", "wide", "huge"])
@pytest.mark.parametrize("pattern", ["backward after each forward", "two forwards then one backward", "channels_last"])
def test_reused_soft_shrink_buffers_give_the_formula_gradients(pattern, wide, shared):
    """W_eff lives in a per-layer buffer on the CPU; it must never be overwritten while a pending
    graph still needs it (two forwards before one backward), whatever the memory format, and a
    group mixing buffered and multi-tensor layers must add up their threshold gradients."""
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, 3, 10, 10, generator=generator) for _ in range(2)]
    expected = _formula_grads(inputs, wide, shared)
    model = _two_convs(channels_last=pattern == "channels_last", wide=wide, shared=shared)
    for _ in range(2):  # the second round runs on buffers lent before
        model.zero_grad()
        if pattern == "two forwards then one backward":
            sum(model(x).square().sum() for x in inputs).backward()
        else:
            for x in inputs:
                model(x.contiguous(memory_format=torch.channels_last) if pattern == "channels_last" else x).square().sum().backward()
    for got, want in zip(model.parameters(), expected):
        assert torch.allclose(got.grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("granularity", ["component", "global", "layer"])
def test_one_autograd_node_per_threshold(granularity):
    """Inside the model's forward every threshold's convs share one backward node (a Python
    autograd node per conv was most of the soft threshold's cost on small models)."""
    model = TwoComponentNet()
    model.sparsifier = Sparsifier(model, {"backbone": model.backbone, "head.b": model.heads["b"]}, granularity=granularity)
    out = model(torch.randn(1, 1, 2, 2))
    seen, stack, groups = set(), [out["b"].grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        groups += type(node).__name__ == "SoftShrinkGroupBackward"
        stack.extend(next_node for next_node, _ in node.next_functions)
    expected = {"component": 2, "global": 1, "layer": 4}[granularity]  # layer: 2 backbone + 2 head.b convs
    assert groups == expected
    assert model.sparsifier._prepared is None  # nothing held after the forward


def test_conv_used_outside_the_model_forward_shrinks_its_own_weight():
    model = TwoComponentNet()
    model.sparsifier = Sparsifier(model, model.components(), init=logit(0.3))
    x = torch.randn(1, 1, 3, 3)
    inside = model(x)["a"]
    outside = model.heads["a"](model.backbone(x))  # the pre-hook does not run here
    assert torch.equal(inside, outside)
    outside.sum().backward()
    raw = model.heads["a"].parametrizations.weight.original
    features = model.backbone(x).detach()
    # d(sum of conv output)/dW_eff[o, i] = sum over pixels of the input channel i; masked by |W| > t.
    expected = features.sum(dim=(0, 2, 3)).view(1, -1, 1, 1) * (raw.detach().abs() > 0.3)
    assert torch.allclose(raw.grad, expected, atol=1e-6)


def test_retain_graph_and_held_effective_weights_stay_correct():
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    once = _two_convs()
    once(x).square().sum().backward()
    twice = _two_convs()
    loss = twice(x).square().sum()
    loss.backward(retain_graph=True)
    loss.backward()
    for a, b in zip(twice.parameters(), once.parameters()):
        assert torch.allclose(a.grad, 2 * b.grad, rtol=1e-6, atol=1e-7)
    held = twice.a.weight  # a W_eff someone keeps: later forwards and backwards must not touch it
    snapshot = held.clone()
    twice(x).sum().backward()
    twice(x).sum().backward()
    assert torch.equal(held, snapshot)


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "a NaN weight"])
@pytest.mark.parametrize("wide", ["small", "wide", "huge"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_zero_count_equals_numpy(channels_last, wide, nan):
    """The CPU count of every layer size (big layers chunk by chunk, as a dot of signs, "huge"
    over two chunks) must equal a plain numpy count: weights exactly at +-t are zeros, weights
    just above t are not, and a NaN weight is no zero, as |NaN| <= t is false."""
    import numpy as np

    model = _two_convs(wide=wide, channels_last=channels_last)
    raw = model.b.parametrizations.weight.original
    threshold = model.sparsifier.threshold_values()[1].item()
    with torch.no_grad():
        edge = torch.tensor(threshold, dtype=torch.float32)
        above = torch.nextafter(edge, torch.tensor(1.0))
        raw[0, 0, 0, :3] = torch.stack([edge, -edge, above])
        raw[-1, -1, -1, -1] = float("nan") if nan else -above  # in the last chunk
    stats = model.sparsifier.stats()
    expected = np.count_nonzero(np.abs(raw.detach().numpy()) <= np.float32(threshold)) / raw.numel()
    assert 0.0 < expected < 1.0
    assert stats.layers["b.weight"] == pytest.approx(expected, abs=0.5 / raw.numel())


@pytest.mark.parametrize("wide", ["small", "huge"])
def test_device_path_gives_the_formula_gradients(monkeypatch, wide):
    """The path GPUs take (threshold kept a tensor, every layer multi-tensor), run on the CPU."""
    import adapmtl_cli.engine.shrink as shrink

    monkeypatch.setattr(shrink, "on_host", lambda weight: False)
    inputs = [torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(3))]
    expected = _formula_grads(inputs, wide, shared=True)
    model = _two_convs(wide=wide, shared=True)
    model(inputs[0]).square().sum().backward()
    for got, want in zip(model.parameters(), expected):
        assert torch.allclose(got.grad, want, rtol=1e-5, atol=1e-6)
