"""Shared by the step-time benchmarks: build trainers from a preset and time their real training
step on one fixed batch, alternating between variants so that machine drift hits all alike."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from adapmtl_cli import builders
from adapmtl_cli.config import load_config
from adapmtl_cli.engine.trainer import Trainer
from adapmtl_cli.run import build_data
from adapmtl_cli.run import build_trainer as build_engine_trainer


def build_trainer(preset: str, overrides: list[str], out: Path | None = None) -> Trainer:
    """The engine's trainer of a preset, built from objects as the CLI's run builds it (seeded
    the same way), with no run folder and no callbacks; ``trainer.data`` and
    ``trainer.batch_size`` are kept for :func:`fixed_batch`. ``out`` is unused (kept for callers)."""
    config = load_config(preset, overrides)
    torch.manual_seed(config.seed)
    data = build_data(config)
    trainer = build_engine_trainer(config, builders.resolve_device(config), data.class_weights)
    trainer.data, trainer.batch_size = data, config.train.batch_size
    return trainer


def fixed_batch(trainer: Trainer):
    loader = torch.utils.data.DataLoader(trainer.data.train, batch_size=trainer.batch_size)
    return next(iter(loader))


def time_alternating(trainers: dict[str, Trainer], batch, repeats: int, warmup: int = 2, block: int = 1) -> dict[str, float]:
    """Median seconds per training step of each trainer, interleaved round-robin.

    Each sample times ``block`` consecutive steps and divides: with ``block`` equal to the period
    of the periodic bookkeeping (sparsity counts, the schedule's rescaling: every 10 steps), every
    sample carries its share of it, which a median of single steps would leave out.
    """
    image, targets = batch
    times: dict[str, list[float]] = {name: [] for name in trainers}
    step = 0
    for round_ in range(warmup + repeats):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for offset in range(block):
                trainer.train_step(step + offset, image, targets)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) / block)
        step += block
    return {name: statistics.median(values) for name, values in times.items()}


def append_results(text: str) -> None:
    with open(Path(__file__).parent / "RESULTS.md", "a", encoding="utf-8") as handle:
        handle.write("\n" + text)


def report(lines: list[str], write: bool) -> None:
    """Print a benchmark's markdown section and, with --write, append it to RESULTS.md."""
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        append_results(text)
