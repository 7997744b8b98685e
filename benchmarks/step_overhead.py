"""Training-step time, dense vs soft-threshold, side by side in one run.

For each model the same batch goes through the trainer's real step (forward, losses, backward,
bookkeeping, optimizer, scheduler) of a dense model (no thresholds, no counting) and of the
soft-threshold model (thresholds on every conv, the sparsity bookkeeping of its preset: on the
demo preset the schedule's rescaling and the on-device sparsity count every 10 steps; on the paper
preset the stop rule's count every step). Single steps of the variants alternate (the order flips
every step), because this machine's speed drifts by a third over seconds; each period of the
bookkeeping gives one paired ratio, and the median ratio is reported with a distribution-free 95%
confidence interval. Target: at most 1.05x, "met" when the whole interval is within it.

Models: the demo; ``mnv2-paper``, the model ``--preset nyuv2-mnv2`` trains (MobileNetV2 + ASPP-1024
heads, 156M conv weights) at its recipe's crop and batch, on synthetic scenes (a step lasts ~20 s
on 2 cores); and two reductions of it that stress the soft threshold, whose cost grows with the
weights while a step's arithmetic grows with the pixels: ASPP-256 heads at 224 px, batch 8, and the
same at 128 px, batch 4 (weight-bound).

``--for-loop-adam`` adds the dense model with PyTorch's for-loop Adam (``optim.fused=false``, the
default before the fused kernels), to show what the fused optimizer saves.

    python benchmarks/step_overhead.py [--periods N] [--threads 2] [--models demo ...] [--for-loop-adam] [--raw FILE] [--write]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from steptime import build_trainer, fixed_batch, report

# Added on the demo preset: sInit -8 keeps every threshold moving (target 0.99 is never reached),
# the most work per step.
DEMO_COMMON = ["data.train_size=64", "data.val_size=8", "data.test_size=8", "sparsity.init=-8", "sparsity.target=0.99"]
MODELS = {  # key: (name, preset, overrides, periods by default, steps per period)
    "demo": ("demo (64x64, batch 16)", "demo", [*DEMO_COMMON, "data.resolution=64", "train.batch_size=16"], 40, 10),
    # The preset as shipped, in paper mode (its stop rule counts sparsity every step, so a period is
    # one step), on synthetic scenes of its crop with NYUv2's 40 classes. sInit -18 and target 0.9:
    # every threshold keeps moving for the whole run.
    "mnv2-paper": ("nyuv2-mnv2 preset: mobilenetv2 + ASPP-1024 (321x321, batch 16), paper mode", "nyuv2-mnv2", [
        "data.source='synthetic'", "data.resolution=321", "data.num_classes=40", "data.workers=0",
        "data.train_size=32", "data.val_size=8", "data.test_size=8",
    ], 40, 1),  # paired 20 s steps differ by 12% (sd) here: 20 pairs gave an interval of +-7%, 40 of +-3.5%
    # A reduction that stresses the soft threshold: ASPP heads of 256 hidden channels, 2.2M backbone
    # and 36M head weights, 3 tasks, at Taskonomy's crop with half the paper's batch, so each weight
    # sees a fifth of the paper recipe's arithmetic.
    "mnv2-224": ("mobilenetv2 + ASPP-256 (224x224, batch 8)", "demo", [
        *DEMO_COMMON, "model.backbone='mobilenetv2'", "model.head='aspp'", "model.head_hidden=256",
        "data.resolution=224", "train.batch_size=8",
    ], 30, 10),  # paired 1.8 s steps still differ by 9-11% (sd) here: 30 periods bound the median to about +-0.015
    # The same at 128x128: the heads see 4x4 features, so the step is bound by passes over the 38M
    # weights rather than by arithmetic - the worst case for the soft threshold.
    "mnv2-128": ("mobilenetv2 + ASPP-256 (128x128, batch 4), weight-bound", "demo", [
        *DEMO_COMMON, "model.backbone='mobilenetv2'", "model.head='aspp'", "model.head_hidden=256",
        "data.resolution=128", "train.batch_size=4",
    ], 12, 10),
}
VARIANTS = {
    "dense": ["sparsity.enabled=false"],
    "soft-threshold": ["sparsity.enabled=true"],
}
TARGET = 1.05
FOR_LOOP_ADAM = {"dense, for-loop Adam": ["sparsity.enabled=false", "optim.fused=false"]}


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: order statistics j..n-j+1, with j the
    largest rank for which P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2."""
    ordered = sorted(values)
    n = len(ordered)
    tail, j = 0.0, 0
    while j < n // 2:
        tail_next = tail + math.comb(n, j) / 2 ** n
        if tail_next > (1 - confidence) / 2:
            break
        tail, j = tail_next, j + 1
    if j == 0:
        return ordered[0], ordered[-1]
    return ordered[j - 1], ordered[n - j]


