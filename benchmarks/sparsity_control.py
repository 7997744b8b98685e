"""Does a run land on the requested sparsity? Schedule control vs the reference's stop rule.

For each target (0.5, 0.8, 0.9, 0.95, 0.98) and model (the demo; a MobileNetV2 backbone with
small ASPP heads) it trains on the synthetic scenes twice, side by side in one run:
  - `control = "schedule"` with the default settings, no per-target tuning;
  - `control = "freeze"` with the reference's defaults (sInit -15, wd 1e-4, lr 1e-3, Adam(0.5, 0.999)),
and prints the final overall sparsity and its distance to the target. With --quality it also trains
a dense model and both controls at 0.9 for several seeds and compares Delta_T against the dense
model of the same seed at equal (the achieved) sparsity.

    python benchmarks/sparsity_control.py [--steps 300] [--quality --seeds 3] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adapmtl_cli.config import load_config
from adapmtl_cli.workflows.evaluate import metric_directions
from adapmtl_cli.workflows.train import train
from steptime import report

TARGETS = (0.5, 0.8, 0.9, 0.95, 0.98)
MODELS = {
    "demo": [],
    "mobilenetv2 + ASPP-64": ["model.backbone='mobilenetv2'", "model.head='aspp'", "model.head_hidden=64",
                              "data.resolution=64", "train.batch_size=8"],
}
REFERENCE_FREEZE = ["sparsity.control='freeze'", "sparsity.init=-15", "optim.weight_decay=1e-4", "optim.lr=1e-3"]


def run(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("demo", overrides)
        return train(config, Path(tmp) / "run", quiet=True)


def landing_table(steps: int) -> list[str]:
    lines = [f"### Landing on the target ({steps} steps, synthetic 3-task scenes, seed 0)", "",
             "| model | target | schedule: final | schedule: off by (points) | freeze (reference defaults): final | freeze: off by |",
             "|---|---|---|---|---|---|"]
    for model, extra in MODELS.items():
        for target in TARGETS:
            base = [f"train.steps={steps}", f"train.val_every={steps}", f"sparsity.target={target}"] + extra
            schedule = run(base + ["sparsity.control='schedule'"])["sparsity"]["overall"]
            freeze = run(base + REFERENCE_FREEZE)["sparsity"]["overall"]
            lines.append(f"| {model} | {target:.2f} | {100 * schedule:.2f}% | {100 * (schedule - target):+.2f} | "
                         f"{100 * freeze:.2f}% | {100 * (freeze - target):+.2f} |")
            print(lines[-1], flush=True)
    return lines


def delta_t(metrics: dict, baseline: dict) -> float:
    from adapmtl_cli.tasks.scores import delta_scores

    return delta_scores(metrics, baseline, metric_directions(list(metrics))).delta_t


def quality_table(steps: int, seeds: int) -> list[str]:
    lines = [f"### Quality at 0.9 sparsity, schedule vs freeze (demo, {steps} steps, {seeds} seeds)", "",
             "| seed | dense | schedule: sparsity | schedule: Delta_T | freeze: sparsity | freeze: Delta_T |",
             "|---|---|---|---|---|---|"]
    rows = []
    for seed in range(seeds):
        base = [f"seed={seed}", f"train.steps={steps}", f"train.val_every={steps}", "sparsity.target=0.9"]
        dense = run(base + ["sparsity.enabled=false"])
        schedule = run(base + ["sparsity.control='schedule'"])
        freeze = run(base + ["sparsity.control='freeze'"])
        row = (delta_t(schedule["metrics"], dense["metrics"]), delta_t(freeze["metrics"], dense["metrics"]))
        rows.append(row)
        lines.append(f"| {seed} | 0 | {100 * schedule['sparsity']['overall']:.2f}% | {row[0]:+.2f} | "
                     f"{100 * freeze['sparsity']['overall']:.2f}% | {row[1]:+.2f} |")
        print(lines[-1], flush=True)
    mean = [statistics.mean(r[i] for r in rows) for i in range(2)]
    spread = [statistics.stdev(r[i] for r in rows) if len(rows) > 1 else 0.0 for i in range(2)]
    lines.append(f"| mean ± sd | | | {mean[0]:+.2f} ± {spread[0]:.2f} | | {mean[1]:+.2f} ± {spread[1]:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    lines = landing_table(args.steps)
    if args.quality:
        lines += [""] + quality_table(args.steps, args.seeds)
    lines += ["", f"({time.time() - start:.0f} s in all)"]
    report(lines, args.write)


if __name__ == "__main__":
    main()
