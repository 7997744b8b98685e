"""One-shot pruning criteria and masks (REFERENCE.md 10): every expected value is worked out by hand
in the comments or by a second, deliberately naive implementation inside the test."""

import math

import pytest
import torch
from torch import nn

from adapmtl_cli.engine.controllers import MaskKeeper
from adapmtl_cli.engine.pruning import (
    apply_masks,
    disparse_masks,
    iterative_schedule,
    layer_components,
    layer_weights,
    magnitude_masks,
    random_masks,
    rewind,
    snip_masks,
    snip_saliency,
)
from adapmtl_cli.engine.sparsifier import Sparsifier, plain_state_dict

T, F = True, False


def bools(*values):
    return torch.tensor(values, dtype=torch.bool)


# -- magnitude -----------------------------------------------------------------------------------


def test_magnitude_existing_zeros_stay_and_are_not_counted():
    # 4 non-zeros, ratio 0.5 removes 2 of them (1 and -2); the two zeros stay pruned.
    masks = magnitude_masks({"w": torch.tensor([0.0, 0.0, 1.0, -2.0, 3.0, -4.0])}, {"w": "backbone"}, 0.5, "global")
    assert torch.equal(masks["w"], bools(F, F, F, F, T, T))
    assert masks["w"].dtype == torch.bool


def three_layers():
    weights = {
        "a": torch.tensor([0.1, 0.5, -0.3]),
        "b": torch.tensor([[0.2, -0.05], [0.4, 0.0]]),
        "c": torch.tensor([-0.6, 0.15, 0.0, 0.35]),
    }
    components = {"a": "backbone", "b": "backbone", "c": "head.x"}
    return weights, components


def test_magnitude_global_scope():
    weights, components = three_layers()
    # Non-zeros: .1 .5 .3 | .2 .05 .4 | .6 .15 .35 -> 9; round(0.5 * 9) = round(4.5) = 5 removed:
    # .05 .1 .15 .2 .3 ; kept .35 .4 .5 .6.
    masks = magnitude_masks(weights, components, 0.5, "global")
    assert torch.equal(masks["a"], bools(F, T, F))
    assert torch.equal(masks["b"], torch.tensor([[F, F], [T, F]]))
    assert torch.equal(masks["c"], bools(T, F, F, T))


def test_magnitude_component_scope():
    weights, components = three_layers()
    # backbone (a+b): 6 non-zeros, remove 3: .05 .1 .2 -> keep .5 .3 .4
    # head.x (c): 3 non-zeros, remove round(1.5) = 2: .15 .35 -> keep .6
    masks = magnitude_masks(weights, components, 0.5, "component")
    assert torch.equal(masks["a"], bools(F, T, T))
    assert torch.equal(masks["b"], torch.tensor([[F, F], [T, F]]))
    assert torch.equal(masks["c"], bools(T, F, F, F))


def test_magnitude_layer_scope():
    weights, components = three_layers()
    # a: 3 nz -> remove 2 (.1 .3); b: 3 nz -> remove 2 (.05 .2); c: 3 nz -> remove 2 (.15 .35)
    masks = magnitude_masks(weights, components, 0.5, "layer")
    assert torch.equal(masks["a"], bools(F, T, F))
    assert torch.equal(masks["b"], torch.tensor([[F, F], [T, F]]))
    assert torch.equal(masks["c"], bools(T, F, F, F))
    # ratio 0.4: round(1.2) = 1 per layer.
    masks = magnitude_masks(weights, components, 0.4, "layer")
    assert [int((~m).sum()) for m in masks.values()] == [1, 2, 2]  # + the existing zero of b and c


def test_magnitude_ties_are_removed_in_layer_then_index_order():
    weights = {"first": torch.tensor([1.0, -1.0, 1.0]), "second": torch.tensor([-1.0, 1.0, 2.0])}
    components = {"first": "backbone", "second": "head.x"}
    # 6 non-zeros, remove 3; five tie at 1: the first three in (layer, index) order go.
    masks = magnitude_masks(weights, components, 0.5, "global")
    assert torch.equal(masks["first"], bools(F, F, F))
    assert torch.equal(masks["second"], bools(T, T, T))
    # The dict order is the layer order.
    masks = magnitude_masks({"second": weights["second"], "first": weights["first"]}, components, 0.5, "global")
    assert torch.equal(masks["second"], bools(F, F, T))
    assert torch.equal(masks["first"], bools(F, T, T))


