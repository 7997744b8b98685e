"""The AdapMTL training loop, single process or DistributedDataParallel.

One step, top to bottom:
  1. forward; per-task losses L_t
  2. total = sum_t priority_t * w_t * L_t with the weighting's current (constant) weights
  3. backward
  4. bookkeeping with ONE host copy: the losses (averaged over ranks) and, on check steps, the
     overall sparsity; a non-finite loss stops the run before the weights change
  5. the stop rule (freeze thresholds at the target), the weighting update
  6. optimizer step (Adam, coupled L2 on every parameter), StepLR step
Paper mode (the weighting's ``weighs_current_step``) follows the reference's order instead: after
1, the losses are averaged over ranks and read to the host (a non-finite one stops the run), the
weighting records them, and 2 uses weights that already include this step's loss change; 4 then
reads only the sparsity. Standard mode deliberately weighs step i with the changes recorded up to
step i - 1 (weights one step behind the reference's), which saves that host read between the
forward and the backward (engine/weighting/adaptive.py).
Every ``val_every`` steps: validation, ``best.safetensors`` among evaluations at the target
sparsity, ``state.safetensors`` for ``--resume``. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from adapmtl_cli import builders
from adapmtl_cli.config import Config, config_to_json
from adapmtl_cli.engine import distributed as dist_utils
from adapmtl_cli.engine.evaluator import autocast_context, evaluate
from adapmtl_cli.engine.sampling import ResumableBatchSampler
from adapmtl_cli.engine.sparsity import NonFiniteThresholdError
from adapmtl_cli.errors import DivergedError, Interrupted
from adapmtl_cli.io import checkpoint as ckpt
from adapmtl_cli.io import state as state_io
from adapmtl_cli.report import jsonout

# Evaluations whose overall sparsity is this close to the target may be selected as "best".
SELECTION_TOLERANCE = 0.005
# Validation samples shown in TensorBoard at every validation.
PICTURE_SAMPLES = 4


@dataclass
class RunFiles:
    root: Path

    @property
    def config(self) -> Path: return self.root / "config.toml"
    @property
    def model(self) -> Path: return self.root / "model.safetensors"
    @property
    def best(self) -> Path: return self.root / "best.safetensors"
    @property
    def init(self) -> Path: return self.root / "init.safetensors"
    @property
    def state(self) -> Path: return self.root / "state.safetensors"
    @property
    def metrics(self) -> Path: return self.root / "metrics.jsonl"
    @property
    def summary(self) -> Path: return self.root / "summary.json"
    @property
    def log(self) -> Path: return self.root / "log.txt"


class RunLog:
    """log.txt plus the console: one line per event, rank 0 only."""

    def __init__(self, path: Path | None, console):
        self.path = path
        self.console = console

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")
        if self.console is not None:
            self.console.log(message)


class Trainer:
    def __init__(self, config: Config, out_dir: Path, *, console=None, resume: bool = False, quiet: bool = False,
                 start_weights: dict[str, torch.Tensor] | None = None, masks: dict[str, torch.Tensor] | None = None):
        """``start_weights`` (plain keys) replace the initial weights (finetuning; thresholds start
        at sInit); ``masks`` (weight key -> bool keep) hold pruned weights at exactly zero."""
        self.config = config
        self.files = RunFiles(Path(out_dir))
        self.device = dist_utils.local_device(builders.resolve_device(config))
        dist_utils.init_from_environment(self.device)
        self.main = dist_utils.is_main_process()
        self.console = console if (self.main and not quiet) else None
        self.log = RunLog(self.files.log if self.main else None, self.console)
        torch.manual_seed(config.seed)

        self.data = _build_data(config)
        self.model, self.tasks = builders.build_model_and_tasks(config, self.data.class_weights)
        if start_weights is not None:
            ckpt.load_plain_weights(self.model, start_weights, "the starting weights")
        self.model.to(self.device)
        if dist_utils.is_distributed() and self.device.type == "cuda":
            # Batch statistics over the global batch, as one process would compute them (gloo on
            # the CPU has no SyncBatchNorm: there each process normalises its own share).
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if config.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.sparsifier = self.model.sparsifier
        self.optimizer = builders.build_optimizer(config, self.model)
        self.scheduler = builders.build_scheduler(config, self.optimizer)
        self.weighting = builders.build_weighting(config)
        self.priorities = builders.task_priorities(config)
        self.controller = builders.build_controller(config, self.sparsifier)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.train.amp == "fp16")
        self.config_json = config_to_json(config)
        self.start_step = 0
        self.best: dict | None = None
        self._stop_signal: int | None = None
        self.mask_keeper = None
        if masks:
            self.attach_masks(masks)

        if resume:
            self._resume()
        elif self.main and config.train.save_init:
            ckpt.save_checkpoint(self.files.init, self.model, self.config_json, 0, self.sparsity_report())
        self.ddp_model = self._wrap_ddp()
        from adapmtl_cli.report.tensorboard import TensorBoardLogger

        self.tb = TensorBoardLogger(self.files.root if self.main else None)

    # -- set-up ------------------------------------------------------------------------------

    def attach_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Hold pruned weights at exactly zero from now on (gradients, weights, Adam moments)."""
        from adapmtl_cli.engine.pruning import MaskKeeper

        if self.mask_keeper is not None:
            self.mask_keeper.remove()
        self.model.masks = {key: mask.to(self.device) for key, mask in masks.items()}
        self.mask_keeper = MaskKeeper(self.model, self.model.masks, optimizer=self.optimizer)

    def _wrap_ddp(self):
        if not dist_utils.is_distributed():
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _train_loader(self) -> DataLoader:
        sampler = ResumableBatchSampler(
            len(self.data.train), self.config.train.batch_size, self.config.seed, start_step=self.start_step,
            rank=dist_utils.rank(), world_size=dist_utils.world_size(),
        )
        return DataLoader(self.data.train, batch_sampler=sampler, num_workers=builders.loader_workers(self.config),
                          pin_memory=self.device.type == "cuda", persistent_workers=builders.loader_workers(self.config) > 0,
                          generator=self._loader_generator())

    def _eval_loader(self, dataset) -> DataLoader:
        sampler = None
        if dist_utils.is_distributed():
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(dataset, shuffle=False)
        per_rank = max(1, self.config.train.batch_size // dist_utils.world_size())
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=builders.loader_workers(self.config),
                          generator=self._loader_generator())

    def _loader_generator(self) -> torch.Generator:
        # A loader draws its workers' base seed from its generator; without one it would draw from
        # the global RNG, and creating a loader on resume would shift the dropout masks.
        return torch.Generator().manual_seed(self.config.seed)

    def _resume(self) -> None:
        step, self.best = state_io.load_training_state(self.files.state, self)
        self.start_step = step
        self.log(f"resumed from {self.files.state} at step {step}")

    # -- reports -----------------------------------------------------------------------------

    def sparsity_report(self) -> dict:
        return self.sparsifier.stats().as_report()

    def _signal_handler(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> dict:
        config = self.config
        steps = config.train.steps
        previous = {sig: signal.signal(sig, self._signal_handler) for sig in (signal.SIGINT, signal.SIGTERM)} if _can_handle_signals() else {}
        progress = None
        try:
            if self.console is not None:
                from adapmtl_cli.report.console import training_progress

                progress = training_progress(self.console)
                progress.start()
                bar = progress.add_task("train", total=steps, completed=self.start_step, loss=float("nan"), sparsity=self.controller.last_overall)
            self.log(f"training {config.name}: {steps} steps on {self.device}, tasks {', '.join(config.tasks)}")
            batches = iter(self._train_loader())
            self.model.train()
            for step in range(self.start_step, steps):
                image, targets = next(batches)
                try:
                    record = self.train_step(step, image, targets)
                except NonFiniteThresholdError:
                    # Set by the previous update, so this step's state is not a good one: keep the last saved.
                    self._diverged(step, "a soft threshold", saved=False)
                done = step + 1
                if progress is not None:
                    progress.update(bar, completed=done, loss=record["total"], sparsity=self.controller.last_overall)
                self._log_step(done, record)
                if done % config.train.val_every == 0 or done == steps:
                    self._validate(done)
                elif config.train.checkpoint_every and done % config.train.checkpoint_every == 0:
                    self._save_state(done)
                if self._stop_signal is not None and done < steps:
                    self._save_state(done)
                    raise Interrupted(
                        f"interrupted at step {done}; state saved in {self.files.state}; "
                        f"continue with: adapmtl train --resume {self.files.root}"
                    )
        finally:
            if progress is not None:
                progress.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._finish()

    def train_step(self, step: int, image: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict:
        image = image.to(self.device, non_blocking=True)
        if self.config.train.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
        current = self.weighting.weighs_current_step  # paper mode: the reference's order
        if not current:
            weights = self.weighting.weights() * self.priorities
        with autocast_context(self.device, self.config.train.amp):
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
        if self.mask_keeper is not None:
            self.mask_keeper.after_backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.controller.after_step(step + 1)
        if self.mask_keeper is not None:
            self.mask_keeper.after_step(step + 1)
        return {
            "losses": dict(zip(self.tasks, task_losses.tolist())),
            "weights": dict(zip(self.tasks, weights.tolist())),
            "total": float((weights * task_losses).sum()),
            "overall": float(host[-1]) if check else None,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _check_losses(self, step: int, task_losses: torch.Tensor) -> None:
        if not torch.isfinite(task_losses).all():
            bad = [name for name, value in zip(self.tasks, task_losses.tolist()) if not math.isfinite(value)]
            self._diverged(step, f"the loss of task {bad[0]!r}")

    def _diverged(self, step: int, what: str, saved: bool = True) -> None:
        # Before this step's update: the weights are the last good ones, keep them.
        if saved:
            self._save_state(step)
        if saved:
            where = f"the last good state is in {self.files.state}"
        else:
            where = f"the last saved state is in {self.files.state}" if self.files.state.is_file() else "no state was saved"
        raise DivergedError(
            f"training diverged at step {step + 1}: {what} is not finite; {where}; lower optim.lr or check the data"
        )

    def _check_finite_parameters(self, done: int) -> None:
        """Before a validation or the end: the update of step ``done`` is checked by no loss yet,
        and a model with a non-finite weight or threshold must never be saved as best or final."""
        with torch.no_grad():
            bad = next((name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            self._diverged(done - 1, f"parameter {bad!r} after the update", saved=False)

    # -- periodic work -----------------------------------------------------------------------

    def _log_step(self, done: int, record: dict) -> None:
        if not self.tb.enabled:
            return
        self.tb.train_step(done, record["lr"], record["losses"], record["weights"], record["overall"])
        if self.config.sparsity.control == "schedule":
            self.tb.scalar("sparsity/planned", self.controller.planned, done)
        every = self.config.train.log_every
        layer_every = self.config.train.layer_log_every
        if done % every == 0 or done % layer_every == 0:
            stats = self.sparsifier.stats()
            layers = self.sparsifier.layers
            self.tb.sparsity(done, stats, {l.key: l.component for l in layers}, {l.key: l.threshold for l in layers},
                             with_layers=done % layer_every == 0)

    def _check_ranks_agree(self, done: int) -> None:
        """Under DDP every rank must hold the same weights and thresholds; a silent divergence
        would make the stop rule and the weighting decide differently per rank."""
        if not dist_utils.is_distributed():
            return
        with torch.no_grad():
            fingerprint = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).sum().view(1).cpu()
        gathered = [torch.zeros(1, dtype=torch.float64) for _ in range(dist_utils.world_size())]
        torch.distributed.all_gather_object(gathered, fingerprint)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"ranks disagree at step {done}: parameter fingerprints {[float(g) for g in gathered]}")
        self.log(f"step {done}: all {len(gathered)} ranks hold identical parameters (fingerprint {float(gathered[0]):.10e})")

    def _validate(self, done: int) -> None:
        self._check_finite_parameters(done)
        self._check_ranks_agree(done)
        config = self.config
        split = self.data.test if config.train.select_on == "test" else self.data.val
        samples = {}

        def keep_first_batch(index, image, targets, outputs):
            if index == 0:  # the same fixed samples at every validation
                n = min(PICTURE_SAMPLES, image.shape[0])
                samples.update(image=image[:n], targets={k: v[:n] for k, v in targets.items()},
                               outputs={k: v[:n] for k, v in outputs.items()})

        metrics, losses = evaluate(self.model, self._eval_loader(split), self.tasks, self.device, config.train.amp,
                                   max_batches=config.train.val_batches, on_batch=keep_first_batch if self.tb.enabled else None)
        report = self.sparsity_report()
        score = sum(losses.values()) / len(losses)  # lower is better; every task counts equally
        at_target = (not self.sparsifier.enabled) or report["sparsity"]["overall"] >= config.sparsity.target - SELECTION_TOLERANCE
        eligible = at_target and done >= config.train.select_after
        is_best = eligible and (self.best is None or score < self.best["score"])
        if is_best:
            self.best = {"step": done, "score": score, "split": config.train.select_on}
        if self.main:
            self.tb.validation(done, metrics, losses, split="val" if config.train.select_on == "val" else "test")
            if samples:
                from adapmtl_cli.report.pictures import picture_grid

                grid = picture_grid(samples["image"], samples["targets"], samples["outputs"], self.tasks,
                                    bgr=config.data.source != "synthetic")
                self.tb.image("Pictures/input_then_truth_and_prediction_per_task", grid, done)
            entry = {"step": done, "split": config.train.select_on, "losses": losses, **report, "metrics": metrics, "best": is_best}
            with open(self.files.metrics, "a", encoding="utf-8") as handle:
                handle.write(jsonout.dumps(entry) + "\n")
            if is_best:
                ckpt.save_checkpoint(self.files.best, self.model, self.config_json, done, {**report, "metrics": metrics})
            self.log(f"step {done}: {config.train.select_on} loss {score:.4f}, sparsity {report['sparsity']['overall']:.2%}"
                     + (" (best)" if is_best else ""))
        self._save_state(done)

    def _save_state(self, done: int) -> None:
        if self.main:
            state_io.save_training_state(self.files.state, self, done)
        dist_utils.barrier()

    def _finish(self) -> dict:
        config = self.config
        self._check_finite_parameters(config.train.steps)
        stats = self.sparsifier.stats()
        report = stats.as_report()
        metrics, _ = evaluate(self.model, self._eval_loader(self.data.test), self.tasks, self.device, config.train.amp)
        note = self.controller.outcome_note(stats) if self.sparsifier.enabled else None
        summary = {"step": config.train.steps, **report, "metrics": metrics, "notes": [note] if note else [],
                   "best": self.best, "selection": {"split": config.train.select_on,
                                                     "note": "paper mode selects on the test split, as the reference did (QUIRK)" if config.train.select_on == "test" else "selected on a validation split carved from train"}}
        if self.main:
            ckpt.save_checkpoint(self.files.model, self.model, self.config_json, config.train.steps, {**report, "metrics": metrics})
            if self.best is None:
                self.log("no evaluation reached the target sparsity: best.safetensors is the final model")
                ckpt.save_checkpoint(self.files.best, self.model, self.config_json, config.train.steps, {**report, "metrics": metrics})
            ckpt.atomic_write_text(self.files.summary, jsonout.dumps(summary, indent=2) + "\n")
            if note:
                self.log(note)
            self.log(f"finished: overall sparsity {report['sparsity']['overall']:.2%}; model in {self.files.model}")
        self.tb.close()
        return summary


def _build_data(config: Config):
    from adapmtl_cli.data import build_datasets

    data = build_datasets(config)
    for split in (data.train, data.val, data.test):
        validate = getattr(split, "validate", None)
        if validate is not None:
            validate()  # fail before any training step, naming the first bad file
    return data


def _can_handle_signals() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
