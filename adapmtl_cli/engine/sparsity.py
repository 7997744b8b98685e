"""Soft-threshold sparsity (STR, Kusupati et al. 2020) as a reparametrisation of layer weights.

Every ``nn.Conv2d`` and ``nn.Linear`` weight W of a sparsified component (subclasses included,
e.g. ``nn.MultiheadAttention``'s ``out_proj``; STR sparsifies both kinds) is replaced, through
``torch.nn.utils.parametrize``, by its soft shrink

    W_eff = sign(W) * relu(|W| - sigmoid(s))   (a soft shrink)

with ``s`` a learnable scalar shared by the whole component (``component`` granularity, AdapMTL's),
by one layer (``layer``, STR's) or by the whole model (``global``, the paper's ablation). A custom
autograd function gives exactly the gradients of REFERENCE.md 1 (dW_eff/dW = 1 where |W| > t and 0
elsewhere, dW_eff/dt = -sign(W) on survivors). Biases are never thresholded. A weight that is a bare
``nn.Parameter`` of some other module (``nn.MultiheadAttention.in_proj_weight``) is not a Linear
layer's and is left dense and uncounted.

The function works on a whole group at once - every weight that shares one threshold - so a
forward and backward cost one autograd node per threshold, not one per layer: a Python autograd node
costs about 100 us each way, which on a small model (the demo: 14 convs) was most of the soft
threshold's price. The model's forward pre-hook builds every group's W_eff before the forward, so a
weight read by attribute anywhere inside it (``nn.MultiheadAttention`` passes ``out_proj.weight`` to
``F.multi_head_attention_forward``, not through ``out_proj.forward``) is W_eff; a layer used outside
the model's forward (``model.backbone(x)``, ``conv.weight``) shrinks its own weight.

The sparsifier also counts zeros on the device (layer, component, overall) with no host sync. On
GPUs only the stop rule turns one scalar into a Python float; on the CPU, where reading a number
costs nothing, each group also reads its threshold as one for the fused softshrink kernels.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from adapmtl_cli.counting import sparsity_report, threshold_value

Granularity = Literal["component", "layer", "global"]
# A big layer's backward works in chunks of this many weights (2 MiB of float32 per tensor), so
# that its three passes meet in the cache.
CHUNK_NUMEL = 1 << 19
# Bounds of log t the schedule controller sets: t < 1 (sigmoid never reaches it; t that rounds to
# 1 in float32 zeroes every weight under 1) and s >= about -1e4 (an s of -inf would make Adam's
# coupled L2 gradient infinite).
LOG_T_MAX = math.log1p(-1e-7)
LOG_T_MIN = -1e4
# The layer types whose ``weight`` is sparsified (and counted), subclasses included. Every path below
# works on any contiguous weight; only the channels_last special cases are 4-d (conv) only.
SPARSIFIED_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
# From this many weights on, a CPU layer's W_eff lives in a persistent buffer (fresh memory that big
# is mmapped and page-faulted on every step); smaller layers take the multi-tensor path.
BUFFER_MIN_NUMEL = 1 << 16


class SoftShrinkGroup(torch.autograd.Function):
    """W_eff_i = sign(W_i) * relu(|W_i| - sigmoid(s)) for every weight W_i sharing the threshold
    parameter ``s``, with the STR gradients: dW_eff/dW = 1 where |W| > t (else 0) and
    dL/ds = -t * (1 - t) * sum_i sum over survivors of dL/dW_eff_i * sign(W_i), t = sigmoid(s).

    ``apply(s, owners, *weights)`` returns one W_eff per weight. ``owners`` holds, per weight, a
    :class:`SoftThreshold` that lends a persistent buffer, or None.

    Two paths, by size:
    - Small weights (and all weights on GPUs) keep W_eff for the backward: sign(W_eff) is sign(W) on
      survivors and 0 elsewhere, so g * sign(W_eff) gives the threshold's gradient terms and a
      second multiplication by it the masked weight gradient: three multi-tensor calls for the
      whole group and one sum per layer, where on small layers the cost is per call.
    - Big weights on the CPU, where the costly part of a pass is not the arithmetic but writing
      into freshly allocated memory (the kernel faults its pages in: 5.2 ms against 0.8 ms for
      2.9M weights, measured on 2 cores): W_eff is written into the owner's buffer, the masked
      gradient overwrites the incoming gradient (the layer's fresh weight gradient, which nothing
      else holds), and sign(W) goes into one scratch chunk that stays in the cache. The buffer is
      only lent while nobody else holds the previous W_eff (a weak reference tells), so two
      forwards before one backward, or ``retain_graph``, stay correct: they get fresh memory.
    On GPUs the threshold stays a tensor, so no step waits for a host copy.
    """

    @staticmethod
    def forward(ctx, s: Tensor, owners: Sequence[SoftThreshold | None], *weights: Tensor) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)  # an unused W_eff (another task's head) gets no gradient
        ctx.s_dtype = s.dtype
        on_cpu = _on_host(weights[0])
        # On the CPU the kernels take t as a number; reading it costs nothing there.
        t = threshold_value_checked(float(s)) if on_cpu else threshold_tensor(s)
        ctx.t, ctx.owners = t, owners
        ctx.buffered = [on_cpu and owner is not None and weight.numel() >= BUFFER_MIN_NUMEL
                        for weight, owner in zip(weights, owners)]
        outputs = tuple(_shrink_into_buffer(weight, t, owner) if buffered else _shrink(weight, t)
                        for weight, owner, buffered in zip(weights, owners, ctx.buffered))
        ctx.save_for_backward(*(weight if buffered else output
                                for weight, output, buffered in zip(weights, outputs, ctx.buffered)))
        return outputs

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        saved = ctx.saved_tensors
        needs_s = ctx.needs_input_grad[0]
        grad_weights: list[Tensor | None] = [None] * len(grads)
        partial_sums = []
        listed = [i for i, grad in enumerate(grads) if grad is not None and not ctx.buffered[i]]
        if listed:
            signs = torch._foreach_sign([saved[i] for i in listed])  # sign(W_eff)
            terms = torch._foreach_mul([grads[i] for i in listed], signs)
            if needs_s:
                # One sum per layer, not a sum of their concatenation: on GPUs, where every layer
                # takes this path, that would copy whole heads.
                partial_sums.extend(term.sum() for term in terms)
            torch._foreach_mul_(terms, signs)  # g * sign^2: g on survivors, 0 elsewhere
            for i, grad_weight in zip(listed, terms):
                grad_weights[i] = grad_weight
        for i, grad in enumerate(grads):
            if grad is None or not ctx.buffered[i]:
                continue
            grad_weights[i], signed_sum = _buffered_backward(grad, saved[i], ctx.t, needs_s)
            if needs_s:
                partial_sums.append(signed_sum)
        grad_s = None
        if partial_sums:
            total = partial_sums[0] if len(partial_sums) == 1 else torch.stack(partial_sums).sum()
            t = ctx.t if isinstance(ctx.t, float) else ctx.t.to(total.dtype)
            grad_s = total * (t * (t - 1.0))  # -total * dsigmoid(s)
            if grad_s.dtype != ctx.s_dtype:
                grad_s = grad_s.to(ctx.s_dtype)
        for i, needed in enumerate(ctx.needs_input_grad[2:]):
            if not needed:
                grad_weights[i] = None
        return (grad_s, None, *grad_weights)


class NonFiniteThresholdError(FloatingPointError):
    """A threshold parameter became NaN or infinite (a diverged optimizer step)."""

    def __init__(self, index: int | None = None):
        super().__init__("a soft threshold is not finite")
        self.index = index


def threshold_value_checked(s: float) -> float:
    """The threshold value of ``s`` (:func:`adapmtl_cli.counting.threshold_value`), refusing a
    non-finite ``s``: softshrink would fail on a NaN lambda with an unhelpful message."""
    t = threshold_value(s)
    if not math.isfinite(t):
        raise NonFiniteThresholdError()
    return t


def threshold_tensor(s: Tensor) -> Tensor:
    """The threshold values of ``s`` on its device, by the rule of :mod:`adapmtl_cli.counting`:
    sigmoid in float64, rounded once to float32 (no host synchronisation)."""
    return torch.sigmoid(s.detach().double()).float()


def _on_host(weight: Tensor) -> bool:
    """CPU path (threshold read as a number, buffers) or device path (threshold kept a tensor)."""
    return weight.device.type == "cpu"


def soft_shrink(weight: Tensor, s: Tensor) -> Tensor:
    """W_eff of one weight (no persistent buffer): the group function with a group of one."""
    return SoftShrinkGroup.apply(s, (None,), weight)[0]


def _shrink(weight: Tensor, t: float | Tensor) -> Tensor:
    if isinstance(t, float):
        return torch.nn.functional.softshrink(weight, t)
    if t.dtype != weight.dtype:  # even a no-op .to() costs microseconds
        t = t.to(weight.dtype)
    return weight - torch.clamp(weight, -t, t)


def _shrink_into_buffer(weight: Tensor, t: float, owner: SoftThreshold) -> Tensor:
    buffer = owner.lend_buffer(weight)
    if buffer is None:
        return torch.nn.functional.softshrink(weight, t)
    torch.ops.aten.softshrink.out(weight, t, out=buffer)
    return owner.lent(buffer.detach())


def _buffered_backward(grad: Tensor, weight: Tensor, t: float, with_sum: bool):
    """The masked gradient of a big CPU layer and, when ``with_sum``, sum(grad * sign(W)) over
    survivors. Done in chunks of ``CHUNK_NUMEL`` that stay in the cache: masking the gradient in
    place, writing sign(W) into a scratch chunk and the dot then read main memory once instead of
    three times (measured: 27 against 37 ms for twelve layers of 2.9M weights on 2 cores). The
    scratch is one chunk reused for every chunk of every layer, so it never leaves the cache:
    writing sign(W) into a per-layer buffer instead wrote all of it back to memory (41.8 against
    34.3 ms for twelve such layers)."""
    flat_grad, flat_weight = _memory_order(grad), _memory_order(weight)
    if flat_grad is None or flat_weight is None or grad.stride() != weight.stride() or not _writable(grad):
        # Rare (a gradient we may not overwrite, mismatched layouts): whole-tensor passes.
        grad_weight = torch.ops.aten.softshrink_backward(grad, weight, t)
        return grad_weight, (_dot(grad_weight, weight.sign()) if with_sum else None)
    if not with_sum:
        for g, w in zip(flat_grad.split(CHUNK_NUMEL), flat_weight.split(CHUNK_NUMEL)):
            torch.ops.aten.softshrink_backward.grad_input(g, w, t, grad_input=g)
        return grad, None
    scratch = _scratch_chunk(weight.dtype)
    sums = []
    for g, w in zip(flat_grad.split(CHUNK_NUMEL), flat_weight.split(CHUNK_NUMEL)):
        torch.ops.aten.softshrink_backward.grad_input(g, w, t, grad_input=g)
        sums.append(torch.dot(g, torch.sign(w, out=scratch[: w.numel()])))
    return grad, torch.stack(sums).sum()


_scratch = threading.local()


def _scratch_chunk(dtype: torch.dtype) -> Tensor:
    """One CPU chunk of ``dtype`` per thread, reused by every layer, so it stays in the cache."""
    chunks = _scratch.__dict__.setdefault("chunks", {})
    chunk = chunks.get(dtype)
    if chunk is None:
        chunk = chunks[dtype] = torch.empty(CHUNK_NUMEL, dtype=dtype)
    return chunk


def _count_at_most(weight: Tensor, t: float) -> Tensor:
    """How many |W| <= t. A big layer's are the zeros of W_eff = softshrink(W, t), counted chunk
    by chunk in a reused scratch chunk as numel - sum(sign(W_eff)^2), a dot of -1, 0 and 1 that
    is exact (a chunk's count is an integer below 2**24): for 512k values in the cache, sign and
    dot take 73 us where a comparison into a bool mask and ``count_nonzero`` take 305 us. With
    the NaN probe below, the count of the 38M-weight MobileNetV2 model is 10-25% faster than the
    compare-and-count one (27.5 against 30.8 ms, 33.7 against 44.8 ms). Small layers, where the
    cost is per call, take the three-call count."""
    flat = _memory_order(weight)
    if flat is None or weight.numel() < BUFFER_MIN_NUMEL or weight.dtype not in (torch.float32, torch.float64):
        return torch.count_nonzero(weight.abs() <= t)
    scratch = _scratch_chunk(weight.dtype)
    survivors, probes = [], []
    for chunk in flat.split(CHUNK_NUMEL):
        signs = scratch[: chunk.numel()]
        torch.ops.aten.softshrink.out(chunk, t, out=signs)
        torch.sign(signs, out=signs)
        survivors.append(torch.dot(signs, signs))
        # softshrink's vectorised kernel maps NaN to 0, which would count it as a zero; any NaN
        # (or inf) in the chunk makes this dot non-finite.
        probes.append(torch.dot(chunk, signs))
    if not math.isfinite(torch.stack(probes).sum()):
        return torch.count_nonzero(weight.abs() <= t)
    return weight.numel() - torch.stack(survivors).double().sum().to(torch.int64)  # float32 would round above 2**24


def _memory_order(x: Tensor) -> Tensor | None:
    """A 1-d view of ``x`` in memory order (contiguous, any number of dimensions, or a 4-d conv
    weight in channels_last), or None (e.g. a transposed 2-d weight: callers then take whole-tensor
    passes)."""
    if x.is_contiguous():
        return x.view(-1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return None


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b) as one BLAS dot, walking both tensors in memory order (no copy when their
    layouts agree, channels_last included)."""
    if a.stride() != b.stride():
        b = torch.empty_like(a).copy_(b)
    if a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last):
        a, b = a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)
    return torch.dot(a.reshape(-1), b.reshape(-1))