def test_magnitude_extreme_ratios_and_bad_arguments():
    weights, components = three_layers()
    keep_all = magnitude_masks(weights, components, 0.0, "global")
    for key, weight in weights.items():
        assert torch.equal(keep_all[key], weight != 0)
    drop_all = magnitude_masks(weights, components, 1.0, "component")
    assert not any(m.any() for m in drop_all.values())
    with pytest.raises(ValueError):
        magnitude_masks(weights, components, 1.5, "global")
    with pytest.raises(ValueError):
        magnitude_masks(weights, components, 0.5, "per-head")


def naive_magnitude(weights, ratio):
    """A second implementation: Python sort of (|w|, layer position, index) over the non-zeros."""
    entries = []
    for position, (key, weight) in enumerate(weights.items()):
        for index, value in enumerate(weight.flatten().tolist()):
            if value != 0:
                entries.append((abs(value), position, index, key))
    entries.sort()
    n_remove = math.floor(ratio * len(entries) + 0.5)
    masks = {key: (weight != 0).flatten().clone() for key, weight in weights.items()}
    for _, _, index, key in entries[:n_remove]:
        masks[key][index] = False
    return {key: m.view(weights[key].shape) for key, m in masks.items()}


@pytest.mark.parametrize("ratio", [0.1, 0.37, 0.5, 0.9])
def test_magnitude_matches_naive_sort_on_random_weights_with_zeros_and_ties(ratio):
    g = torch.Generator().manual_seed(1)
    weights = {k: torch.randint(-6, 7, shape, generator=g).float() / 4 for k, shape in
               [("x", (4, 3, 3, 3)), ("y", (5, 4, 1, 1)), ("z", (7,))]}
    masks = magnitude_masks(weights, dict.fromkeys(weights, "c"), ratio, "global")
    expected = naive_magnitude(weights, ratio)
    for key in weights:
        assert torch.equal(masks[key], expected[key])


# -- tiny models ---------------------------------------------------------------------------------


class TwoHeadNet(nn.Module):
    """x -> backbone conv (2->2) -> head a conv (2->1), head b conv (2->1); 1x1, no bias: all linear."""

    def __init__(self, backbone, head_a, head_b, enabled=False):
        super().__init__()
        self.backbone = nn.Conv2d(2, 2, 1, bias=False)
        self.heads = nn.ModuleDict({"a": nn.Conv2d(2, 1, 1, bias=False), "b": nn.Conv2d(2, 1, 1, bias=False)})
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor(backbone).view(2, 2, 1, 1))
            self.heads["a"].weight.copy_(torch.tensor(head_a).view(1, 2, 1, 1))
            self.heads["b"].weight.copy_(torch.tensor(head_b).view(1, 2, 1, 1))
        self.sparsifier = Sparsifier(self, self.components(), enabled=enabled, init=-30.0)

    def components(self):
        return {"backbone": self.backbone, "head.a": self.heads["a"], "head.b": self.heads["b"]}

    def forward(self, x):
        f = self.backbone(x)
        return {k: h(f) for k, h in self.heads.items()}


class SmallNet(nn.Module):
    """A small conv net with BatchNorm and biases, to finetune and rewind."""

    def __init__(self, enabled=False):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU())
        self.heads = nn.ModuleDict({"a": nn.Conv2d(8, 2, 1), "b": nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(),
                                                                                 nn.Conv2d(4, 1, 1))})
        self.sparsifier = Sparsifier(self, self.components(), enabled=enabled, init=-12.0)

    def components(self):
        return {"backbone": self.backbone, "head.a": self.heads["a"], "head.b": self.heads["b"]}

    def forward(self, x):
        f = self.backbone(x)
        return {k: h(f) for k, h in self.heads.items()}


def small_batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 6, 6, generator=g), {"a": torch.randn(4, 2, 6, 6, generator=g), "b": torch.randn(4, 1, 6, 6, generator=g)})
            for _ in range(n)]


def mse_losses(outputs, targets):
    return {k: ((outputs[k] - targets[k]) ** 2).mean() for k in outputs}


