"""The soft shrink of STR (Kusupati et al. 2020) as one autograd function per threshold.

W_eff = sign(W) * relu(|W| - t), t = sigmoid(s) by the one rule of ``adapmtl_cli.counting``, with
exactly the gradients of REFERENCE.md 1 (dW_eff/dW = 1 where |W| > t and 0 elsewhere, dW_eff/dt =
-sign(W) on survivors). ``SoftShrinkGroup`` works on every weight that shares one threshold at once:
a Python autograd node costs about 100 us each way, which on a small model was most of the soft
threshold's price (benchmarks/RESULTS.md, "Step overhead"). On the CPU big layers keep W_eff in
persistent buffers and work in cache-sized chunks; ``count_at_most`` counts zeros the same way.
"""

from __future__ import annotations

import math
import threading
from typing import Sequence

import torch
from torch import Tensor

from adapmtl_cli.counting import threshold_value

# A big layer's backward works in chunks of this many weights (2 MiB of float32 per tensor), so
# that its three passes meet in the cache.
CHUNK_NUMEL = 1 << 19
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
    def forward(ctx, s: Tensor, owners: Sequence, *weights: Tensor) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)  # an unused W_eff (another task's head) gets no gradient
        ctx.s_dtype = s.dtype
        on_cpu = on_host(weights[0])
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


def on_host(weight: Tensor) -> bool:
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


def _shrink_into_buffer(weight: Tensor, t: float, owner) -> Tensor:
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


def count_at_most(weight: Tensor, t: float) -> Tensor:
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