def _writable(grad: Tensor) -> bool:
    """May the backward overwrite ``grad``: dense, unshared memory and no graph being built."""
    return not torch.is_grad_enabled() and (grad.is_contiguous() or grad.is_contiguous(memory_format=torch.channels_last))


class SoftThreshold(nn.Module):
    """The parametrization of one layer weight (Conv2d or Linear): soft shrink by sigmoid of a
    shared scalar.

    The threshold parameter lives in the :class:`Sparsifier`; this module only points at it, so
    each threshold is stored once however many layers share it. Inside the model's forward it hands
    out the W_eff the sparsifier built for its whole group; elsewhere it shrinks its own weight. It
    also owns the layer's persistent W_eff buffer (CPU only, never saved): ``layer.weight`` returns a
    view of it, which the next forward overwrites once nobody holds it any more; clone it to keep it.
    """

    def __init__(self, sparsifier: Sparsifier, index: int, layer: int):
        super().__init__()
        # A plain attribute, not a submodule: registering it would make a cycle in the module tree.
        object.__setattr__(self, "_sparsifier", sparsifier)
        self.index = index  # of the threshold
        self.layer = layer  # of the weight in the sparsifier's layer list
        self._buffer: Tensor | None = None
        self._lent_to = None  # weak reference to the last W_eff handed out

    def forward(self, weight: Tensor) -> Tensor:
        prepared = self._sparsifier._prepared
        if prepared is not None:
            return prepared[self.layer]
        return SoftShrinkGroup.apply(self._sparsifier.thresholds[self.index], (self,), weight)[0]

    def lend_buffer(self, like: Tensor) -> Tensor | None:
        """The persistent buffer shaped like ``like``, or None while the last W_eff is still held."""
        if self._lent_to is not None and self._lent_to() is not None:
            return None
        buffer = self._buffer
        if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype or buffer.stride() != like.stride():
            buffer = self._buffer = torch.empty_like(like, memory_format=torch.preserve_format)
        return buffer

    def lent(self, alias: Tensor) -> Tensor:
        self._lent_to = weakref.ref(alias)
        return alias

    def __getstate__(self):
        # Buffers and weak references do not travel (deepcopy, pickling for DataLoader workers).
        state = self.__dict__.copy()
        state["_buffer"], state["_lent_to"] = None, None
        return state