def raw_weights(model):
    return [model.sparsifier.raw_weight(i) for i in range(len(model.sparsifier.layers))]


# -- apply and keep masks ------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [False, True])
def test_apply_masks_zeroes_the_raw_weights(enabled):
    torch.manual_seed(0)
    model = SmallNet(enabled=enabled)
    masks = magnitude_masks(layer_weights(model), layer_components(model), 0.6, "global")
    apply_masks(model, masks)
    for weight, layer in zip(raw_weights(model), model.sparsifier.layers):
        assert (weight[~masks[layer.key]] == 0).all()
        assert (weight[masks[layer.key]] != 0).all()
    # Every conv computes with zeros there too (soft shrink of 0 is 0).
    for i, layer in enumerate(model.sparsifier.layers):
        assert (model.sparsifier._convs[i].weight[~masks[layer.key]] == 0).all()
    # 60% of all non-zero conv weights gone: the dense counter agrees.
    total = sum(l.numel for l in model.sparsifier.layers)
    assert float(model.sparsifier.overall_sparsity()) == pytest.approx(math.floor(0.6 * total + 0.5) / total)
    with pytest.raises(KeyError):
        apply_masks(model, {"nope.weight": torch.ones(1, dtype=torch.bool)})


@pytest.mark.parametrize("enabled", [False, True])
def test_masks_persist_through_adam_with_weight_decay(enabled):
    torch.manual_seed(0)
    model = SmallNet(enabled=enabled)
    params = [p for n, p in model.named_parameters() if not n.startswith("sparsifier.")]
    optimizer = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2)
    batches = small_batches(3)
    # Dense steps first: Adam's moments of the soon-pruned weights are non-zero.
    for image, targets in batches:
        optimizer.zero_grad()
        sum(mse_losses(model(image), targets).values()).backward()
        optimizer.step()
    masks = magnitude_masks(layer_weights(model), layer_components(model), 0.7, "component")
    keeper = MaskKeeper(model, masks, optimizer)
    before = [w.detach().clone() for w in raw_weights(model)]
    for step in range(20):
        image, targets = batches[step % len(batches)]
        optimizer.zero_grad()
        sum(mse_losses(model(image), targets).values()).backward()
        for weight, layer in zip(raw_weights(model), model.sparsifier.layers):
            assert (weight.grad[~masks[layer.key]] == 0).all()  # the hook masked them already
        keeper.after_backward()
        optimizer.step()
        keeper.after_step(step + 1)
        for weight, layer in zip(raw_weights(model), model.sparsifier.layers):
            assert (weight[~masks[layer.key]] == 0).all(), f"step {step}: pruned weight of {layer.key} moved"
            state = optimizer.state[weight]
            assert (state["exp_avg"][~masks[layer.key]] == 0).all()
            assert (state["exp_avg_sq"][~masks[layer.key]] == 0).all()
    # The survivors did train.
    moved = sum(int((w.detach() != b)[masks[l.key]].sum()) for w, b, l in zip(raw_weights(model), before, model.sparsifier.layers))
    assert moved > 0.9 * sum(int(m.sum()) for m in masks.values())
    keeper.remove()


def test_without_the_keeper_adam_moves_pruned_weights():
    # The control for the test above: leftover moments and weight decay do move zeroed weights.
    torch.manual_seed(0)
    model = SmallNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    image, targets = small_batches(1)[0]
    for _ in range(2):
        optimizer.zero_grad()
        sum(mse_losses(model(image), targets).values()).backward()
        optimizer.step()
    masks = magnitude_masks(layer_weights(model), layer_components(model), 0.7, "global")
    apply_masks(model, masks)
    optimizer.zero_grad()
    sum(mse_losses(model(image), targets).values()).backward()
    optimizer.step()
    assert any((w[~masks[l.key]] != 0).any() for w, l in zip(raw_weights(model), model.sparsifier.layers))


# -- SNIP ----------------------------------------------------------------------------------------


