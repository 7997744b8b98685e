"""AdapMTL's adaptive task weighting (REFERENCE.md 3).

From (0-based) step ``begin`` on, each step appends, per task, the relative change of its loss
between consecutive mini-batches, d_t = |L_t(i-1) - L_t(i)| / L_t(i), to a window of the last
``window`` values. Once the window is full, a task's raw weight is the mean of its window (a task
whose loss still moves gets more weight); before that it is 1. The weights of a step come from the
values recorded at earlier steps, so with begin 5000 and window 500 the window fills at step index
5499 and first weighs the loss at step index 5500 (the 5501st step). The weights are renormalised to
sum to the number of tasks T (QUIRK: the reference always uses 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from adapmtl_cli.engine.weighting.base import TaskWeighting


class AdaptiveWeighting(TaskWeighting):
    def __init__(self, num_tasks: int, begin: int = 5000, window: int = 500, normalise_to: float | None = None):
        super().__init__(num_tasks)
        self.begin = begin
        self.window = window
        self.normalise_to = float(num_tasks if normalise_to is None else normalise_to)
        # A ring buffer of relative changes, [window, T], filled up to `count` values.
        self._changes = torch.zeros(window, num_tasks, dtype=torch.float64)
        self._count = 0
        self._previous: Tensor | None = None

    def weights(self) -> Tensor:
        if self._count < self.window:
            raw = torch.ones(self.num_tasks, dtype=torch.float64)
        else:
            raw = self._changes.mean(dim=0)
        total = raw.sum()
        if total <= 0:  # every loss perfectly flat over the window: nothing to prefer
            raw = torch.ones(self.num_tasks, dtype=torch.float64)
            total = raw.sum()
        return raw * (self.normalise_to / total)

    def update(self, losses: Tensor, step: int) -> None:
        losses = self._check(losses)
        if step >= self.begin and self._previous is not None:
            change = (self._previous - losses).abs() / losses.clamp_min(1e-12)
            self._changes[self._count % self.window] = change
            self._count += 1
        self._previous = losses.clone()

    def state_dict(self) -> dict[str, Tensor]:
        previous = self._previous if self._previous is not None else torch.full((self.num_tasks,), float("nan"), dtype=torch.float64)
        return {"changes": self._changes.clone(), "count": torch.tensor(self._count), "previous": previous.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self._changes = state["changes"].to(torch.float64).clone()
        self._count = int(state["count"])
        previous = state["previous"].to(torch.float64)
        self._previous = None if torch.isnan(previous).any() else previous.clone()