def _submodule(model: nn.Module, component: str, module: nn.Module | str) -> nn.Module:
    if isinstance(module, nn.Module):
        return module
    try:
        return model.get_submodule(module)
    except AttributeError:
        raise ValueError(f"component {component!r}: the model has no submodule {module!r}") from None


@dataclass(frozen=True)
class SparseLayer:
    """One sparsified (or merely counted) Conv2d or Linear weight."""

    key: str  # state-dict key of the weight in the plain (unparametrized) model, e.g. "heads.normal.fc1.conv1.weight"
    component: str
    threshold: str | None  # name of its threshold; None when the layer is only counted (dense models)
    numel: int


class Sparsifier(nn.Module):
    """Owns the thresholds of a model and counts the sparsity of its layer weights: every
    ``nn.Conv2d`` and ``nn.Linear`` (``SPARSIFIED_LAYER_TYPES``, subclasses included) inside the
    components, never their biases.

    ``components`` maps a component name (``backbone``, ``head.<task>``, or any name) to the
    submodule that holds its layers, given as the module or as its dotted path in ``model``
    (``"encoder.layer3"``); layers outside every component stay dense. The sparsifier attaches
    itself as ``model.sparsifier``, so the thresholds are parameters of the model: an optimizer
    over ``model.parameters()`` trains them. With ``enabled=False`` no threshold is attached and
    the layers are only counted (exact zeros of the weights), so dense and pruned models report
    sparsity the same way.
    """

    def __init__(
        self,
        model: nn.Module,
        components: dict[str, nn.Module | str],
        *,
        enabled: bool = True,
        granularity: Granularity = "component",
        init: float = -15.0,
    ):
        super().__init__()
        components = {name: _submodule(model, name, module) for name, module in components.items()}
        self.enabled = enabled
        self.granularity = granularity
        self.threshold_names: list[str] = []
        self.thresholds = nn.ParameterList()
        self.layers: list[SparseLayer] = []
        self.component_names = list(components)
        # Plain list: the layers belong to the model, not to us.
        self._layer_modules: list[nn.Module] = []
        self._threshold_of_layer: list[int] = []
        self._owners: list[SoftThreshold] = []
        # Each parametrized layer's ParametrizationList, which holds the raw W as ``.original``:
        # reaching it through the layer costs 5 us a layer, per forward.
        self._holders: list[nn.Module] = []
        # Every layer's W_eff while the model's forward runs (built by one autograd node per
        # threshold in the pre-hook), None outside it.
        self._prepared: list[Tensor] | None = None
        prefixes = {id(module): name for name, module in model.named_modules()}
        for component, module in components.items():
            for layer in module.modules():
                if isinstance(layer, SPARSIFIED_LAYER_TYPES):
                    self._add_layer(prefixes[id(layer)], component, layer, init)
        if not self.layers:
            raise ValueError("no Conv2d or Linear layer found in the components to sparsify")
        self._register_index_buffers()
        self._groups = [[layer for layer, index in enumerate(self._threshold_of_layer) if index == threshold]
                        for threshold in range(len(self.threshold_names))]
        self._group_owners = [tuple(self._owners[layer] for layer in layers) for layers in self._groups]
        if self.enabled:
            model.register_forward_pre_hook(self._build_effective_weights)
            model.register_forward_hook(self._drop_effective_weights, always_call=True)
        model.sparsifier = self  # the thresholds become parameters of the model

    def forward(self, x):
        """Identity. The sparsifier is a child module of the model it sparsifies (so the thresholds
        are the model's parameters), and an ``nn.Sequential`` model calls every child in turn."""
        return x

    # -- construction ------------------------------------------------------------------------

    def _threshold_name(self, layer_name: str, component: str) -> str:
        if self.granularity == "component":
            return component
        if self.granularity == "layer":
            return layer_name
        return "global"

    @property
    def _convs(self) -> list[nn.Module]:
        """The old name of ``_layer_modules`` (from when only convs were sparsified)."""
        return self._layer_modules

    def _add_layer(self, layer_name: str, component: str, module: nn.Module, init: float) -> None:
        threshold = None
        index = -1
        if self.enabled:
            threshold = self._threshold_name(layer_name, component)
            if threshold not in self.threshold_names:
                self.threshold_names.append(threshold)
                self.thresholds.append(nn.Parameter(torch.tensor(float(init))))
            index = self.threshold_names.index(threshold)
            owner = SoftThreshold(self, index, len(self.layers))
            parametrize.register_parametrization(module, "weight", owner, unsafe=True)
            self._owners.append(owner)
            self._holders.append(module.parametrizations["weight"])
        self._layer_modules.append(module)
        self._threshold_of_layer.append(index)
        self.layers.append(SparseLayer(f"{layer_name}.weight", component, threshold, module.weight.numel()))

    def _register_index_buffers(self) -> None:
        # Non-persistent: derived from the model's structure, never saved.
        self.register_buffer("_layer_numel", torch.tensor([l.numel for l in self.layers], dtype=torch.float64), persistent=False)

    # -- the forward -------------------------------------------------------------------------

    def _build_effective_weights(self, module: nn.Module, args) -> None:
        prepared: list[Tensor | None] = [None] * len(self.layers)
        holders = self._holders
        for threshold, layers, owners in zip(self.thresholds, self._groups, self._group_owners):
            effective = SoftShrinkGroup.apply(threshold, owners, *[holders[layer].original for layer in layers])
            for layer, weight in zip(layers, effective):
                prepared[layer] = weight
        self._prepared = prepared

    def _drop_effective_weights(self, module: nn.Module, args, output) -> None:
        # Dropping our references lets the next forward reuse the buffers once backward is done.
        self._prepared = None

    # -- the numbers -------------------------------------------------------------------------

    def raw_weight(self, layer: int) -> Tensor:
        if self.enabled:
            return self._holders[layer].original
        module = self._layer_modules[layer]
        if parametrize.is_parametrized(module, "weight"):
            return module.parametrizations.weight.original
        return module.weight

    def threshold_values(self) -> Tensor:
        """t = sigmoid(s) of every threshold, float32, in ``threshold_names`` order, by the one
        rule of :mod:`adapmtl_cli.counting` (what the forward shrinks by and every count uses)."""
        if not self.enabled:
            return torch.zeros(0)
        s = torch.stack(list(self.thresholds)).detach()
        if _on_host(s):
            return torch.tensor([threshold_value(v) for v in s.tolist()], dtype=torch.float32)
        return threshold_tensor(s)

    @torch.no_grad()
    def layer_zeros(self) -> Tensor:
        """Zeros of W_eff per layer, as float64 on the weights' device; no host synchronisation.

        W_eff is zero exactly where |W| <= sigmoid(s), so the effective weights are never built.
        The stop rule asks for this every step, so on the CPU it counts big layers in cache-sized
        chunks (``_count_at_most``): a whole-tensor ``(|W| <= t).sum()`` writes two temporaries
        and widens the mask to int64, 6.6x slower on 47M weights (377 against 57 ms) than a
        chunked compare-and-count, which the present dot of signs beats by another 10-25%.
        """
        counts = []
        thresholds = self.threshold_values() if self.enabled else None
        if thresholds is not None and _on_host(self.raw_weight(0)):
            thresholds = thresholds.tolist()  # on the CPU reading numbers costs nothing
        for layer, index in enumerate(self._threshold_of_layer):
            weight = self.raw_weight(layer).detach()
            if index < 0:
                counts.append(weight.numel() - torch.count_nonzero(weight))
            elif isinstance(thresholds, list):
                counts.append(_count_at_most(weight, thresholds[index]))
            else:
                counts.append((weight.abs() <= thresholds[index].to(weight.dtype)).sum())
        return torch.stack(counts).to(torch.float64)

    @torch.no_grad()
    def overall_sparsity(self) -> Tensor:
        """Overall fraction of zero layer weights (Conv2d and Linear), a 0-d tensor on the device."""
        return self.layer_zeros().sum() / self._layer_numel.sum()

    @torch.no_grad()
    def stats(self) -> SparsityStats:
        """Layer, component and overall zero counts plus thresholds, copied to the host once."""
        zeros = self.layer_zeros()
        thresholds = self.threshold_values().detach().double().to(zeros.device)
        values = torch.cat([zeros, thresholds]).cpu().tolist()  # the one host copy
        n_layers = len(self.layers)
        return SparsityStats.from_counts(self.component_names, self.layers, [int(v) for v in values[:n_layers]],
                                         dict(zip(self.threshold_names, values[n_layers:])))

    def thresholds_of(self, names: list[str] | None) -> list[nn.Parameter]:
        """The threshold parameters of the given threshold names (all when ``names`` is empty)."""
        if not names:
            return list(self.thresholds)
        return [p for n, p in zip(self.threshold_names, self.thresholds) if n in names]


