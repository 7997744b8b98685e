"""Training-step time, dense vs soft-threshold, side by side in one run.

For each model the same batch goes through the trainer's real step (forward, losses, backward,
bookkeeping, optimizer, scheduler) of a dense model (no thresholds, no counting) and of the
soft-threshold model (parametrized convs; the schedule's rescaling and the on-device sparsity count
every 10 steps). Blocks of 10 steps alternate dense/sparse, so every
sample carries its share of the periodic work; the ratio of medians is printed and, with --write,
appended to benchmarks/RESULTS.md. Target: at most 1.05x.

    python benchmarks/step_overhead.py [--repeats 10] [--threads 2] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from steptime import report, build_trainer, fixed_batch, time_alternating

MODELS = {
    "demo (64x64, batch 16)": ["data.resolution=64", "train.batch_size=16"],
    # A MobileNetV2 backbone with ASPP heads of 256 hidden channels (the paper's 1024 would make a
    # CPU step last ~10 s): 2.2M backbone and 36M head weights, 3 tasks. At 128x128 the heads see
    # 4x4 features, so the step is bound by passes over the weights - the worst case for the soft
    # threshold; at 224x224 (7x7 features) compute matters more.
    "mobilenetv2 + ASPP-256 (128x128, batch 4)": [
        "model.backbone='mobilenetv2'", "model.head='aspp'", "model.head_hidden=256",
        "data.resolution=128", "train.batch_size=4",
    ],
    "mobilenetv2 + ASPP-256 (224x224, batch 8)": [
        "model.backbone='mobilenetv2'", "model.head='aspp'", "model.head_hidden=256",
        "data.resolution=224", "train.batch_size=8",
    ],
}
# sInit -8 keeps every threshold moving (target 0.99 is never reached), the most work per step.
COMMON = ["data.train_size=64", "data.val_size=8", "data.test_size=8", "sparsity.init=-8", "sparsity.target=0.99"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="blocks of 10 steps per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        f"### Step overhead, dense vs soft-threshold (CPU, {args.threads} threads, median of {args.repeats}, torch {torch.__version__})",
        "", "| model | dense step (ms) | soft-threshold step (ms) | ratio |", "|---|---|---|---|",
    ]
    for name, overrides in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            trainers = {
                variant: build_trainer("demo", COMMON + overrides + [f"sparsity.enabled={str(variant == 'sparse').lower()}"], Path(tmp) / variant)
                for variant in ("dense", "sparse")
            }
            times = time_alternating(trainers, fixed_batch(trainers["dense"]), args.repeats, block=10)
        lines.append(f"| {name} | {1000 * times['dense']:.1f} | {1000 * times['sparse']:.1f} | {times['sparse'] / times['dense']:.3f}x |")
        print(lines[-1], flush=True)
    report(lines, args.write)


if __name__ == "__main__":
    main()
