"""A picture of synthetic scenes and their labels: image, segmentation, normals, depth per row.

    python benchmarks/show_scenes.py [--scenes bench] [--count 6] [--resolution 96] [--out docs/bench_scenes.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from adapmtl_cli.data.bench_scenes import BenchScenes
from adapmtl_cli.data.synthetic import SyntheticScenes
from adapmtl_cli.report.pictures import display_image
from adapmtl_cli.tasks import build_task

TASKS = ["segment_semantic", "normal", "depth_zbuffer"]
CLASSES = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", choices=["bench", "demo"], default="bench")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/bench_scenes.png"))
    args = parser.parse_args()
    scenes = (BenchScenes if args.scenes == "bench" else SyntheticScenes)(TASKS, size=args.count, resolution=args.resolution,
                                                                          num_classes=CLASSES, seed=args.seed, split="test")
    # Each task draws its own labels, as in TensorBoard's pictures (Task.render).
    tasks = {name: build_task(name, **({"num_classes": CLASSES} if name == "segment_semantic" else {})) for name in TASKS}
    rows = []
    for index in range(args.count):
        image, targets = scenes[index]
        # render(prediction, truth) draws both; the truth is what is shown (logits for the classes).
        labels = F.one_hot(targets["segment_semantic"], CLASSES).permute(2, 0, 1).float()
        predictions = {"segment_semantic": labels, "normal": targets["normal"], "depth_zbuffer": targets["depth_zbuffer"]}
        panels = [display_image(image, bgr=False)] + [tasks[name].render(predictions[name], targets[name])[1] for name in TASKS]
        rows.append(torch.cat([(p.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0) for p in panels], dim=1))
    Image.fromarray(torch.cat(rows, dim=0).numpy()).save(args.out)
    print(f"{args.out}: {args.count} {args.scenes} scenes (image | segmentation | normals | depth)")


if __name__ == "__main__":
    main()
