"""The interface every task-weighting strategy implements.

A strategy sees the detached per-task losses of each step (``update``) and gives the weights of a
total loss (``weights``): total = sum_t priority_t * w_t * L_t, with w_t a constant. Whether those
weights are for the step just recorded or for the next one is ``weighs_current_step``. It knows how
many tasks there are, never which.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class TaskWeighting(ABC):
    def __init__(self, num_tasks: int):
        if num_tasks < 1:
            raise ValueError("at least one task is needed")
        self.num_tasks = num_tasks

    @property
    def weighs_current_step(self) -> bool:
        """Whether ``weights`` is read after the current step's ``update`` (the reference's order,
        paper mode: the trainer reads the losses to the host before the backward), or before it
        (weights from the earlier steps, no host read between forward and backward)."""
        return False

    @abstractmethod
    def weights(self) -> Tensor:
        """The weights, shape [num_tasks], for the current step's total loss (CPU float64)."""

    def update(self, losses: Tensor, step: int) -> None:
        """Record step ``step``'s per-task losses (a CPU tensor of shape [num_tasks])."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        return None

    def _check(self, losses: Tensor) -> Tensor:
        losses = torch.as_tensor(losses).detach().to("cpu", torch.float64).flatten()
        if losses.numel() != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} task losses, got {losses.numel()}")
        return losses