class OneConv(nn.Module):
    """One 1x1 conv 2 -> 3 as the backbone, identity heads: y = W x, so dL/dW is known by hand."""

    def __init__(self, weight):
        super().__init__()
        self.backbone = nn.Conv2d(2, 3, 1, bias=False)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor(weight).view(3, 2, 1, 1))
        self.heads = nn.ModuleDict({"a": nn.Identity(), "b": nn.Identity()})
        self.sparsifier = Sparsifier(self, {"backbone": self.backbone}, enabled=False)

    def components(self):
        return {"backbone": self.backbone}

    def forward(self, x):
        f = self.backbone(x)
        return {k: h(f) for k, h in self.heads.items()}


W = [[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]]
C_A = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
C_B = torch.tensor([0.0, -1.0, 1.0]).view(1, 3, 1, 1)


def linear_losses(outputs, targets):
    # L_a = sum(y * c_a), L_b = sum(y * c_b): the total has dL/dW[o, i] = (c_a + c_b)[o] * sum_pixels x_i.
    return {"a": (outputs["a"] * C_A).sum(), "b": (outputs["b"] * C_B).sum()}


def image(x0, x1):
    return torch.tensor([x0, x1]).view(1, 2, 1, 1)


def test_snip_saliency_and_mask_by_hand():
    model = OneConv(W)
    batches = [(image(2.0, 1.0), {})]
    # c = c_a + c_b = [1, -1, 2], S = [2, 1]: g = [[2, 1], [-2, -1], [4, 2]]
    # |g * w| = [[2, 2], [1, 3], [4, 0.5]]
    saliency = snip_saliency(model, batches, linear_losses)["backbone.weight"]
    assert torch.allclose(saliency.view(3, 2), torch.tensor([[2.0, 2.0], [1.0, 3.0], [4.0, 0.5]]))
    # ratio 0.5 of 6: remove 0.5, 1, and of the tie at 2 the earlier index (0, 0).
    masks = snip_masks(model, batches, linear_losses, 0.5, "global")
    assert torch.equal(masks["backbone.weight"].view(3, 2), torch.tensor([[F, T], [F, T], [T, F]]))
    # No side effects: no .grad left, weights unchanged.
    assert model.backbone.weight.grad is None
    assert torch.equal(model.backbone.weight.detach().view(3, 2), torch.tensor(W))


def test_snip_uses_the_mean_gradient_over_batches():
    model = OneConv(W)
    batches = [(image(2.0, 1.0), {}), (image(-2.0, 3.0), {})]
    # g1 = c * [2, 1], g2 = c * [-2, 3]; mean = c * [0, 2] = [[0, 2], [0, -2], [0, 4]]
    # |g * w| = [[0, 4], [0, 6], [0, 1]] (summing |g_b * w| instead would give [[4, 8], [2, 12], [8, 2]])
    saliency = snip_saliency(model, batches, linear_losses)["backbone.weight"]
    assert torch.allclose(saliency.view(3, 2), torch.tensor([[0.0, 4.0], [0.0, 6.0], [0.0, 1.0]]))
    masks = snip_masks(model, batches, linear_losses, 0.5, "global")
    assert torch.equal(masks["backbone.weight"].view(3, 2), torch.tensor([[F, T], [F, T], [F, T]]))


def test_snip_counts_the_ratio_on_non_zeros_and_keeps_buffers():
    torch.manual_seed(0)
    model = SmallNet()
    with torch.no_grad():
        model.backbone[3].weight[:4] = 0.0  # 4 * 8 * 9 = 288 existing zeros
    running = model.backbone[1].running_mean.clone()
    masks = snip_masks(model, small_batches(2), mse_losses, 0.5, "global")
    total = sum(l.numel for l in model.sparsifier.layers)
    nonzeros = total - 288
    assert sum(int((~m).sum()) for m in masks.values()) == 288 + math.floor(0.5 * nonzeros + 0.5)
    assert not masks["backbone.3.weight"][:4].any()
    assert torch.equal(model.backbone[1].running_mean, running)
    assert all(p.grad is None for p in model.parameters())


# -- DiSparse ------------------------------------------------------------------------------------


def two_head_model():
    # Backbone B = [[1, 2], [3, 4]], head a = [1, 0.1], head b = [0.1, 1]; input x = [1, 1] (one pixel).
    return TwoHeadNet([[1.0, 2.0], [3.0, 4.0]], [1.0, 0.1], [0.1, 1.0])


def sum_losses(outputs, targets):
    return {k: v.sum() for k, v in outputs.items()}