@dataclass
class SparsityStats:
    """Zero counts and the fractions made from them by the one rule of :mod:`adapmtl_cli.counting`."""

    overall: float
    components: dict[str, float]
    layers: dict[str, float]
    thresholds: dict[str, float]
    component_params: dict[str, int]
    component_zeros: dict[str, int]
    layer_zeros: dict[str, int]

    @classmethod
    def from_counts(cls, component_names: list[str], layers: list[SparseLayer], layer_zeros: list[int],
                    thresholds: dict[str, float]) -> SparsityStats:
        params = dict.fromkeys(component_names, 0)
        zeros = dict.fromkeys(component_names, 0)
        for layer, count in zip(layers, layer_zeros):
            params[layer.component] += layer.numel
            zeros[layer.component] += count
        report = sparsity_report(zeros, params)
        return cls(overall=report["overall"], components=report["components"],
                   layers={layer.key: count / layer.numel for layer, count in zip(layers, layer_zeros)},
                   thresholds=thresholds, component_params=params, component_zeros=zeros,
                   layer_zeros={layer.key: count for layer, count in zip(layers, layer_zeros)})

    @property
    def zeros(self) -> int:
        return sum(self.component_zeros.values())

    def __str__(self) -> str:
        """Per component, then per layer: sparsity %, zeros / weights, threshold."""
        lines = [f"overall {100 * self.overall:6.2f}% ({self.zeros} / {sum(self.component_params.values())} zeros)"]
        for name, value in self.components.items():
            threshold = self.thresholds.get(name)
            shown = "" if threshold is None else f", threshold {threshold:.3g}"
            lines.append(f"  {name}: {100 * value:6.2f}% ({self.component_zeros[name]} / {self.component_params[name]}{shown})")
        for key, value in self.layers.items():
            lines.append(f"    {key}: {100 * value:6.2f}%")
        return "\n".join(lines)

    def as_report(self) -> dict:
        """The ``sparsity`` and ``thresholds`` parts of the one report shape (docs/internals.md)."""
        return {"sparsity": sparsity_report(self.component_zeros, self.component_params),
                "thresholds": dict(self.thresholds)}


