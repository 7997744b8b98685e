"""One-shot pruning criteria and masks for the comparison methods (REFERENCE.md 10).

Everything here works on the layers of ``model.sparsifier`` (every Conv2d and Linear weight of the
components, in the sparsifier's fixed order; both kinds alike, as scores are per weight whatever
its shape) and knows nothing about task names: tasks are the keys of the loss dict, and which
layers a task owns is read off the autograd graph of its loss.

Masks
    ``dict[str, torch.BoolTensor]`` keyed by ``SparseLayer.key`` (the plain state-dict key of the
    layer weight, e.g. ``heads.normal.fc1.conv1.weight``), same shape as the weight, True = keep.

The one ratio rule (every criterion: magnitude, SNIP, DiSparse, random)
    ``ratio`` is the fraction of the *currently non-zero* weights of a group to remove. Existing
    zeros are always pruned and are not counted in the ratio. In a group with ``n`` non-zero
    weights exactly ``round_half_up(ratio * n)`` of them are removed: the ones with the lowest
    score (|w| for magnitude, |g * w| for SNIP/DiSparse, a uniform draw for random). Ties are broken
    by a stable order: the layer order of the group (the ``weights`` dict's order, or the
    sparsifier's layer order), then the flat index inside the layer; among equal scores the earlier
    weight is removed first. So the kept weights are exactly those with score > the sorted
    threshold, except that a run of ties straddling the threshold is split by that order.
    At initialisation (no zeros) this is the fraction of all weights, SNIP's usual definition.

Scopes (what a group is)
    ``global``: all given layers together; ``component``: each component (``backbone``,
    ``head.<task>``) separately; ``layer``: each Conv2d or Linear weight separately.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from adapmtl_cli.engine.prune_methods import METHODS, SCOPES
from adapmtl_cli.keys import plain_key

Scope = str  # a name of SCOPES
Masks = dict[str, Tensor]



# -- small helpers -------------------------------------------------------------------------------


def _check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not (0.0 <= ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"pruning ratio must be in [0, 1], got {ratio}")
    return ratio


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"pruning scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return scope


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def removal_count(ratio: float, nonzeros: int) -> int:
    """How many of ``nonzeros`` non-zero weights a group loses at ``ratio``: round half up."""
    return min(nonzeros, _round_half_up(_check_ratio(ratio) * nonzeros))


def _group_of(key: str, components: Mapping[str, str], scope: str) -> str:
    if scope == "global":
        return "global"
    if scope == "layer":
        return key
    try:
        return components[key]
    except KeyError:
        raise ValueError(f"no component given for layer {key!r}") from None


def _groups(keys: Iterable[str], components: Mapping[str, str], scope: str) -> dict[str, list[str]]:
    """Group name -> its layer keys, both in first-appearance order."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(_group_of(key, components, scope), []).append(key)
    return groups


def _removal_order(scores: Mapping[str, Tensor], nonzero: Mapping[str, Tensor], keys: list[str]) -> tuple[Tensor, int, int]:
    """The group's weights in removal order (existing zeros first, then ascending score, stable),
    as flat indices into the concatenation of ``keys``; plus its zero and non-zero counts."""
    score = torch.cat([scores[k].detach().flatten().double() for k in keys])
    alive = torch.cat([nonzero[k].flatten() for k in keys]).to(score.device)
    if not torch.isfinite(score[alive]).all():
        raise ValueError("pruning scores are not finite (NaN or inf weights or gradients)")
    score = torch.where(alive, score, torch.full_like(score, -math.inf))
    order = torch.sort(score, stable=True).indices
    n_alive = int(alive.sum())
    return order, score.numel() - n_alive, n_alive


def _split(flat: Tensor, like: Mapping[str, Tensor], keys: list[str]) -> dict[str, Tensor]:
    out, start = {}, 0
    for key in keys:
        n = like[key].numel()
        out[key] = flat[start:start + n].view(like[key].shape)
        start += n
    return out


def masks_from_scores(scores: Mapping[str, Tensor], nonzero: Mapping[str, Tensor], components: Mapping[str, str],
                      ratio: float, scope: Scope) -> Masks:
    """Keep masks from per-weight scores under the module's ratio and tie rules (see the module doc).

    ``nonzero[key]`` marks the currently non-zero weights; the others are always pruned.
    """
    ratio, scope = _check_ratio(ratio), _check_scope(scope)
    masks: Masks = {}
    for keys in _groups(scores, components, scope).values():
        order, zeros, alive = _removal_order(scores, nonzero, keys)
        keep = torch.ones(order.numel(), dtype=torch.bool, device=order.device)
        keep[order[:zeros + removal_count(ratio, alive)]] = False
        masks.update(_split(keep, scores, keys))
    return {key: masks[key].to(scores[key].device) for key in scores}


