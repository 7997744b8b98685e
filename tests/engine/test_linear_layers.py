"""Linear layers are sparsified like Conv2d layers (issue 16, part 3): the soft threshold and its
gradients on every CPU path, nn.MultiheadAttention's out_proj (used through a functional call), the
schedule controller, pruning, checkpoints, exports and inspect.

Every expected number is worked out here a second way: plain autograd through W - clamp(W, -t, t)
with t by the counting rule computed with numpy, numpy counts of |W| <= t over the test's own list
of layers, and a stable sort of all magnitudes for pruning.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapmtl_cli.engine import shrink
from adapmtl_cli.engine.controllers import MaskKeeper
from adapmtl_cli.engine.pruning import apply_masks, compute_masks, disparse_saliency, snip_saliency
from adapmtl_cli.engine.sparsifier import Sparsifier, effective_state_dict
from adapmtl_cli.engine.shrink import BUFFER_MIN_NUMEL, CHUNK_NUMEL
from adapmtl_cli.engine.controllers import ScheduleController

Tensor = torch.Tensor


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def rule_threshold(s: float) -> float:
    """t of a float32 ``s`` by the counting rule, with numpy: sigmoid in float64, rounded to float32."""
    return float(np.float32(1.0 / (1.0 + np.exp(-np.float64(np.float32(s))))))


def formula_threshold(s: Tensor) -> Tensor:
    """t as a tensor with the rule's value and sigmoid's gradient (straight through)."""
    t = torch.sigmoid(s)
    return t - t.detach() + rule_threshold(float(s.detach()))


def formula_effective(weight: Tensor, s: Tensor) -> Tensor:
    """The second implementation of W_eff: plain autograd through W - clamp(W, -t, t)."""
    t = formula_threshold(s)
    return weight - torch.clamp(weight, -t, t)


# -- one Linear, on every CPU path -------------------------------------------------------------

# (out, in) of the second Linear: under BUFFER_MIN_NUMEL (multi-tensor path), one buffered chunk, and
# more than one chunk (CHUNK_NUMEL), where the chunked backward and count split the weight.
SIZES = {"small": (24, 40), "big": (256, 320), "huge": (1030, 520)}
IN = 12


class LinearNet(nn.Module):
    def __init__(self, size: str):
        super().__init__()
        out_features, hidden = SIZES[size]
        self.a = nn.Linear(IN, hidden)
        self.b = nn.Linear(hidden, out_features)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def linear_net(size: str, shared: bool = False) -> LinearNet:
    torch.manual_seed(0)
    model = LinearNet(size)
    model.sparsifier = Sparsifier(model, {"backbone": model.a, "head": model.b}, granularity="global" if shared else "component")
    with torch.no_grad():  # about half of each layer's weights under its threshold (init bound 1/sqrt(in))
        bounds = [1 / math.sqrt(IN), 1 / math.sqrt(SIZES[size][1])]
        for param, bound in zip(model.sparsifier.thresholds, bounds[1:] if shared else bounds):
            param.fill_(logit(0.5 * bound))
    return model


def linear_inputs():
    generator = torch.Generator().manual_seed(1)
    # a 2-d batch and a 3-d one (batch, tokens, features), as transformers feed Linear layers
    return [torch.randn(4, IN, generator=generator), torch.randn(2, 5, IN, generator=generator)]


def formula_linear_grads(size: str, shared: bool, inputs) -> list[Tensor]:
    model = linear_net(size, shared)
    raw = [model.a.parametrizations.weight.original, model.b.parametrizations.weight.original]
    s = list(model.sparsifier.thresholds) * (2 if shared else 1)
    effective = [formula_effective(w, t) for w, t in zip(raw, s)]
    total = 0
    for x in inputs:
        hidden = torch.relu(F.linear(x, effective[0], model.a.bias))
        total = total + F.linear(hidden, effective[1], model.b.bias).square().sum()
    total.backward()
    return [p.grad for p in model.parameters()]


def test_linear_sizes_reach_every_path():
    assert math.prod(SIZES["small"]) < BUFFER_MIN_NUMEL <= math.prod(SIZES["big"]) <= CHUNK_NUMEL < math.prod(SIZES["huge"])


@pytest.mark.parametrize("shared", [False, True], ids=["a threshold each", "one shared threshold"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("pattern", ["backward after each forward", "two forwards then one backward", "transposed storage"])
def test_sparsified_linear_gives_the_formula(monkeypatch, pattern, size, shared):
    inputs = linear_inputs()
    expected = formula_linear_grads(size, shared, inputs)
    model = linear_net(size, shared)
    raw = model.b.parametrizations.weight.original
    if pattern == "transposed storage":
        # A weight stored column-major: no memory-order view, so the whole-tensor passes run.
        with torch.no_grad():
            raw.data = raw.data.t().contiguous().t()
        assert not raw.is_contiguous()
    else:
        # The chunked backward must take 2-d weights and Linear's gradients as they come, not
        # fall back to the whole-tensor passes (the only caller of _dot with a sum).
        def no_fallback(*args):
            raise AssertionError("the whole-tensor fallback ran for a contiguous Linear weight")

        monkeypatch.setattr(shrink, "_dot", no_fallback)

    # W_eff read outside the forward is the soft shrink.
    s = model.sparsifier.thresholds[-1]
    want = formula_effective(raw.detach(), s.detach())
    got = model.b.weight.detach()
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert 0.3 < float((got == 0).float().mean()) < 0.7

    for _ in range(2):  # the second round runs on buffers lent in the first
        model.zero_grad()
        if pattern == "two forwards then one backward":
            sum(model(x).square().sum() for x in inputs).backward()
        else:
            for x in inputs:
                model(x).square().sum().backward()
    buffered = model.b.parametrizations.weight[0]._buffer is not None
    assert buffered == (size != "small")
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.grad, want, rtol=1e-5, atol=1e-6)
    assert (raw.grad[raw.detach().abs() <= rule_threshold(float(s.detach()))] == 0).all()


@pytest.mark.parametrize("size", ["small", "huge"])
def test_device_path_gives_the_formula_for_linear(monkeypatch, size):
    """The GPUs' path (threshold kept a tensor, every layer multi-tensor), run on the CPU."""
    monkeypatch.setattr(shrink, "on_host", lambda weight: False)
    inputs = linear_inputs()
    expected = formula_linear_grads(size, True, inputs)
    model = linear_net(size, shared=True)
    for x in inputs:
        model(x).square().sum().backward()
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "a NaN weight"])
@pytest.mark.parametrize("size", list(SIZES))
def test_linear_zero_count_equals_numpy(size, nan):
    """The chunked count of a 2-d weight (over two chunks for "huge") equals numpy's |W| <= t:
    weights at +-t are zeros, the next float above t is not, a NaN is no zero."""
    model = linear_net(size)
    raw = model.b.parametrizations.weight.original
    t = rule_threshold(float(model.sparsifier.thresholds[1].detach()))
    with torch.no_grad():
        edge = torch.tensor(t, dtype=torch.float32)
        above = torch.nextafter(edge, torch.tensor(1.0))
        raw[0, :3] = torch.stack([edge, -edge, above])
        raw[-1, -1] = float("nan") if nan else -above  # in the last chunk
    expected = int(np.count_nonzero(np.abs(raw.detach().numpy()) <= np.float32(t)))
    assert 0 < expected < raw.numel()
    assert model.sparsifier.stats().layer_zeros["b.weight"] == expected


