"""The reference's stop rule as a controller (REFERENCE.md 1)."""

from __future__ import annotations

from adapmtl_cli.engine.controllers.base import target_note


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

    def __init__(self, sparsifier, target: float, check_every: int = 1, freeze_only: list[str] | None = None,
                 counts_itself: bool = True):
        self.sparsifier = sparsifier
        self.target = target
        self.check_every = check_every
        self.frozen = False
        self.last_overall = 0.0
        self._params = sparsifier.thresholds_of(freeze_only or [])
        # A user's loop gets the sparsity counted in after_backward, on the steps wants_check
        # picks (after_step keeps the step); the trainer hands the counts in through observe
        # (packed into its one host copy), so builders pass counts_itself=False.
        self.counts_itself = counts_itself
        self._step = 0

    def wants_check(self, step: int) -> bool:
        return self.sparsifier.enabled and step % self.check_every == 0

    def observe(self, overall: float) -> None:
        self.last_overall = overall
        self.frozen = overall >= self.target

    def after_backward(self) -> None:
        if self.counts_itself and self.wants_check(self._step):
            self.observe(float(self.sparsifier.overall_sparsity()))
        if self.frozen:
            for param in self._params:
                param.grad = None

    def after_step(self, done: int) -> None:
        self._step = done

    def outcome_note(self, stats) -> str | None:
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
