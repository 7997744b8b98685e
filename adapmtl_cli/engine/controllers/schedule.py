"""The schedule controller: the overall sparsity follows Zhu and Gupta's cubic plan and lands on
the target, whatever sInit, weight decay and learning rate (README, "Hitting the requested
sparsity"; figures in benchmarks/RESULTS.md, "Landing on the target")."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from adapmtl_cli.engine.controllers.base import target_note

# Bounds of log t the schedule controller sets: t < 1 (sigmoid never reaches it; t that rounds to
# 1 in float32 zeroes every weight under 1) and s >= about -1e4 (an s of -inf would make Adam's
# coupled L2 gradient infinite).
LOG_T_MAX = math.log1p(-1e-7)
LOG_T_MIN = -1e4


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

    def __init__(self, sparsifier, target: float, total_steps: int, start: float = 0.1, end: float = 0.7,
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

    def outcome_note(self, stats) -> str | None:
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