class FreezeController:
    """The reference's stop rule: once overall sparsity >= target, thresholds stop moving.

    ``observe`` takes the overall sparsity of the current weights (the trainer counts it once per
    check, packed with the losses into its single host copy of the step); ``after_backward``, called
    between backward and the optimizer step, sets the grads of the frozen thresholds to None, which
    makes Adam skip them entirely: no update, no weight decay, moments kept. Weights keep training;
    if sparsity falls below the target again, the thresholds move again. All named thresholds freeze
    together. ``freeze_only`` restricts the rule to some thresholds (the reference's QUIRK freezes
    only three heads by name); empty means all. The weights are identical on every rank under DDP,
    so every rank takes the same decision.
    """

    def __init__(self, sparsifier: Sparsifier, target: float, check_every: int = 1, freeze_only: list[str] | None = None):
        self.sparsifier = sparsifier
        self.target = target
        self.check_every = check_every
        self.frozen = False
        self.last_overall = 0.0
        self._params = sparsifier.thresholds_of(freeze_only or [])
        self._step = 0  # steps completed (after_step), so a loop that never observes still checks on time
        self._observed = False

    def wants_check(self, step: int) -> bool:
        return self.sparsifier.enabled and step % self.check_every == 0

    def observe(self, overall: float) -> None:
        self.last_overall = overall
        self.frozen = overall >= self.target
        self._observed = True

    def after_backward(self) -> None:
        # A loop that did not observe this step's sparsity (a user's own) gets it counted here.
        if not self._observed and self.wants_check(self._step):
            self.observe(float(self.sparsifier.overall_sparsity()))
        self._observed = False
        if self.frozen:
            for param in self._params:
                param.grad = None

    def after_step(self, done: int) -> None:
        self._step = done

    def outcome_note(self, stats: SparsityStats) -> str | None:
        """One line for the summary when the run did not end at its target (None when it did)."""
        note = target_note(self.target, stats)
        if note is None:
            return None
        if all(value == 1.0 for value in stats.thresholds.values()):
            return f"{note}: every threshold is 1 (sigmoid of sparsity.init rounds to 1) and zeroes every weight; lower sparsity.init"
        if stats.overall > self.target:
            return f"{note}: weights under the frozen thresholds kept collapsing (sparsity.control=schedule lands on it)"
        if all(value == 0.0 for value in stats.thresholds.values()):
            return f"{note}: thresholds never rose above 0; raise sparsity.init (or use sparsity.control=schedule)"
        return f"{note}; raise sparsity.init or optim.weight_decay, or use sparsity.control=schedule"

    def state_dict(self) -> dict:
        return {"frozen": self.frozen, "last_overall": self.last_overall}

    def load_state_dict(self, state: dict) -> None:
        self.frozen = bool(state["frozen"])
        self.last_overall = float(state["last_overall"])