def verdict(low: float, high: float, target: float = TARGET) -> str:
    """Met only when the whole confidence interval is within the target, missed when all of it is
    beyond; a median under the target with an interval across it is no evidence either way."""
    if high <= target:
        return "met"
    if low > target:
        return "missed"
    return "at the line"


def time_interleaved(trainers: dict, batch, periods: int, period: int = 10, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per step of every variant in each ``period`` of steps (the period of the periodic
    bookkeeping). Single steps of the variants alternate, in an order that flips every step, so
    two neighbouring steps see the same machine: this CPU's speed drifts by 30% over seconds."""
    image, targets = batch
    names = list(trainers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + periods):
        spent = dict.fromkeys(names, 0.0)
        for offset in range(period):
            step = index * period + offset
            for name in names if step % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                trainers[name].train_step(step, image, targets)
                spent[name] += time.perf_counter() - start
        if index >= warmup:
            for name in names:
                times[name].append(spent[name] / period)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=0, help="periods of paired steps per model (0 = each model's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--for-loop-adam", action="store_true", help="also time the dense model with the for-loop Adam")
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    parser.add_argument("--raw", type=Path, help="also write every period's seconds per step, per model and variant, to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {**VARIANTS, **(FOR_LOOP_ADAM if args.for_loop_adam else {})}
    lines = [
        f"### Step overhead, dense vs soft-threshold (CPU, {args.threads} threads, paired steps, torch {torch.__version__})",
        "",
        "| model | periods (steps each) | dense step (ms) | soft-threshold step (ms) | soft / dense: median over periods [95% CI] | target 1.05x |"
        + (" for-loop Adam / fused Adam, dense |" if args.for_loop_adam else ""),
        "|---|---|---|---|---|---|" + ("---|" if args.for_loop_adam else ""),
    ]
    started = time.perf_counter()
    raw: dict[str, dict[str, list[float]]] = {}
    for key in args.models:
        name, preset, overrides, periods, period = MODELS[key]
        periods = args.periods or periods
        with tempfile.TemporaryDirectory() as tmp:
            trainers = {variant: build_trainer(preset, overrides + extra, Path(tmp) / str(i))
                        for i, (variant, extra) in enumerate(variants.items())}
            # Warm-up: two steps of each variant at least (the first allocates buffers and moments).
            times = time_interleaved(trainers, fixed_batch(trainers["dense"]), periods, period, warmup=max(1, 2 // period))
            del trainers  # the paper model's two trainers hold ~10 GB
        raw[key] = times
        if args.raw:  # after every model, so an interrupted run keeps what it measured
            args.raw.write_text(json.dumps(raw, indent=1))
        soft = [s / d for s, d in zip(times["soft-threshold"], times["dense"])]
        low, high = median_interval(soft)
        ratio = statistics.median(soft)
        line = (f"| {name} | {periods} ({period}) | {1000 * statistics.median(times['dense']):.1f} | {1000 * statistics.median(times['soft-threshold']):.1f} "
                f"| {ratio:.3f}x [{low:.3f}, {high:.3f}] | {verdict(low, high)} |")
        if args.for_loop_adam:
            loop = [s / d for s, d in zip(times["dense, for-loop Adam"], times["dense"])]
            line += f" {statistics.median(loop):.2f}x |"
        lines.append(line)
        print(line, flush=True)
    lines += ["", f"Run time {time.perf_counter() - started:.0f} s."]
    report(lines, args.write)


if __name__ == "__main__":
    main()