# -- reading the model ---------------------------------------------------------------------------


def layer_weights(model: nn.Module, effective: bool = False) -> dict[str, Tensor]:
    """Every sparsifier layer's weight (detached), keyed by ``SparseLayer.key``, in layer order.

    ``effective=False``: the raw weight W (what masks are applied to); ``True``: what the layer
    computes with (W_eff = soft shrink of W when the sparsifier is enabled), e.g. to prune an STR
    checkpoint by its effective magnitudes.
    """
    sparsifier = model.sparsifier
    out = {}
    for i, layer in enumerate(sparsifier.layers):
        if effective:  # a copy: W_eff may live in a buffer that the next forward overwrites
            out[layer.key] = sparsifier._layer_modules[i].weight.detach().clone()
        else:
            out[layer.key] = sparsifier.raw_weight(i).detach()
    return out


def layer_components(model: nn.Module) -> dict[str, str]:
    """Layer key -> its component name (``backbone``, ``head.<task>``)."""
    return {layer.key: layer.component for layer in model.sparsifier.layers}


def mask_sparsity(masks: Mapping[str, Tensor], components: Mapping[str, str] | None = None) -> dict:
    """Pruned fractions of a mask set: ``{"overall": f, "components": {name: f}}``."""
    pruned = {k: int((~m).sum()) for k, m in masks.items()}
    numel = {k: m.numel() for k, m in masks.items()}
    total = sum(numel.values())
    result = {"overall": sum(pruned.values()) / total if total else 0.0, "components": {}}
    if components is not None:
        per: dict[str, list[int]] = {}
        for key in masks:
            acc = per.setdefault(components[key], [0, 0])
            acc[0] += pruned[key]
            acc[1] += numel[key]
        result["components"] = {c: p / n if n else 0.0 for c, (p, n) in per.items()}
    return result


# -- criteria ------------------------------------------------------------------------------------


def magnitude_masks(weights: Mapping[str, Tensor], components: Mapping[str, str], ratio: float,
                    scope: Scope = "global") -> Masks:
    """Magnitude pruning (IMP's prune step, REFERENCE.md 10).

    Removes ``round_half_up(ratio * n)`` of the ``n`` currently non-zero weights of each group (all
    weights for ``global``, each component, each layer): those of smallest |w|; keeps |w| > the
    threshold found by sorting the non-zero magnitudes. Existing zeros are always pruned and do not
    count in the ratio. Ties: among equal magnitudes, the weight earlier in the ``weights`` dict's
    order (then by flat index) is removed first. ``components`` maps each key to its component.
    """
    nonzero = {k: w.detach() != 0 for k, w in weights.items()}
    scores = {k: w.detach().abs() for k, w in weights.items()}
    return masks_from_scores(scores, nonzero, components, ratio, scope)


def random_masks(weights: Mapping[str, Tensor], components: Mapping[str, str], ratio: float, scope: Scope = "global",
                 generator: torch.Generator | None = None) -> Masks:
    """Random pruning: the same counts as :func:`magnitude_masks` (ratio of the current non-zeros per
    group, existing zeros pruned), the removed weights drawn uniformly with ``generator``."""
    scores = {}
    for key, weight in weights.items():
        draw = torch.rand(weight.shape, generator=generator, dtype=torch.float64,
                          device=generator.device if generator is not None else "cpu")
        scores[key] = draw
    nonzero = {k: (w.detach() != 0).cpu() for k, w in weights.items()}
    masks = masks_from_scores(scores, nonzero, components, ratio, scope)
    return {k: m.to(weights[k].device) for k, m in masks.items()}


