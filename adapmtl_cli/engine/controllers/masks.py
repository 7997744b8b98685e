"""The mask keeper of a pruned model's finetuning: pruned weights stay exactly zero."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from adapmtl_cli.engine.pruning import _masked_layers, apply_masks

_OPTIMIZER_STATE_SKIP = ("step",)


class MaskKeeper:
    """Keeps pruned weights exactly zero through finetuning.

    - a gradient hook on each masked raw weight zeroes the pruned entries of every gradient as it is
      computed (so grads are masked even if ``after_backward`` is forgotten, under GradScaler and
      DDP alike); ``after_backward()`` zeroes them again explicitly (idempotent);
    - ``after_step()`` re-zeroes the pruned weights after the optimizer step and, if an optimizer was
      given, zeroes the pruned entries of its per-parameter state (Adam's moments, SGD momentum).

    Why exact under Adam with coupled weight decay: with g = 0 and w = 0 the decayed gradient
    g + wd * w is 0, so fresh moments stay 0 and the update is 0 / (sqrt(0) + eps) = 0; moments
    left over from dense training before pruning would still move the weight, which is why the
    weights are re-zeroed after every step and the moments cleared. Adam is elementwise, so none
    of this touches the surviving weights.

    It is a controller (controllers/base.py): a pruned model's finetuning runs it next to the run's
    own controller in a ``ControllerGroup``; it needs no sparsity count and keeps no state (the
    masks travel with the model). Call :meth:`remove` to drop the gradient hooks.
    """

    last_overall = 0.0

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None = None,
                 hooks: bool = True, apply: bool = True):
        self.masks = dict(masks)
        self.optimizer = optimizer
        self._layers = _masked_layers(model, masks)
        self._handles = []
        if apply:
            apply_masks(model, masks)
        if optimizer is not None:
            self.clear_optimizer_state(optimizer)
        if hooks:
            for weight, mask in self._layers:
                pruned = ~mask
                self._handles.append(weight.register_hook(lambda grad, pruned=pruned: grad.masked_fill(pruned, 0.0)))

    @torch.no_grad()
    def after_backward(self) -> None:
        for weight, mask in self._layers:
            if weight.grad is not None:
                weight.grad.masked_fill_(~mask, 0.0)

    @torch.no_grad()
    def after_step(self, done: int | None = None) -> None:
        for weight, mask in self._layers:
            weight.masked_fill_(~mask, 0.0)
        if self.optimizer is not None:
            self.clear_optimizer_state(self.optimizer)

    @torch.no_grad()
    def clear_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the pruned entries of every per-parameter state tensor shaped like the weight."""
        for weight, mask in self._layers:
            state = optimizer.state.get(weight)
            if not state:
                continue
            for name, value in state.items():
                if name in _OPTIMIZER_STATE_SKIP or not isinstance(value, Tensor) or value.shape != weight.shape:
                    continue
                value.masked_fill_(~mask.to(value.device), 0)

    def wants_check(self, step: int) -> bool:
        return False  # the masks fix the zeros: nothing to count

    def observe(self, overall: float) -> None:
        return None

    def outcome_note(self, stats) -> str | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
