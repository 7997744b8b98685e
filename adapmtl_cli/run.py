"""The CLI's training run: a Config turned into the engine's objects, plus the run folder.

``TrainingRun`` is a recipe in torchtune's sense: it builds the data, the model with its
sparsifier, the optimizer, the scheduler, the weighting and the controller from a Config (through
``builders``), hands them to the engine's ``Trainer`` (which reads no Config), and is itself the
trainer's callback for everything a run folder needs after a step: the progress bar, log.txt and
TensorBoard, validation with the best-model selection, ``state.safetensors`` for ``--resume``,
Ctrl-C / SIGTERM. At the end it evaluates on the test split and writes ``model.safetensors`` and
``summary.json``. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from adapmtl_cli import builders
from adapmtl_cli.config import Config, config_to_json
from adapmtl_cli.data.sources import source_of
from adapmtl_cli.engine import distributed as dist_utils
from adapmtl_cli.engine.evaluator import evaluate
from adapmtl_cli.engine.sampling import ResumableBatchSampler
from adapmtl_cli.engine.trainer import Trainer, TrainingDiverged
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


class TrainingRun:
    def __init__(self, config: Config, out_dir: Path, *, console=None, resume: bool = False, quiet: bool = False,
                 start_weights: dict[str, torch.Tensor] | None = None, masks: dict[str, torch.Tensor] | None = None):
        """``start_weights`` (plain keys) replace the initial weights (finetuning; thresholds start
        at sInit); ``masks`` (weight key -> bool keep) hold pruned weights at exactly zero."""
        self.config = config
        self.files = RunFiles(Path(out_dir))
        device = dist_utils.local_device(builders.resolve_device(config))
        dist_utils.init_from_environment(device)
        self.main = dist_utils.is_main_process()
        self.console = console if (self.main and not quiet) else None
        self.log = RunLog(self.files.log if self.main else None, self.console)
        torch.manual_seed(config.seed)

        self.data = build_data(config)
        self.trainer = build_trainer(config, device, self.data.class_weights, start_weights=start_weights, callbacks=[self])
        model = self.trainer.model
        self.config_json = config_to_json(config)
        self.start_step = 0
        self.best: dict | None = None
        self._stop_signal: int | None = None
        if masks:
            self.trainer.attach_masks(masks)
        if resume:
            self.start_step, self.best = state_io.load_training_state(self.files.state, self.trainer)
            self.log(f"resumed from {self.files.state} at step {self.start_step}")
        elif self.main and config.train.save_init:
            ckpt.save_checkpoint(self.files.init, model, self.config_json, 0, model.sparsifier.stats().as_report())
        self.trainer.ddp_model = builders.wrap_distributed(model, device)
        from adapmtl_cli.report.tensorboard import TensorBoardLogger

        self.tb = TensorBoardLogger(self.files.root if self.main else None)
        self._progress = None

    @property
    def model(self):
        return self.trainer.model

    # -- loaders -----------------------------------------------------------------------------

    def _train_batches(self):
        config = self.config
        sampler = ResumableBatchSampler(
            len(self.data.train), config.train.batch_size, config.seed, start_step=self.start_step,
            rank=dist_utils.rank(), world_size=dist_utils.world_size(),
        )
        workers = builders.loader_workers(config)
        return iter(DataLoader(self.data.train, batch_sampler=sampler, num_workers=workers,
                               pin_memory=self.trainer.device.type == "cuda", persistent_workers=workers > 0,
                               generator=self._loader_generator()))

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

    # -- the run -----------------------------------------------------------------------------

    def fit(self) -> dict:
        config = self.config
        previous = {sig: signal.signal(sig, self._signal_handler) for sig in (signal.SIGINT, signal.SIGTERM)} if _can_handle_signals() else {}
        try:
            if self.console is not None:
                from adapmtl_cli.report.console import training_progress

                self._progress = training_progress(self.console)
                self._progress.start()
                self._bar = self._progress.add_task("train", total=config.train.steps, completed=self.start_step,
                                                    loss=float("nan"), sparsity=self.trainer.controller.last_overall)
            self.log(f"training {config.name}: {config.train.steps} steps on {self.trainer.device}, tasks {', '.join(config.tasks)}")
            try:
                self.trainer.fit(self._train_batches(), self.start_step)
            except TrainingDiverged as diverged:
                self._diverged(diverged)
        finally:
            if self._progress is not None:
                self._progress.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._finish()

    def on_step_end(self, trainer: Trainer, done: int, record: dict) -> None:
        """The trainer's callback: progress, logs, validation, state, interruption."""
        config = self.config
        if self._progress is not None:
            # The last step's bar shows the final count, the one the summary reports (the last
            # observation came before the controller's final rescaling).
            final = done == config.train.steps and trainer.sparsifier.enabled
            sparsity = float(trainer.sparsifier.overall_sparsity()) if final else trainer.controller.last_overall
            self._progress.update(self._bar, completed=done, loss=record["total"], sparsity=sparsity)
        self._log_step(done, record)
        if done % config.train.val_every == 0 or done == config.train.steps:
            self._validate(done)
        elif config.train.checkpoint_every and done % config.train.checkpoint_every == 0:
            self._save_state(done)
        if self._stop_signal is not None and done < config.train.steps:
            self._save_state(done)
            raise Interrupted(
                f"interrupted at step {done}; state saved in {self.files.state}; "
                f"continue with: adapmtl train --resume {self.files.root}"
            )

    def _signal_handler(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum

    def _diverged(self, diverged: TrainingDiverged) -> None:
        if diverged.weights_good:  # checked before the step's update: keep the last good weights
            self._save_state(diverged.step)
            where = f"the last good state is in {self.files.state}"
        else:
            where = f"the last saved state is in {self.files.state}" if self.files.state.is_file() else "no state was saved"
        raise DivergedError(f"{diverged}; {where}; lower optim.lr or check the data") from None

    # -- periodic work -----------------------------------------------------------------------

    def _log_step(self, done: int, record: dict) -> None:
        if not self.tb.enabled:
            return
        trainer = self.trainer
        self.tb.train_step(done, record["lr"], record["losses"], record["weights"], record["overall"])
        planned = getattr(trainer.controller, "planned", None)
        if planned is not None:
            self.tb.scalar("sparsity/planned", planned, done)
        every = self.config.train.log_every
        layer_every = self.config.train.layer_log_every
        if done % every == 0 or done % layer_every == 0:
            stats = trainer.sparsifier.stats()
            layers = trainer.sparsifier.layers
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
        try:
            self.trainer.check_finite_parameters(done)
        except TrainingDiverged as diverged:
            self._diverged(diverged)
        self._check_ranks_agree(done)
        config, trainer = self.config, self.trainer
        split = self.data.test if config.train.select_on == "test" else self.data.val
        samples = {}

        def keep_first_batch(index, image, targets, outputs):
            if index == 0:  # the same fixed samples at every validation
                n = min(PICTURE_SAMPLES, image.shape[0])
                samples.update(image=image[:n], targets={k: v[:n] for k, v in targets.items()},
                               outputs={k: v[:n] for k, v in outputs.items()})

        metrics, losses = evaluate(self.model, self._eval_loader(split), trainer.tasks, trainer.device, config.train.amp,
                                   max_batches=config.train.val_batches, on_batch=keep_first_batch if self.tb.enabled else None)
        report = trainer.sparsifier.stats().as_report()
        score = sum(losses.values()) / len(losses)  # lower is better; every task counts equally
        at_target = (not trainer.sparsifier.enabled) or report["sparsity"]["overall"] >= config.sparsity.target - SELECTION_TOLERANCE
        eligible = at_target and done >= config.train.select_after
        is_best = eligible and (self.best is None or score < self.best["score"])
        if is_best:
            self.best = {"step": done, "score": score, "split": config.train.select_on}
        if self.main:
            self.tb.validation(done, metrics, losses, split="val" if config.train.select_on == "val" else "test")
            if samples:
                from adapmtl_cli.report.pictures import picture_grid

                grid = picture_grid(samples["image"], samples["targets"], samples["outputs"], trainer.tasks,
                                    bgr=source_of(config).bgr)
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
            state_io.save_training_state(self.files.state, self.trainer, done, self.config_json, self.best)
        dist_utils.barrier()

    def _finish(self) -> dict:
        config, trainer = self.config, self.trainer
        try:
            trainer.check_finite_parameters(config.train.steps)
        except TrainingDiverged as diverged:
            self._diverged(diverged)
        stats = trainer.sparsifier.stats()
        report = stats.as_report()
        metrics, _ = evaluate(self.model, self._eval_loader(self.data.test), trainer.tasks, trainer.device, config.train.amp)
        note = trainer.controller.outcome_note(stats) if trainer.sparsifier.enabled else None
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


def build_trainer(config: Config, device: torch.device, class_weights: torch.Tensor | None = None, *,
                  start_weights: dict[str, torch.Tensor] | None = None, callbacks=()) -> Trainer:
    """The engine's trainer for ``config``: model (with its sparsifier), tasks, optimizer,
    scheduler, weighting and controller, built by ``builders`` and placed on ``device``."""
    model, tasks = builders.build_model_and_tasks(config, class_weights)
    if start_weights is not None:
        ckpt.load_plain_weights(model, start_weights, "the starting weights")
    model = builders.place_model(config, model, device)
    optimizer = builders.build_optimizer(config, model)
    return Trainer(
        model, tasks, optimizer, builders.build_scheduler(config, optimizer), builders.build_weighting(config),
        builders.build_controller(config, model.sparsifier), steps=config.train.steps, device=device,
        priorities=builders.task_priorities(config), amp=config.train.amp, channels_last=config.train.channels_last,
        callbacks=callbacks,
    )


def build_data(config: Config):
    """The run's datasets, every file checked before the first step (naming the first bad one)."""
    from adapmtl_cli.data import build_datasets

    data = build_datasets(config)
    for split in (data.train, data.val, data.test):
        validate = getattr(split, "validate", None)
        if validate is not None:
            validate()
    return data


def _can_handle_signals() -> bool:
    return threading.current_thread() is threading.main_thread()