@contextlib.contextmanager
def _buffers_preserved(model: nn.Module):
    """Run forwards for saliency without side effects on buffers (BatchNorm running statistics)."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _model_device(model: nn.Module) -> torch.device:
    return model.sparsifier.raw_weight(0).device


def _to(value, device):
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _task_gradients(model: nn.Module, batches: Iterable, loss_fn: Callable, per_task: bool):
    """Mean over batches of the gradients of the losses w.r.t. every layer's raw weight.

    ``per_task=False``: one entry ``None`` -> {layer index: grad of the summed task losses};
    ``per_task=True``: task -> {layer index: grad of that task's loss}, only for the layers its loss
    reaches (a task's loss does not reach the other tasks' heads).
    """
    sparsifier = model.sparsifier
    params = [sparsifier.raw_weight(i) for i in range(len(sparsifier.layers))]
    device = _model_device(model)
    sums: dict = {}
    count = 0
    with _buffers_preserved(model), torch.enable_grad():
        for image, targets in batches:
            outputs = model(_to(image, device))
            losses = loss_fn(outputs, _to(targets, device))
            if not isinstance(losses, Mapping) or not losses:
                raise TypeError("loss_fn must return a non-empty dict {task: scalar loss tensor}")
            if per_task:
                items = list(losses.items())
            else:
                items = [(None, sum(losses.values()))]
            for n, (task, loss) in enumerate(items):
                grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=n < len(items) - 1)
                acc = sums.setdefault(task, {})
                for i, grad in enumerate(grads):
                    if grad is None:
                        continue
                    if i in acc:
                        acc[i] += grad.detach()
                    else:
                        acc[i] = grad.detach().clone()
            count += 1
    if count == 0:
        raise ValueError("saliency needs at least one batch")
    return {task: {i: g / count for i, g in acc.items()} for task, acc in sums.items()}


def snip_saliency(model: nn.Module, batches: Iterable, loss_fn: Callable) -> dict[str, Tensor]:
    """SNIP saliency |g * w| per layer key, at the current raw weights w, with g the mean over the
    batches of the gradient of the summed task losses (= the gradient of their mean loss). A layer
    the loss does not reach gets saliency 0."""
    sparsifier = model.sparsifier
    grads = _task_gradients(model, batches, loss_fn, per_task=False)[None]
    out = {}
    for i, layer in enumerate(sparsifier.layers):
        weight = sparsifier.raw_weight(i).detach()
        grad = grads.get(i)
        out[layer.key] = (grad * weight).abs() if grad is not None else torch.zeros_like(weight)
    return out


def snip_masks(model: nn.Module, batches: Iterable, loss_fn: Callable, ratio: float, scope: Scope = "global") -> Masks:
    """SNIP (REFERENCE.md 10): keep the top weights by saliency |g * w| (:func:`snip_saliency`).

    ``batches``: iterable of ``(image, targets)``; ``loss_fn(outputs, targets) -> {task: loss}``,
    the total is their sum. ``ratio`` follows the module's rule: the fraction of the currently
    non-zero weights of each group to remove (at initialisation, where nothing is zero, this is the
    fraction of all weights); existing zeros stay pruned; ties removed in layer order then index.
    The forwards run in the model's current train/eval mode; its parameters, ``.grad`` and buffers
    (BatchNorm running statistics) are left untouched.
    """
    ratio, scope = _check_ratio(ratio), _check_scope(scope)
    scores = snip_saliency(model, batches, loss_fn)
    weights = layer_weights(model)
    nonzero = {k: w != 0 for k, w in weights.items()}
    return masks_from_scores(scores, nonzero, layer_components(model), ratio, scope)


def disparse_saliency(model: nn.Module, batches: Iterable, loss_fn: Callable) -> dict[str, dict[str, Tensor]]:
    """Per task, the SNIP saliency |g_t * w| from that task's loss alone, for the layers it reaches
    (the shared backbone and its own head): ``{task: {layer key: saliency}}``."""
    sparsifier = model.sparsifier
    grads = _task_gradients(model, batches, loss_fn, per_task=True)
    out = {}
    for task, per_layer in grads.items():
        out[task] = {sparsifier.layers[i].key: (g * sparsifier.raw_weight(i).detach()).abs()
                     for i, g in sorted(per_layer.items())}
    return out


class _DisparseSelector:
    """Per-task removal orders, precomputed once, so the union for any per-task ratio is cheap."""

    def __init__(self, saliency: dict[str, dict[str, Tensor]], weights: dict[str, Tensor],
                 components: Mapping[str, str], scope: str):
        self.weights = weights
        self.nonzero = {k: w != 0 for k, w in weights.items()}
        self.plans = []  # per task: list of (keys, rank of each weight in the removal order, zeros, alive)
        for task, scores in saliency.items():
            plan = []
            for keys in _groups(scores, components, scope).values():
                order, zeros, alive = _removal_order(scores, self.nonzero, keys)
                rank = torch.empty_like(order)
                rank[order] = torch.arange(order.numel(), device=order.device)
                plan.append((keys, rank, zeros, alive))
            self.plans.append(plan)
        self.total_alive = sum(int(m.sum()) for m in self.nonzero.values())

    def masks(self, ratio: float) -> Masks:
        union: Masks = {}
        for plan in self.plans:
            for keys, rank, zeros, alive in plan:
                keep = _split(rank >= zeros + removal_count(ratio, alive), self.weights, keys)
                for key, mask in keep.items():
                    union[key] = union[key] | mask if key in union else mask
        # Layers no task reaches keep their non-zero weights.
        return {k: union.get(k, self.nonzero[k]).to(w.device) for k, w in self.weights.items()}

    def removed(self, masks: Masks) -> int:
        return sum(int((self.nonzero[k] & ~m.to(self.nonzero[k].device)).sum()) for k, m in masks.items())


def disparse_masks(model: nn.Module, batches: Iterable, loss_fn: Callable, ratio: float, scope: Scope = "global",
                   match_overall: bool = False, return_task_ratio: bool = False):
    """DiSparse (REFERENCE.md 10): per-task SNIP saliency, union of the per-task keep masks.

    For each task t (a key of ``loss_fn``'s dict) the saliency |g_t * w| is computed from t's loss
    alone over the layers it reaches: the shared backbone and t's own head (the other heads get no
    gradient from it). Each task keeps its top weights at the per-task ratio (the module's rule:
    ``round_half_up(ratio * n)`` of the ``n`` non-zero weights of each group of the task's layers
    removed, groups by ``scope`` within the task's layers, existing zeros pruned, stable ties). A
    weight reached by several tasks (the backbone) is kept if ANY task keeps it; a weight reached by
    one task (its head) follows that task's mask; a layer no loss reaches keeps its non-zeros.

    The union makes the backbone denser than ``ratio``, so with ``match_overall=False`` (the method
    as published) the overall pruned fraction is below ``ratio``. With ``match_overall=True`` the
    common per-task ratio r is found by bisection on [0, 1] (to float resolution) so that the union
    removes as close as possible to ``round_half_up(ratio * N)`` of all ``N`` currently non-zero
    weights of the model's layers. The removed count is a non-decreasing step function of r, so the
    result is the achievable count nearest to the target: exact unless one step of r drops several
    weights at once (e.g. a backbone weight that several tasks let go of together, or two groups
    whose round(r * n) change at the same r); the lower count wins a tie.
    ``return_task_ratio=True`` returns ``(masks, per_task_ratio)``.
    """
    ratio, scope = _check_ratio(ratio), _check_scope(scope)
    saliency = disparse_saliency(model, batches, loss_fn)
    selector = _DisparseSelector(saliency, layer_weights(model), layer_components(model), scope)
    task_ratio = ratio
    masks = selector.masks(ratio)
    if match_overall:
        target = removal_count(ratio, selector.total_alive)
        lo, hi = 0.0, 1.0
        masks_lo, masks_hi = selector.masks(lo), selector.masks(hi)
        removed_lo, removed_hi = selector.removed(masks_lo), selector.removed(masks_hi)
        if removed_lo >= target:
            hi, masks_hi, removed_hi = lo, masks_lo, removed_lo
        # Bisect to float resolution (at most ~60 halvings): the bracket then holds one jump.
        while removed_hi != target:
            mid = 0.5 * (lo + hi)
            if not lo < mid < hi:
                break
            masks_mid = selector.masks(mid)
            removed_mid = selector.removed(masks_mid)
            if removed_mid >= target:
                hi, masks_hi, removed_hi = mid, masks_mid, removed_mid
            else:
                lo, masks_lo, removed_lo = mid, masks_mid, removed_mid
        if removed_hi - target < target - removed_lo:
            task_ratio, masks = hi, masks_hi
        else:
            task_ratio, masks = lo, masks_lo
    return (masks, task_ratio) if return_task_ratio else masks


def compute_masks(model: nn.Module, method: str, ratio: float, scope: Scope = "global", *, batches: Iterable | None = None,
                  loss_fn: Callable | None = None, generator: torch.Generator | None = None,
                  effective: bool = False, match_overall: bool = False) -> Masks:
    """One entry point for the workflows: ``method`` is a name of ``METHODS``; ``generator`` and
    ``match_overall`` reach the methods whose functions take them (random; DiSparse)."""
    spec, function, options = _resolve(method, generator=generator, match_overall=match_overall)
    if spec.needs_data:
        if batches is None or loss_fn is None:
            raise ValueError(f"{method} pruning needs batches and a loss_fn")
        return function(model, batches, loss_fn, ratio, scope, **options)
    return function(layer_weights(model, effective), layer_components(model), ratio, scope, **options)


def weight_masks(method: str, weights: Mapping[str, Tensor], components: Mapping[str, str], ratio: float,
                 scope: Scope = "global", *, generator: torch.Generator | None = None) -> Masks:
    """Masks of a method scored from the weights alone (``needs_data=False``) on bare tensors, with
    no model (a checkpoint saved from Python without a config)."""
    spec, function, options = _resolve(method, generator=generator)
    if spec.needs_data:
        raise ValueError(f"{method} pruning scores through the model's forward; it cannot work on bare weights")
    return function(weights, components, ratio, scope, **options)


def _resolve(method: str, **optional):
    """The method's entry, its masks function, and those of ``optional`` its signature names."""
    import inspect

    spec = METHODS.get(method)
    if spec is None:
        raise ValueError(f"pruning method must be one of {', '.join(METHODS)}, got {method!r}")
    function = globals()[spec.function]
    parameters = inspect.signature(function).parameters
    return spec, function, {name: value for name, value in optional.items() if name in parameters}


# -- applying and keeping masks ------------------------------------------------------------------


def _masked_layers(model: nn.Module, masks: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """(raw weight parameter, mask on its device) for every masked layer; checks keys and shapes."""
    sparsifier = model.sparsifier
    index = {layer.key: i for i, layer in enumerate(sparsifier.layers)}
    unknown = [k for k in masks if k not in index]
    if unknown:
        raise KeyError(f"mask for unknown layer {unknown[0]!r}: not a sparsified Conv2d or Linear weight of this model")
    out = []
    for key, mask in masks.items():
        weight = sparsifier.raw_weight(index[key])
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"mask {key!r} has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
        out.append((weight, mask.to(device=weight.device, dtype=torch.bool)))
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero the pruned weights in place on the raw weight parameters (``sparsifier.raw_weight``).

    Layers without a mask are left alone. With the soft threshold enabled, a zero raw weight is a
    zero effective weight too.
    """
    for weight, mask in _masked_layers(model, masks):
        weight.masked_fill_(~mask, 0.0)


# -- iterative pruning and LTH -------------------------------------------------------------------


def iterative_schedule(final_ratio: float, steps: int, total: int | None = None) -> list[float]:
    """Per-stage ratios (each the fraction of the then-remaining non-zeros to remove) so that after
    ``steps`` prune stages the overall pruned fraction is ``final_ratio``.

    Without ``total``: every stage removes r = 1 - (1 - final)^(1/steps); with per-stage rounding
    the final count can be off by up to about steps / 2 weights. With ``total`` (the number of
    weights pruned as one group, non-zero at the start, i.e. ``global`` scope): the stage targets
    are the integers remaining_i = round_half_up(total * (1 - final)^(i/steps)) (the last exactly
    total - round_half_up(final * total)), and stage i's ratio is 1 - remaining_i / remaining_{i-1},
    which :func:`magnitude_masks` turns back into exactly those counts.
    """
    final_ratio = _check_ratio(final_ratio)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"iterative pruning needs at least one stage, got {steps}")
    steps = int(steps)
    if total is None:
        per = 1.0 - (1.0 - final_ratio) ** (1.0 / steps)
        return [per] * steps
    remaining = [int(total)]
    for i in range(1, steps + 1):
        if i == steps:
            remaining.append(int(total) - removal_count(final_ratio, int(total)))
        else:
            remaining.append(_round_half_up(total * (1.0 - final_ratio) ** (i / steps)))
    ratios = []
    for before, after in zip(remaining, remaining[1:]):
        ratios.append(0.0 if before == 0 else 1.0 - after / before)
    return ratios


@torch.no_grad()
def rewind(model: nn.Module, initial_state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """LTH rewind: every tensor of ``initial_state`` (plain keys, as ``plain_state_dict`` gives them:
    layer weights under ``<module>.weight`` even when parametrized; biases, norms and buffers too if
    present) is copied back into the model, then the pruned weights are zeroed: survivors hold
    exactly their initial values, pruned weights are 0. Thresholds are not touched."""
    targets = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if key.startswith("sparsifier."):
            continue
        targets[plain_key(key)] = value
    missing = [k for k in initial_state if k not in targets]
    if missing:
        raise KeyError(f"initial state has {missing[0]!r}, which the model does not have")
    for key, value in initial_state.items():
        target = targets[key]
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"initial state {key!r} has shape {tuple(value.shape)}, the model {tuple(target.shape)}")
        target.copy_(value)
    apply_masks(model, masks)
