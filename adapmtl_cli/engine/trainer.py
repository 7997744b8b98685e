"""The AdapMTL training loop over plain objects, single process or DistributedDataParallel.

The trainer receives everything it uses, already built: the model (with ``model.sparsifier``
attached), the tasks (losses), the optimizer, the scheduler, the task weighting, the sparsity
controller and a few callbacks. It reads no Config and writes no file; turning a Config into these
objects, the run folder, logging and checkpoints are the caller's (``adapmtl_cli/run.py`` for the
CLI, or a user's own script).

One step, top to bottom:
  1. forward; per-task losses L_t
  2. total = sum_t priority_t * w_t * L_t with the weighting's current (constant) weights
  3. backward
  4. bookkeeping with ONE host copy: the losses (averaged over ranks) and, when the controller
     asks, the overall sparsity; a non-finite loss stops the run before the weights change
  5. ``controller.after_backward()`` (the stop rule freezes thresholds at the target; the mask
     keeper zeroes pruned gradients), the weighting update
  6. optimizer step (Adam, coupled L2 on every parameter), scheduler step,
     ``controller.after_step(done)`` (the schedule rescales thresholds)
  7. every callback's ``on_step_end(trainer, done, record)`` (logging, validation, checkpoints)
Paper mode (the weighting's ``weighs_current_step``) follows the reference's order instead: after
1, the losses are averaged over ranks and read to the host (a non-finite one stops the run), the
weighting records them, and 2 uses weights that already include this step's loss change; 4 then
reads only the sparsity. Standard mode deliberately weighs step i with the changes recorded up to
step i - 1 (weights one step behind the reference's), which saves that host read between the
forward and the backward (engine/weighting/adaptive.py).
"""

from __future__ import annotations

import math
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor, nn

from adapmtl_cli.engine import distributed as dist_utils
from adapmtl_cli.engine.evaluator import autocast_context
from adapmtl_cli.engine.shrink import NonFiniteThresholdError


class TrainingDiverged(FloatingPointError):
    """A loss, a threshold or a parameter stopped being finite. ``weights_good`` says whether the
    model still holds the weights from before the failing step (a loss is checked before the
    update; a threshold or parameter found non-finite was set by an earlier update)."""

    def __init__(self, step: int, what: str, weights_good: bool):
        super().__init__(f"training diverged at step {step + 1}: {what} is not finite")
        self.step, self.what, self.weights_good = step, what, weights_good


class TrainerCallback(Protocol):
    """What the trainer calls after every step; it may raise to stop the run."""

    def on_step_end(self, trainer: Trainer, done: int, record: dict) -> None: ...