# A run "reaches" its target when it ends this close to it (a fraction of all weights).
TARGET_TOLERANCE = 0.005


def target_note(target: float, stats: SparsityStats) -> str | None:
    """'target not reached: ...' or 'target overshot: ...' when the overall sparsity ended more
    than ``TARGET_TOLERANCE`` away from ``target``; None when it landed."""
    if abs(stats.overall - target) <= TARGET_TOLERANCE:
        return None
    verb = "target not reached" if stats.overall < target else "target overshot"
    return f"{verb}: overall sparsity {stats.overall:.2%}, target {target:.2%}"


def effective_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state with every parametrized weight replaced by its effective value W_eff,
    under plain keys: what a deployed dense model loads."""
    state = plain_state_dict(model)
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            state[f"{name}.weight"] = module.weight.detach().clone()
    return state


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state under plain keys: ``layer.parametrizations.weight.original`` becomes
    ``layer.weight`` (the raw W), threshold parameters are left out (stored separately)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("sparsifier."):
            continue
        state[key.replace(".parametrizations.weight.original", ".weight")] = value
    return state


def planned_sparsity(step: int, total_steps: int, target: float, start: float, end: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: ``initial`` until ``start * total_steps``, then rising fast and
    flattening out to ``target`` at ``end * total_steps``, ``target`` after."""
    t0, t1 = start * total_steps, end * total_steps
    if step <= t0:
        return initial
    if step >= t1:
        return target
    progress = (step - t0) / (t1 - t0)
    return target + (initial - target) * (1.0 - progress) ** 3


