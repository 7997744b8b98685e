"""Shared by the step-time benchmarks: build trainers from a preset and time their real training
step on one fixed batch, alternating between variants so that machine drift hits all alike."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from adapmtl_cli.config import load_config
from adapmtl_cli.engine.trainer import Trainer


def build_trainer(preset: str, overrides: list[str], out: Path) -> Trainer:
    return Trainer(load_config(preset, overrides), out, quiet=True)


def fixed_batch(trainer: Trainer):
    loader = torch.utils.data.DataLoader(trainer.data.train, batch_size=trainer.config.train.batch_size)
    return next(iter(loader))


def time_alternating(trainers: dict[str, Trainer], batch, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per training step of each trainer, steps interleaved round-robin."""
    image, targets = batch
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for step in range(warmup + repeats):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step(step, image, targets)
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
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
