"""One training step of the paper models on the CPU: nyuv2-resnet34 and nyuv2-mnv2 at batch 2,
321x321 (forward, losses, backward, optimizer, sparsity bookkeeping), dense and soft-threshold,
NCHW and channels_last, side by side in one run, against the reference implementation's times on
this kind of machine (2 threads): 11.96 s (ResNet34) and 8.04 s (MobileNetV2) per step.

The data are synthetic scenes at 321x321 (the step's cost does not depend on the pixels).

    python benchmarks/paper_step.py [--repeats 3] [--threads 2] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from steptime import report, build_trainer, fixed_batch, time_alternating

REFERENCE_SECONDS = {"nyuv2-resnet34": 11.96, "nyuv2-mnv2": 8.04}
COMMON = ["data.source='synthetic'", "data.resolution=321", "data.num_classes=40",
          "data.train_size=8", "data.val_size=2", "data.test_size=2", "data.workers=0"]
REFERENCE_BATCH8 = {"nyuv2-resnet34": (52.0, 8.6)}  # seconds per step, GB, at batch 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", nargs="*", default=list(REFERENCE_SECONDS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=[], help="run only these variants, e.g. 'dense, NCHW' 'soft-threshold, NCHW'")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        f"### Paper-model training step on CPU (batch {args.batch}, 321x321, {args.threads} threads, median of {args.repeats}, torch {torch.__version__})",
        "", "| preset | variant | seconds / step | vs reference |", "|---|---|---|---|",
    ]
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            variants = {}
            for sparse in (False, True):
                for channels_last in (False, True):
                    name = f"{'soft-threshold' if sparse else 'dense'}, {'channels_last' if channels_last else 'NCHW'}"
                    if args.only and name not in args.only:
                        continue
                    overrides = COMMON + [f"train.batch_size={args.batch}", f"sparsity.enabled={str(sparse).lower()}", f"train.channels_last={str(channels_last).lower()}"]
                    variants[name] = build_trainer(preset, overrides, Path(tmp) / name.replace(", ", "-"))
            times = time_alternating(variants, fixed_batch(next(iter(variants.values()))), args.repeats, warmup=1)
        for name, seconds in times.items():
            reference = REFERENCE_SECONDS[preset] if args.batch == 2 else REFERENCE_BATCH8.get(preset, (float("nan"),))[0] * args.batch / 8
            lines.append(f"| {preset} | {name} | {seconds:.2f} | {seconds / reference:.2f}x |")
            print(lines[-1], flush=True)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    lines += ["", f"Peak resident memory of the whole run (all variants built): {peak:.1f} GiB."]
    if args.batch == 8:
        lines.append("The reference took 52 s and 8.6 GB per ResNet34 step at batch 8 on this kind of machine.")
    report(lines, args.write)


if __name__ == "__main__":
    main()
