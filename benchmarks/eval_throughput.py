"""Evaluation throughput: adapmtl's device-side metrics vs the reference's per-batch host metrics.

Both loops run the same model over the same batches of the synthetic test split. adapmtl's meters
accumulate on the device and copy back once; the reference-style loop copies every batch's
predictions to numpy and builds the confusion matrix, the normal angles and the depth errors there,
batch by batch (as the reference does). Prints images per second of each and the ratio.

    python benchmarks/eval_throughput.py [--images 512] [--preset demo] [--write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from adapmtl_cli import builders
from adapmtl_cli.config import load_config
from adapmtl_cli.data import build_datasets
from adapmtl_cli.engine.evaluator import evaluate
from steptime import report


def reference_style(model, loader, num_classes: int) -> float:
    """Per-batch host metrics, like the reference's evaluation loop."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    angles, depth_errors = [], []
    with torch.no_grad():
        for image, targets in loader:
            outputs = model(image)
            size = targets["segment_semantic"].shape[-2:]
            seg = torch.nn.functional.interpolate(outputs["segment_semantic"], size=size, mode="nearest").argmax(1).cpu().numpy()
            gt = targets["segment_semantic"].cpu().numpy()
            valid = gt < num_classes
            confusion += np.bincount(num_classes * gt[valid] + seg[valid], minlength=num_classes**2).reshape(num_classes, num_classes)
            normal = torch.nn.functional.interpolate(outputs["normal"], size=size, mode="nearest").cpu().numpy()
            normal_gt = targets["normal"].cpu().numpy()
            normal = normal / np.linalg.norm(normal, axis=1, keepdims=True).clip(1e-12)
            cos = (normal * normal_gt).sum(1)
            ok = np.isfinite(cos)
            angles.append(np.degrees(np.arccos(np.clip(cos[ok], -1, 1))))
            depth = torch.nn.functional.interpolate(outputs["depth_zbuffer"], size=size, mode="nearest").cpu().numpy()
            depth_gt = targets["depth_zbuffer"].cpu().numpy()
            ok = np.isfinite(depth_gt)
            depth_errors.append(np.abs(depth - depth_gt)[ok].mean())
    all_angles = np.concatenate(angles)
    return float(np.diag(confusion).sum() / confusion.sum() + np.median(all_angles) + np.mean(depth_errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.preset, ["data.source='synthetic'", f"data.test_size={args.images}", "data.train_size=16", "data.val_size=16"])
    model, tasks = builders.build_model_and_tasks(config)
    model.eval()
    data = build_datasets(config)
    batches = list(torch.utils.data.DataLoader(data.test, batch_size=config.train.batch_size))  # decoded once, for both
    device = torch.device("cpu")
    timings = {}
    for name in ("adapmtl (device-side meters)", "reference-style (per-batch numpy)") * 2:  # alternate, keep the second round
        start = time.perf_counter()
        if name.startswith("adapmtl"):
            evaluate(model, batches, tasks, device)
        else:
            reference_style(model, batches, builders.num_classes(config))
        timings[name] = args.images / (time.perf_counter() - start)
    ours, theirs = timings.values()
    lines = [f"### Evaluation throughput ({args.preset} model, {args.images} synthetic images, CPU, {args.threads} threads)", "",
             "| loop | images / s |", "|---|---|"]
    lines += [f"| {name} | {rate:.1f} |" for name, rate in timings.items()]
    lines += [f"| ratio | {ours / theirs:.2f}x |"]
    report(lines, args.write)


if __name__ == "__main__":
    main()
