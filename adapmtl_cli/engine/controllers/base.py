"""The interface every sparsity controller implements, written down once.

A controller decides how the thresholds move. The trainer calls, each step (engine/trainer.py):
``wants_check(step)`` - should this step's overall sparsity be counted (packed into the step's one
host copy) and handed to ``observe(overall)``; ``after_backward()`` between backward and the
optimizer step; ``after_step(done)`` after it. ``outcome_note(stats)`` is the run's one-line verdict
for the summary; ``state_dict``/``load_state_dict`` travel in ``state.safetensors``. The trainer
never asks which controller it has.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

# A run "reaches" its target when it ends this close to it (a fraction of all weights).
TARGET_TOLERANCE = 0.005


@runtime_checkable
class SparsityController(Protocol):
    last_overall: float  # the last observed overall sparsity (progress bars)

    def wants_check(self, step: int) -> bool: ...
    def observe(self, overall: float) -> None: ...
    def after_backward(self) -> None: ...
    def after_step(self, done: int) -> None: ...
    def outcome_note(self, stats) -> str | None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def target_note(target: float, stats) -> str | None:
    """'target not reached: ...' or 'target overshot: ...' when the overall sparsity ended more
    than ``TARGET_TOLERANCE`` away from ``target``; None when it landed."""
    if abs(stats.overall - target) <= TARGET_TOLERANCE:
        return None
    verb = "target not reached" if stats.overall < target else "target overshot"
    return f"{verb}: overall sparsity {stats.overall:.2%}, target {target:.2%}"


class ControllerGroup:
    """Several controllers acting as one (a run's controller plus the mask keeper of a pruned
    model's finetuning): every hook goes to each in order. The state is the first one's; the
    others must be stateless (masks travel with the model)."""

    def __init__(self, primary: SparsityController, *others: SparsityController):
        self.members = [primary, *others]

    @property
    def primary(self) -> SparsityController:
        return self.members[0]

    @property
    def last_overall(self) -> float:
        return self.primary.last_overall

    def wants_check(self, step: int) -> bool:
        return any(member.wants_check(step) for member in self.members)

    def observe(self, overall: float) -> None:
        for member in self.members:
            member.observe(overall)

    def after_backward(self) -> None:
        for member in self.members:
            member.after_backward()

    def after_step(self, done: int) -> None:
        for member in self.members:
            member.after_step(done)

    def outcome_note(self, stats) -> str | None:
        return next((note for member in self.members if (note := member.outcome_note(stats))), None)

    def state_dict(self) -> dict:
        return self.primary.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.primary.load_state_dict(state)
