"""AdapMTL's adaptive task weighting (REFERENCE.md 3).

At (0-based) step ``begin`` a task's loss only seeds the previous value; from step ``begin + 1``
on, each step records, per task, the relative change of its loss between consecutive mini-batches,
d_t(i) = |L_t(i-1) - L_t(i)| / L_t(i). Once ``window + 1`` changes have been recorded (the
reference trims its list back to ``window`` values only when it holds ``window + 1``), a task's raw
weight is the mean of its last ``window`` changes (a task whose loss still moves gets more weight);
before that it is 1. The weights are renormalised to sum to the number of tasks T (QUIRK: the
reference always uses 3).

When the weights multiply a step's loss depends on the order the trainer calls ``update`` and
``weights`` in:

- ``current_step=True`` (paper mode, the reference's order): step i's losses are recorded first,
  so the weight multiplying L_t(i) already includes d_t(i). The first adaptive weight multiplies
  the loss of step index ``begin + window + 1`` (5501 with begin 5000, window 500), the mean of
  d(i - window + 1) .. d(i). The trainer reads the losses to the host before the backward for it.
- ``current_step=False`` (standard mode, a deliberate difference): a step is weighted with what
  was recorded at earlier steps, so the trainer needs no host read between the forward and the
  backward. The weights lag one step: the mean of d(i - window) .. d(i - 1), first adaptive at
  step index ``begin + window + 2``.

The trainer asks ``weighs_current_step`` which order to use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adapmtl_cli.engine.weighting.base import TaskWeighting


class AdaptiveWeighting(TaskWeighting):
    """AdapMTL's task weights: each task's mean relative loss change over the last ``window``
    steps, from step ``begin`` on, renormalised to sum to the number of tasks (module doc).

    Each step: ``weights()`` (a CPU float64 tensor, one weight per task) multiplies the losses;
    ``update(losses, step)`` records the step's detached per-task losses.
    """

    def __init__(self, num_tasks: int, begin: int = 5000, window: int = 500, normalise_to: float | None = None,
                 current_step: bool = False):
        super().__init__(num_tasks)
        self.current_step = bool(current_step)
        self.begin = begin
        self.window = window
        self.normalise_to = float(num_tasks if normalise_to is None else normalise_to)
        # A ring buffer of the last `window` relative changes, [window, T]; `count` changes recorded in all.
        self._changes = torch.zeros(window, num_tasks, dtype=torch.float64)
        self._count = 0
        self._previous: Tensor | None = None

    @property
    def weighs_current_step(self) -> bool:
        return self.current_step

    def weights(self) -> Tensor:
        # The reference sets the weights only once its list holds window + 1 changes.
        if self._count <= self.window:
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
        if step > self.begin and self._previous is not None:  # the loss at `begin` only seeds
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