BATCH = [(image(1.0, 1.0), {})]


def test_disparse_union_of_per_task_keep_masks_by_hand():
    # f = B x = [3, 7]. L_t = H_t . f:
    #   dL_t/dB[j, i] = H_t[j] * x_i,  dL_t/dH_t[j] = f_j.
    # Task a: backbone |H_a[j] B[j, i]| = [[1, 2], [0.3, 0.4]], head a |f * H_a| = [3, 0.7].
    #   6 weights (head b is not in a's group), ratio 0.5 removes 3: 0.3, 0.4, 0.7 -> keeps B[0, :], H_a[0].
    # Task b: backbone [[0.1, 0.2], [3, 4]], head b [0.3, 7] -> removes 0.1, 0.2, 0.3 -> keeps B[1, :], H_b[1].
    model = two_head_model()
    masks = disparse_masks(model, BATCH, sum_losses, 0.5, "global")
    assert torch.equal(masks["backbone.weight"].view(2, 2), torch.tensor([[T, T], [T, T]]))  # union
    assert torch.equal(masks["heads.a.weight"].view(2), bools(T, F))
    assert torch.equal(masks["heads.b.weight"].view(2), bools(F, T))
    # The union leaves the model denser than asked: 2 of 8 pruned, not 4.
    assert sum(int((~m).sum()) for m in masks.values()) == 2


def test_disparse_match_overall_reaches_the_requested_ratio():
    # Target round(0.5 * 8) = 4 pruned. Per task removing 4 of 6 (r in [3.5/6, 4.5/6)):
    #   a removes B10 B11 Ha1 B00 (keeps B01, Ha0); b removes B00 B01 Hb0 B10 (keeps B11, Hb1).
    #   Union backbone keeps B01 and B11: 2 + Ha1 + Hb0 = 4 pruned.
    model = two_head_model()
    masks, task_ratio = disparse_masks(model, BATCH, sum_losses, 0.5, "global", match_overall=True, return_task_ratio=True)
    assert torch.equal(masks["backbone.weight"].view(2, 2), torch.tensor([[F, T], [F, T]]))
    assert torch.equal(masks["heads.a.weight"].view(2), bools(T, F))
    assert torch.equal(masks["heads.b.weight"].view(2), bools(F, T))
    assert 3.5 / 6 <= task_ratio < 4.5 / 6


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_disparse_match_overall_on_a_small_net(ratio):
    torch.manual_seed(0)
    model = SmallNet()
    total = sum(l.numel for l in model.sparsifier.layers)
    plain = disparse_masks(model, small_batches(2), mse_losses, ratio, "global")
    matched = disparse_masks(model, small_batches(2), mse_losses, ratio, "global", match_overall=True)
    pruned = lambda masks: sum(int((~m).sum()) for m in masks.values())
    assert pruned(plain) < ratio * total  # the union is denser than asked
    assert abs(pruned(matched) - ratio * total) <= 1


def test_disparse_component_scope_by_hand():
    # Task a: backbone (4) removes 2: 0.3, 0.4 -> keeps B[0, :]; head a (2) removes round(1) = 1: 0.7.
    # Task b: backbone removes 0.1, 0.2 -> keeps B[1, :]; head b removes 0.3.
    # With ratio 0.75: a's backbone removes 3 (0.3 0.4 1) keeps B01; b's removes 0.1 0.2 3 keeps B11;
    # heads remove round(1.5) = 2: everything.
    model = two_head_model()
    masks = disparse_masks(model, BATCH, sum_losses, 0.75, "component")
    assert torch.equal(masks["backbone.weight"].view(2, 2), torch.tensor([[F, T], [F, T]]))
    assert not masks["heads.a.weight"].any() and not masks["heads.b.weight"].any()


def test_disparse_ranks_each_task_over_backbone_and_its_own_head_only():
    # Only task a has a loss. Task a ranks its 6 weights (backbone + head a) as in the hand case
    # above and keeps B[0, :] and H_a[0]. Had head b (saliency 0 from a's loss) been in a's group,
    # a would remove H_b[0], H_b[1], 0.3, 0.4 and keep H_a[1]. Head b, reached by no loss, is kept.
    model = TwoHeadNet([[1.0, 2.0], [3.0, 4.0]], [1.0, 0.1], [100.0, 1000.0])
    masks = disparse_masks(model, BATCH, lambda o, t: {"a": o["a"].sum()}, 0.5, "global")
    assert torch.equal(masks["backbone.weight"].view(2, 2), torch.tensor([[T, T], [F, F]]))
    assert torch.equal(masks["heads.a.weight"].view(2), bools(T, F))
    assert torch.equal(masks["heads.b.weight"].view(2), bools(T, T))  # no task reaches it: kept