class Trainer:
    """``fit(batches, start_step)`` trains ``model`` for ``steps - start_step`` steps.

    ``priorities`` (one per task, default 1) multiply the weighting's weights. ``ddp_model`` is the
    module the forward goes through (a DistributedDataParallel wrapper of ``model``), ``model``
    itself by default. ``controller`` is any ``SparsityController`` (engine/controllers/base.py);
    the trainer never asks which, and hands it the counts it asks for (a ``FreezeController``
    here takes ``counts_itself=False``).
    """

    def __init__(self, model: nn.Module, tasks: dict, optimizer: torch.optim.Optimizer, scheduler, weighting, controller,
                 *, steps: int, device: torch.device, priorities: Tensor | None = None, amp: str = "none",
                 channels_last: bool = False, callbacks: Sequence[TrainerCallback] = (), ddp_model: nn.Module | None = None):
        self.model = model
        self.sparsifier = model.sparsifier
        self.tasks = tasks
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.weighting = weighting
        self.controller = controller
        self.steps = steps
        self.device = device
        self.priorities = priorities if priorities is not None else torch.ones(len(tasks), dtype=torch.float64)
        self.amp = amp
        self.channels_last = channels_last
        self.callbacks = list(callbacks)
        self.ddp_model = ddp_model if ddp_model is not None else model
        self._mask_keeper = None
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def attach_masks(self, masks: dict[str, Tensor]) -> None:
        """Hold pruned weights at exactly zero from now on (gradients, weights, Adam moments): a
        mask keeper joins the controller (again on resume, replacing the previous one)."""
        from adapmtl_cli.engine.controllers import ControllerGroup, MaskKeeper

        if self._mask_keeper is not None:
            self._mask_keeper.remove()
            self.controller = self.controller.primary
        self.model.masks = {key: mask.to(self.device) for key, mask in masks.items()}
        self._mask_keeper = MaskKeeper(self.model, self.model.masks, optimizer=self.optimizer)
        self.controller = ControllerGroup(self.controller, self._mask_keeper)

    # -- the loop ----------------------------------------------------------------------------

    def fit(self, batches: Iterator, start_step: int = 0) -> None:
        """Train from ``start_step`` to ``steps``; ``batches`` yields ``(image, targets)``."""
        self.model.train()
        for step in range(start_step, self.steps):
            image, targets = next(batches)
            try:
                record = self.train_step(step, image, targets)
            except NonFiniteThresholdError:
                # Set by the previous update: this step's weights are not good ones.
                raise TrainingDiverged(step, "a soft threshold", weights_good=False) from None
            for callback in self.callbacks:
                callback.on_step_end(self, step + 1, record)

    def train_step(self, step: int, image: Tensor, targets: dict[str, Tensor]) -> dict:
        image = image.to(self.device, non_blocking=True)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
        current = self.weighting.weighs_current_step  # paper mode: the reference's order
        if not current:
            weights = self.weighting.weights() * self.priorities
        with autocast_context(self.device, self.amp):
            outputs = self.ddp_model(image)
        losses = torch.stack([task.loss(outputs[name].float(), targets[name]) for name, task in self.tasks.items()])
        if current:
            # Step i's losses update the weights that multiply them: one more host read per step.
            task_losses = losses.detach().to(torch.float64, copy=True)  # reduced in place: never the graph's
            dist_utils.all_reduce_mean_(task_losses)  # every rank then weighs identically
            task_losses = task_losses.cpu()
            self._check_losses(step, task_losses)
            self.weighting.update(task_losses, step)
            weights = self.weighting.weights() * self.priorities
        total = (weights.to(self.device, losses.dtype) * losses).sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()

        check = self.controller.wants_check(step)
        parts = [] if current else [losses.detach().double()]  # paper mode has read the losses
        if check:
            parts.append(self.sparsifier.overall_sparsity().view(1).to(device=losses.device, dtype=torch.float64))
        if parts:
            packed = torch.cat(parts)
            dist_utils.all_reduce_mean_(packed)  # every rank then weighs and freezes identically
            host = packed.cpu()  # the step's one host synchronisation (standard mode)
        if not current:
            task_losses = host[: len(self.tasks)]
            self._check_losses(step, task_losses)
            self.weighting.update(task_losses, step)
        if check:
            self.controller.observe(float(host[-1]))
        self.controller.after_backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.controller.after_step(step + 1)
        return {
            "losses": dict(zip(self.tasks, task_losses.tolist())),
            "weights": dict(zip(self.tasks, weights.tolist())),
            "total": float((weights * task_losses).sum()),
            "overall": float(host[-1]) if check else None,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _check_losses(self, step: int, task_losses: Tensor) -> None:
        if not torch.isfinite(task_losses).all():
            bad = [name for name, value in zip(self.tasks, task_losses.tolist()) if not math.isfinite(value)]
            raise TrainingDiverged(step, f"the loss of task {bad[0]!r}", weights_good=True)

    def check_finite_parameters(self, done: int) -> None:
        """Before a validation or the end: the update of step ``done`` is checked by no loss yet,
        and a model with a non-finite weight or threshold must never be saved as best or final."""
        with torch.no_grad():
            bad = next((name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise TrainingDiverged(done - 1, f"parameter {bad!r} after the update", weights_good=False)