class ConvThenLinear(nn.Module):
    """A channels_last conv and a big Linear sharing one threshold: one group mixing a 4-d
    channels_last buffered weight and a 2-d buffered weight."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 64, 4)  # 65536 weights: buffered
        self.fc = nn.Linear(64, 1100)  # 70400 weights: buffered

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_channels_last_conv_and_linear_in_one_group():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 6, 6, generator=torch.Generator().manual_seed(3))

    def build():
        torch.manual_seed(0)
        model = ConvThenLinear()
        model.sparsifier = Sparsifier(model, {"backbone": model}, granularity="global", init=logit(0.02))
        return model

    reference = build()
    weights = [reference.conv.parametrizations.weight.original, reference.fc.parametrizations.weight.original]
    s = reference.sparsifier.thresholds[0]
    conv_eff, fc_eff = (formula_effective(w, s) for w in weights)
    F.linear(F.conv2d(x, conv_eff, reference.conv.bias).mean(dim=(2, 3)), fc_eff, reference.fc.bias).square().sum().backward()

    model = build().to(memory_format=torch.channels_last)
    assert model.conv.parametrizations.weight.original.is_contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        model.zero_grad()
        model(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    assert model.conv.parametrizations.weight[0]._buffer is not None and model.fc.parametrizations.weight[0]._buffer is not None
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)


# -- nn.MultiheadAttention: out_proj.weight goes to a functional call ----------------------------


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def test_attention_out_proj_gets_the_effective_weight():
    """nn.MultiheadAttention passes ``out_proj.weight`` to F.multi_head_attention_forward rather
    than calling out_proj: the output and gradients are still those of W_eff. Its in_proj_weight is
    a bare Parameter, not a Linear layer's: it is neither thresholded nor counted."""
    torch.manual_seed(0)
    model = Attention()
    assert isinstance(model.attn.out_proj, nn.modules.linear.NonDynamicallyQuantizableLinear)
    model.sparsifier = Sparsifier(model, {"backbone": model.attn}, init=logit(0.5 / math.sqrt(16)))
    assert [layer.key for layer in model.sparsifier.layers] == ["attn.out_proj.weight"]
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4))
    out = model(x)
    out.square().sum().backward()

    attn = model.attn
    raw = attn.out_proj.parametrizations.weight.original
    s = model.sparsifier.thresholds[0]
    leaves = [attn.in_proj_weight, attn.in_proj_bias, raw, attn.out_proj.bias, s]
    copies = [leaf.detach().clone().requires_grad_() for leaf in leaves]
    in_w, in_b, out_w, out_b, s_copy = copies
    want = F.multi_head_attention_forward(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), 16, 4, in_w, in_b, None, None, False, 0.0,
        formula_effective(out_w, s_copy), out_b, training=True, need_weights=False)[0].transpose(0, 1)
    want.square().sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    for leaf, copy in zip(leaves, copies):
        torch.testing.assert_close(leaf.grad, copy.grad, rtol=1e-5, atol=1e-6)
    pruned = raw.detach().abs() <= rule_threshold(float(s.detach()))
    assert 0 < int(pruned.sum()) < raw.numel() and (raw.grad[pruned] == 0).all()
    assert not hasattr(attn, "parametrizations")  # in_proj_weight untouched


