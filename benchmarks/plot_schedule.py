"""Plot planned vs actual overall sparsity against the step for the demo, schedule vs freeze.

Trains the demo twice (control = schedule, and the reference's freeze rule with its defaults),
reads `sparsity/overall_sparsity` and `sparsity/planned` back from the TensorBoard event files and
draws them with Pillow (no plotting library needed) to docs/sparsity_schedule.png.

    python benchmarks/plot_schedule.py [--steps 600]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from adapmtl_cli.config import load_config
from adapmtl_cli.workflows.train import train

WIDTH, HEIGHT, MARGIN = 720, 400, 60
COLOURS = {"planned (schedule)": (120, 120, 120), "actual (schedule)": (31, 119, 180), "actual (freeze, reference defaults)": (214, 39, 40)}


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def draw(curves: dict[str, list[tuple[int, float]]], steps: int, target: float, path: Path) -> None:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    pen = ImageDraw.Draw(image)

    def xy(step: float, value: float) -> tuple[float, float]:
        return (MARGIN + (WIDTH - 2 * MARGIN) * step / steps, HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * value)

    pen.rectangle([xy(0, 1), xy(steps, 0)], outline="black")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = xy(0, fraction)
        pen.text((x - 40, y - 6), f"{fraction:.0%}", fill="black")
    for step in range(0, steps + 1, steps // 4):
        x, y = xy(step, 0)
        pen.text((x - 10, y + 8), str(step), fill="black")
    pen.line([xy(0, target), xy(steps, target)], fill=(200, 200, 200), width=1)
    pen.text((WIDTH / 2 - 60, HEIGHT - 25), "training step", fill="black")
    pen.text((MARGIN, 15), f"overall sparsity, target {target:.0%}", fill="black")
    for row, (name, points) in enumerate(curves.items()):
        if len(points) > 1:
            pen.line([xy(s, v) for s, v in points], fill=COLOURS[name], width=3 if "actual" in name else 2)
        pen.line([(WIDTH - 300, 40 + 18 * row), (WIDTH - 270, 40 + 18 * row)], fill=COLOURS[name], width=3)
        pen.text((WIDTH - 262, 34 + 18 * row), name, fill="black")
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "docs" / "sparsity_schedule.png")
    args = parser.parse_args()
    common = [f"train.steps={args.steps}", f"train.val_every={args.steps}", "train.log_every=10"]
    with tempfile.TemporaryDirectory() as tmp:
        schedule = Path(tmp) / "schedule"
        freeze = Path(tmp) / "freeze"
        config = load_config("demo", common)
        train(config, schedule, quiet=True)
        train(load_config("demo", common + ["sparsity.control='freeze'", "sparsity.init=-15", "optim.lr=1e-3"]), freeze, quiet=True)
        curves = {
            "planned (schedule)": scalars(schedule, "sparsity/planned"),
            "actual (schedule)": scalars(schedule, "sparsity/overall_sparsity"),
            "actual (freeze, reference defaults)": scalars(freeze, "sparsity/overall_sparsity"),
        }
    draw(curves, args.steps, config.sparsity.target, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