# -- random ----------------------------------------------------------------------------------------


def test_random_masks_counts_zeros_and_reproducibility():
    weights, components = three_layers()
    a = random_masks(weights, components, 0.5, "component", torch.Generator().manual_seed(3))
    b = random_masks(weights, components, 0.5, "component", torch.Generator().manual_seed(3))
    for key in weights:
        assert torch.equal(a[key], b[key])
        assert not a[key][weights[key] == 0].any()
    # backbone: 6 nz -> 3 removed, head.x: 3 nz -> 2 removed
    assert int(a["a"].sum() + a["b"].sum()) == 3
    assert int(a["c"].sum()) == 1


# -- IMP schedule and LTH rewind --------------------------------------------------------------------


def test_iterative_schedule_values():
    ratios = iterative_schedule(0.9, 3)
    assert ratios == pytest.approx([1 - 0.1 ** (1 / 3)] * 3)
    assert math.prod(1 - r for r in ratios) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        iterative_schedule(0.9, 0)


def imp(weights, ratios, scope="global", components=None):
    components = components or dict.fromkeys(weights, "backbone")
    g = torch.Generator().manual_seed(7)
    for r in ratios:
        masks = magnitude_masks(weights, components, r, scope)
        for k in weights:
            # "finetune": survivors move a little, pruned are zero
            weights[k] = torch.where(masks[k], weights[k] + 0.01 * torch.randn(weights[k].shape, generator=g), 0.0)
    return sum(int((w == 0).sum()) for w in weights.values())


@pytest.mark.parametrize("final,steps", [(0.9, 3), (0.8, 5), (0.95, 4), (0.5, 1)])
def test_iterative_magnitude_pruning_reaches_the_final_ratio(final, steps):
    g = torch.Generator().manual_seed(0)
    make = lambda: {"x": torch.randn(37, 13, generator=g) + 3.0, "y": torch.randn(1000, generator=g) - 3.0}  # no zeros
    weights = make()
    total = sum(w.numel() for w in weights.values())
    # The geometric schedule lands within one weight here; with the count given, exactly.
    assert abs(imp(weights, iterative_schedule(final, steps)) - final * total) <= 1
    weights = make()
    assert imp(weights, iterative_schedule(final, steps, total=total)) == math.floor(final * total + 0.5)


def test_rewind_restores_survivors_exactly():
    torch.manual_seed(0)
    model = SmallNet()
    initial = {k: v.clone() for k, v in plain_state_dict(model).items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for image, targets in small_batches(3):
        optimizer.zero_grad()
        sum(mse_losses(model(image), targets).values()).backward()
        optimizer.step()
    masks = magnitude_masks(layer_weights(model), layer_components(model), 0.8, "global")
    rewind(model, initial, masks)
    for i, layer in enumerate(model.sparsifier.layers):
        weight = model.sparsifier.raw_weight(i).detach()
        keep = masks[layer.key]
        assert torch.equal(weight[keep], initial[layer.key][keep])
        assert (weight[~keep] == 0).all()
    assert torch.equal(model.heads["a"].bias, initial["heads.a.bias"])  # the rest rewinds too


def test_rewind_on_a_parametrized_model():
    torch.manual_seed(0)
    model = SmallNet(enabled=True)
    initial = {k: v.clone() for k, v in plain_state_dict(model).items()}
    with torch.no_grad():
        for w in raw_weights(model):
            w.mul_(2.0)
    masks = magnitude_masks(layer_weights(model), layer_components(model), 0.5, "layer")
    rewind(model, initial, masks)
    for i, layer in enumerate(model.sparsifier.layers):
        weight = model.sparsifier.raw_weight(i).detach()
        assert torch.equal(weight, torch.where(masks[layer.key], initial[layer.key], 0.0))