# -- a transformer-style multitask model --------------------------------------------------------

DIM, HEADS, FEEDFORWARD, PATCH, IMAGE = 128, 4, 512, 4, 16
OUTPUTS = {"a": 3, "b": 2}
TOKENS = (IMAGE // PATCH) ** 2


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        # linear1 and linear2 hold DIM * FEEDFORWARD = 65536 weights each: the buffered path
        self.blocks = nn.ModuleList([nn.TransformerEncoderLayer(DIM, HEADS, FEEDFORWARD, dropout=0.0, batch_first=True)
                                     for _ in range(2)])

    def forward(self, image):
        tokens = self.patch(image).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens


class Head(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.fc1 = nn.Linear(DIM, DIM)
        self.fc2 = nn.Linear(DIM, out)

    def forward(self, tokens):
        return self.fc2(F.gelu(self.fc1(tokens)))


class TransformerMTL(nn.Module):
    def __init__(self, sparsify: bool = True, enabled: bool = True, init: float = -12.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = Backbone()
        self.heads = nn.ModuleDict({task: Head(out) for task, out in OUTPUTS.items()})
        if sparsify:
            self.sparsifier = Sparsifier(self, self.components(), enabled=enabled, init=init)

    def components(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, **{f"head.{task}": head for task, head in self.heads.items()}}

    def forward(self, image):
        tokens = self.backbone(image)
        return {task: head(tokens) for task, head in self.heads.items()}


# What the test expects to be sparsified, listed by hand: every Conv2d and Linear, out_proj included.
EXPECTED_LAYERS = (["backbone.patch.weight"]
                   + [f"backbone.blocks.{i}.{name}.weight" for i in range(2)
                      for name in ("self_attn.out_proj", "linear1", "linear2")]
                   + [f"heads.{task}.{fc}.weight" for task in OUTPUTS for fc in ("fc1", "fc2")])


def component_of(key: str) -> str:
    return "backbone" if key.startswith("backbone.") else "head." + key.split(".")[1]


def raw_weights(model: TransformerMTL) -> dict[str, Tensor]:
    """The raw W of every Conv2d and Linear, found by walking the modules (not the sparsifier)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrized = hasattr(module, "parametrizations")
            out[f"{name}.weight"] = (module.parametrizations.weight.original if parametrized else module.weight).detach()
    return out


def recount(model: TransformerMTL) -> dict[str, int]:
    """Zeros of W_eff per layer, counted two ways that must agree: numpy |W| <= t on the raw W,
    with t from the component's own threshold parameter, and exact zeros of what the layer computes
    with (``module.weight``)."""
    thresholds = dict(zip(model.sparsifier.threshold_names, model.sparsifier.thresholds))
    modules = dict(model.named_modules())
    zeros = {}
    for key, raw in raw_weights(model).items():
        t = np.float32(rule_threshold(float(thresholds[component_of(key)].detach())))
        zeros[key] = int(np.count_nonzero(np.abs(raw.numpy()) <= t))
        assert zeros[key] == int((modules[key[: -len(".weight")]].weight == 0).sum()), key
    return zeros


def per_component(per_layer: dict[str, int]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for key, value in per_layer.items():
        totals[component_of(key)] = totals.get(component_of(key), 0) + value
    return totals


def toy_batch():
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(4, 3, IMAGE, IMAGE, generator=generator)
    targets = {task: torch.randn(4, TOKENS, out, generator=generator) for task, out in OUTPUTS.items()}
    return image, targets


def toy_losses(outputs, targets) -> dict[str, Tensor]:
    return {task: F.mse_loss(outputs[task], targets[task]) for task in outputs}


STEPS, TARGET = 40, 0.8


@pytest.fixture(scope="module")
def trained():
    """The model after STEPS Adam steps of the toy loss under the schedule controller (which only
    acts after the optimizer steps), and, per layer, the raw weight, its threshold value and its
    gradient as the last backward left them."""
    model = TransformerMTL()
    controller = ScheduleController(model.sparsifier, TARGET, total_steps=STEPS, start=0.1, end=0.7)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999), weight_decay=1e-4)
    image, targets = toy_batch()
    last = {}
    for step in range(STEPS):
        optimizer.zero_grad()
        sum(toy_losses(model(image), targets).values()).backward()
        if step == STEPS - 1:
            thresholds = dict(zip(model.sparsifier.threshold_names, model.sparsifier.thresholds))
            for key in EXPECTED_LAYERS:
                raw = model.get_submodule(key[: -len(".weight")]).parametrizations.weight.original
                t = rule_threshold(float(thresholds[component_of(key)].detach()))
                last[key] = (raw.detach().clone(), t, raw.grad.clone())
        optimizer.step()
        controller.after_step(step + 1)
    return model, last


def test_every_conv2d_and_linear_is_sparsified_and_no_bias():
    model = TransformerMTL()
    assert [layer.key for layer in model.sparsifier.layers] == EXPECTED_LAYERS == list(raw_weights(model))
    assert [layer.component for layer in model.sparsifier.layers] == [component_of(k) for k in EXPECTED_LAYERS]
    for key in EXPECTED_LAYERS:
        module = model.get_submodule(key[: -len(".weight")])
        assert hasattr(module, "parametrizations") and set(module.parametrizations) == {"weight"}  # never the bias
    n = {"backbone": 3 * DIM * PATCH * PATCH + 2 * (DIM * DIM + 2 * DIM * FEEDFORWARD),
         **{f"head.{task}": DIM * DIM + out * DIM for task, out in OUTPUTS.items()}}
    assert model.sparsifier.stats().component_params == n


def test_schedule_controller_lands_on_the_target_over_linear_and_conv_weights(trained):
    model, last = trained
    zeros = recount(model)
    n = {key: raw.numel() for key, raw in raw_weights(model).items()}
    total = sum(n.values())
    assert sum(zeros.values()) / total == pytest.approx(TARGET, abs=2 / total)
    stats = model.sparsifier.stats()
    assert stats.layer_zeros == zeros
    assert stats.component_zeros == per_component(zeros)
    assert stats.component_params == per_component(n)
    assert stats.overall == sum(zeros.values()) / total
    # Linear weights carry the sparsity, out_proj (used through the functional call) included.
    for key in EXPECTED_LAYERS:
        assert 0 < zeros[key] < n[key], key
    # The last backward went through W_eff in every layer: the raw gradient is 0 wherever the
    # weight was under its threshold, and not everywhere else.
    for key, (raw, t, grad) in last.items():
        under = raw.abs() <= t
        assert under.any() and (grad[under] == 0).all(), key
        assert (grad[~under] != 0).any(), key


# -- pruning -------------------------------------------------------------------------------------


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def expected_magnitude_masks(weights: dict[str, Tensor], ratio: float, scope: str) -> dict[str, np.ndarray]:
    """A second implementation: per group, sort all magnitudes (stable, in layer order) and drop
    the round_half_up(ratio * n) smallest."""
    group_of = {"global": lambda key: "all", "component": component_of, "layer": lambda key: key}[scope]
    groups: dict[str, list[str]] = {}
    for key in weights:
        groups.setdefault(group_of(key), []).append(key)
    masks = {}
    for keys in groups.values():
        magnitudes = np.concatenate([np.abs(weights[key].numpy()).ravel() for key in keys])
        keep = np.ones(magnitudes.size, dtype=bool)
        keep[np.argsort(magnitudes, kind="stable")[: round_half_up(ratio * magnitudes.size)]] = False
        start = 0
        for key in keys:
            size = weights[key].numel()
            masks[key] = keep[start:start + size].reshape(weights[key].shape)
            start += size
    return masks


@pytest.mark.parametrize("scope", ["global", "component", "layer"])
def test_magnitude_pruning_counts_linear_and_conv_weights(scope):
    model = TransformerMTL(init=-30.0)  # t ~ 1e-13: no weight is under it
    weights = raw_weights(model)
    assert all(int((w == 0).sum()) == 0 for w in weights.values())
    ratio = 0.7
    masks = compute_masks(model, "magnitude", ratio, scope)
    expected = expected_magnitude_masks(weights, ratio, scope)
    assert list(masks) == list(expected) == EXPECTED_LAYERS
    for key in EXPECTED_LAYERS:
        assert np.array_equal(masks[key].numpy(), expected[key]), key
    removed = {key: int((~mask).sum()) for key, mask in masks.items()}
    total = sum(weights[key].numel() for key in weights)
    if scope == "global":
        assert sum(removed.values()) == round_half_up(ratio * total)
        # the global sort reaches both kinds of layer
        assert removed["backbone.patch.weight"] > 0 and removed["backbone.blocks.0.self_attn.out_proj.weight"] > 0
    if scope == "layer":
        assert removed == {key: round_half_up(ratio * weights[key].numel()) for key in weights}

    # Applied and kept through Adam steps: the sparsifier counts exactly the removed weights.
    apply_masks(model, masks)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    keeper = MaskKeeper(model, masks, optimizer)
    image, targets = toy_batch()
    for step in range(3):
        optimizer.zero_grad()
        sum(toy_losses(model(image), targets).values()).backward()
        keeper.after_backward()
        optimizer.step()
        keeper.after_step(step + 1)
    keeper.remove()
    after = raw_weights(model)
    for key in EXPECTED_LAYERS:
        assert (after[key][~masks[key]] == 0).all(), key
        assert int((after[key] == 0).sum()) == removed[key], key
    assert model.sparsifier.stats().layer_zeros == removed


def twin_saliency(batches, per_task: bool) -> dict:
    """|g * w| for every Conv2d and Linear weight of a plain twin of the model (no sparsifier, the
    same initial weights), g the mean gradient of the toy losses by plain autograd."""
    twin = TransformerMTL(sparsify=False)
    weights = {f"{name}.weight": module.weight for name, module in twin.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))}
    sums: dict = {}
    for image, targets in batches:
        losses = toy_losses(twin(image), targets)
        items = list(losses.items()) if per_task else [(None, sum(losses.values()))]
        for task, loss in items:
            grads = torch.autograd.grad(loss, list(weights.values()), retain_graph=True, allow_unused=True)
            acc = sums.setdefault(task, {})
            for key, grad in zip(weights, grads):
                if grad is not None:
                    acc[key] = acc.get(key, 0) + grad
    return {task: {key: (g / len(batches) * weights[key].detach()).abs() for key, g in acc.items()}
            for task, acc in sums.items()}


def test_snip_and_disparse_saliency_of_linear_weights():
    """|g * w| for every Linear and conv weight, as plain autograd gives it on a twin without the
    sparsifier (at t ~ 1e-13, W_eff and W agree to 1e-13); DiSparse's per-task saliency reaches the
    backbone and the task's own head only, out_proj included."""
    model = TransformerMTL(init=-30.0)
    batches = [toy_batch()]
    snip = snip_saliency(model, batches, toy_losses)
    want = twin_saliency(batches, per_task=False)[None]
    assert list(snip) == EXPECTED_LAYERS and set(want) == set(EXPECTED_LAYERS)
    for key in EXPECTED_LAYERS:
        torch.testing.assert_close(snip[key], want[key], rtol=1e-4, atol=1e-9)
    per_task = disparse_saliency(model, batches, toy_losses)
    want_per_task = twin_saliency(batches, per_task=True)
    for task in OUTPUTS:
        reached = [key for key in EXPECTED_LAYERS if component_of(key) in ("backbone", f"head.{task}")]
        assert list(per_task[task]) == reached
        for key in reached:
            torch.testing.assert_close(per_task[task][key], want_per_task[task][key], rtol=1e-4, atol=1e-9)


def test_random_pruning_counts_per_component():
    model = TransformerMTL(init=-30.0)
    weights = raw_weights(model)
    masks = compute_masks(model, "random", 0.6, "component", generator=torch.Generator().manual_seed(0))
    assert list(masks) == EXPECTED_LAYERS
    for component, size in per_component({key: w.numel() for key, w in weights.items()}).items():
        removed = sum(int((~masks[key]).sum()) for key in weights if component_of(key) == component)
        assert removed == round_half_up(0.6 * size), component


# -- checkpoint, export, inspect ------------------------------------------------------------------


def test_checkpoint_exports_and_inspect_count_linear_weights(trained, tmp_path):
    from adapmtl_cli.config import config_to_json, load_config
    from adapmtl_cli.io.checkpoint import load_into_model, read_checkpoint, save_checkpoint
    from adapmtl_cli.io.export import (DENSE_FORMAT, SPARSE_FORMAT, _export_metadata, dense_export_bytes, read_export,
                                       sparse_export_bytes)
    from adapmtl_cli.io.inspect import inspect_file

    model, _ = trained
    zeros = recount(model)
    n = {key: raw.numel() for key, raw in raw_weights(model).items()}
    config = load_config("demo")
    path = tmp_path / "transformer.safetensors"
    save_checkpoint(path, model, config_to_json(config), STEPS, model.sparsifier.stats().as_report(), tasks=list(OUTPUTS))

    checkpoint = read_checkpoint(path)
    assert list(checkpoint.layers) == EXPECTED_LAYERS
    assert checkpoint.tasks == list(OUTPUTS)

    def assert_counts(report):
        assert {layer.key: layer.zeros for layer in report.layers} == zeros
        assert {layer.key: layer.params for layer in report.layers} == n
        document = report.as_dict()
        assert document["sparsity"]["zeros"] == per_component(zeros)
        assert document["params"] == per_component(n)

    assert_counts(inspect_file(path))

    # The checkpoint loads back into a fresh model: the same raw weights, thresholds and W_eff.
    fresh = TransformerMTL(seed=1)
    load_into_model(fresh, checkpoint)
    assert recount(fresh) == zeros
    state = {key: value.detach().cpu().contiguous() for key, value in effective_state_dict(fresh).items()}
    for key in EXPECTED_LAYERS:
        assert torch.equal(state[key], model.get_submodule(key[: -len(".weight")]).weight.detach()), key
    layers = {layer.key: layer.component for layer in fresh.sparsifier.layers}

    dense_path, sparse_path = tmp_path / "dense.safetensors", tmp_path / "sparse.safetensors"
    dense_path.write_bytes(dense_export_bytes(state, _export_metadata(DENSE_FORMAT, layers, state, config, checkpoint)))
    sparse_path.write_bytes(sparse_export_bytes(state, layers, _export_metadata(SPARSE_FORMAT, layers, state, config, checkpoint),
                                                torch.float32))
    for exported in (dense_path, sparse_path):
        report = inspect_file(exported)
        assert report.kind in (DENSE_FORMAT, SPARSE_FORMAT)
        assert_counts(report)
        folded, _ = read_export(exported)
        assert set(folded) == set(state)
        for key in state:
            assert torch.equal(folded[key], state[key]), key
        assert {key: int((folded[key] == 0).sum()) for key in EXPECTED_LAYERS} == zeros

    # The dense export is an ordinary model's state: plain Conv2d / Linear / MultiheadAttention
    # with the thresholds folded in compute what the sparsified model computes.
    plain = TransformerMTL(sparsify=False)
    plain.load_state_dict(read_export(dense_path)[0], strict=True)
    image, _ = toy_batch()
    model.eval(), plain.eval()
    try:
        with torch.no_grad():
            want, got = model(image), plain(image)
        for task in OUTPUTS:
            torch.testing.assert_close(got[task], want[task], rtol=1e-5, atol=1e-6)
    finally:
        model.train()