class ScheduleController:
    """Drive the overall sparsity along a planned curve and land on the target.

    After each optimizer step (every ``check_every`` steps, and always at the last one) every
    threshold is multiplied by one common factor k chosen so that the overall sparsity equals the
    plan: a weight is zero iff |W| / t_layer <= k, so k is the plan's quantile of the normalised
    magnitudes u = |W| / t over all sparsified weights (from a fixed random sample of at most
    ``sample_size`` of them on big models, which is within a few hundredths of a point). Because k
    is common, the *ratios* between thresholds, which the optimizer keeps learning through the task
    gradients, still decide how sparsity is shared among components: the controller sets the
    total, the components compete for it. Weights identical on every rank give the same k
    everywhere under DDP.
    """

    def __init__(self, sparsifier: Sparsifier, target: float, total_steps: int, start: float = 0.1, end: float = 0.7,
                 check_every: int = 1, sample_size: int = 262_144, final_sample_size: int = 16_000_000, seed: int = 0,
                 report_every: int = 10):
        self.sparsifier = sparsifier
        self.target = target
        self.total_steps = total_steps
        self.start, self.end = start, end
        self.check_every = check_every
        self.sample_size = sample_size
        self.final_sample_size = final_sample_size
        self.seed = seed
        self.report_every = report_every
        self.last_overall = 0.0
        self.planned = 0.0
        self.frozen = False  # never: thresholds always learn; kept for a uniform interface
        self._samples: dict[tuple[int, str], list[Tensor | None]] = {}
        self.initial: float | None = None

    def wants_check(self, step: int) -> bool:
        # The controller needs no count to act (it sets the sparsity); counting is for reports.
        return self.sparsifier.enabled and (step + 1) % self.report_every == 0

    def observe(self, overall: float) -> None:
        self.last_overall = overall

    def after_backward(self) -> None:
        return None

    @torch.no_grad()
    def after_step(self, done: int) -> None:
        """Re-scale the thresholds to the plan at ``done`` completed steps."""
        if not self.sparsifier.enabled or done <= self.start * self.total_steps:
            return
        if done % self.check_every and done != self.total_steps:
            return
        if self.initial is None:
            # The plan starts from where the run is, so the controller never undoes sparsity the
            # thresholds reached on their own before the plan began.
            self.initial = min(float(self.sparsifier.overall_sparsity()), self.target)
        self.planned = planned_sparsity(done, self.total_steps, self.target, self.start, self.end, self.initial)
        # Within a few hundredths of a point on the way; at the last step (nearly) exact.
        size = self.final_sample_size if done == self.total_steps else self.sample_size
        log_thresholds = torch.nn.functional.logsigmoid(torch.stack(list(self.sparsifier.thresholds)).detach().double())
        log_factor = self._log_quantile_factor(self.planned, size, log_thresholds)
        scaled = (log_thresholds + log_factor).clamp(LOG_T_MIN, LOG_T_MAX)
        # s = logit(t) from log t, finite for any t in (0, 1), however small.
        s = scaled - torch.log(-torch.expm1(scaled))
        for param, value in zip(self.sparsifier.thresholds, s.to(self.sparsifier.thresholds[0].device)):
            param.copy_(value.to(param.dtype))

    def _log_quantile_factor(self, fraction: float, sample_size: int, log_thresholds: Tensor) -> Tensor:
        """log k, k the common factor that puts ``fraction`` of the (sampled) weights under their
        thresholds. Worked in log space: a threshold that underflowed to 0 (sInit -1000: sigmoid
        is exactly 0 in float32, and |W| / t would be inf) still has a finite log, so it can grow,
        and the ratios between thresholds are kept however far apart they are."""
        sparsifier = self.sparsifier
        # Thresholds relative to the largest, in (0, 1]: u = |W| / r never overflows float64.
        relative = torch.exp(log_thresholds - log_thresholds.max())
        pieces = []
        device = sparsifier.raw_weight(0).device
        relative = relative.to(device)
        for layer, (index, positions) in enumerate(zip(sparsifier._threshold_of_layer, self._sample_positions(sample_size, device))):
            weight = sparsifier.raw_weight(layer).detach().flatten()
            if positions is not None:
                weight = weight[positions]
            pieces.append(weight.abs().double() / relative[index])
        normalised = torch.cat(pieces)
        rank = min(normalised.numel(), max(1, math.ceil(fraction * normalised.numel())))
        if normalised.device.type == "cpu":
            # numpy's introselect is about 10x faster than torch.kthvalue on the CPU (0.27 against
            # 2.6 ms for the demo's 183k weights), and exact all the same.
            import numpy as np

            quantile = float(np.partition(normalised.numpy(), rank - 1)[rank - 1])
        else:
            quantile = float(normalised.kthvalue(rank).values)
        # A quantile of 0 (the plan asks for no more zeros than the exact zeros) needs no threshold.
        log_quantile = math.log(quantile) if quantile > 0 else LOG_T_MIN
        return torch.tensor(log_quantile, dtype=torch.float64) - log_thresholds.max()

    def _sample_positions(self, sample_size: int, device: torch.device) -> list[Tensor | None]:
        """Fixed random positions per layer, drawn once (the same on every rank) and kept on the
        weights' device: a share of ``sample_size`` proportional to the layer's size; None = the
        whole layer."""
        key = (sample_size, str(device))
        if key not in self._samples:
            layers = self.sparsifier.layers
            total = sum(layer.numel for layer in layers)
            keep = min(1.0, sample_size / total)
            generator = torch.Generator().manual_seed(self.seed)
            positions = []
            for layer in layers:
                if keep >= 1.0:
                    positions.append(None)
                else:
                    count = max(1, round(layer.numel * keep))
                    positions.append(torch.randint(layer.numel, (count,), generator=generator).to(device))
            self._samples[key] = positions
        return self._samples[key]

    def outcome_note(self, stats: SparsityStats) -> str | None:
        """One line for the summary when the run did not end at its target (None when it did):
        only weights above 1, which no sigmoid threshold reaches, can keep it off."""
        note = target_note(self.target, stats)
        return None if note is None else f"{note}: weights above 1 in magnitude cannot be thresholded"

    def state_dict(self) -> dict:
        return {"last_overall": self.last_overall, "planned": self.planned, "initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        self.last_overall = float(state["last_overall"])
        self.planned = float(state.get("planned", 0.0))
        self.initial = state.get("initial")
