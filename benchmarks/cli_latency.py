"""Latency of `adapmtl --help` and `adapmtl inspect` on a 90M-weight checkpoint, side by side with
the cost of merely starting Python and importing torch (what inspect avoids).

Builds the nyuv2-resnet34 model (90,653,888 conv weights), thresholds set so that it is about 90%
sparse, saves it as a checkpoint in a temporary folder and times each command as a subprocess.

    python benchmarks/cli_latency.py [--repeats 5] [--write]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from adapmtl_cli.config import config_to_json, load_config
from adapmtl_cli.io.checkpoint import save_checkpoint
from adapmtl_cli.builders import build_model

TARGETS = {"adapmtl --help": 0.5, "adapmtl inspect (90M checkpoint)": 2.0, "adapmtl inspect --json": 2.0}


def make_checkpoint(folder: Path) -> Path:
    config = load_config("nyuv2-resnet34")
    torch.manual_seed(0)
    model = build_model(config, {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1})
    with torch.no_grad():
        for name, param in zip(model.sparsifier.threshold_names, model.sparsifier.thresholds):
            weights = torch.cat([model.sparsifier.raw_weight(i).abs().flatten()
                                 for i, layer in enumerate(model.sparsifier.layers) if layer.threshold == name])
            t = torch.quantile(weights[torch.randperm(weights.numel())[:1_000_000]], 0.9)
            param.fill_(float(torch.logit(t)))
    path = folder / "nyuv2-resnet34.safetensors"
    save_checkpoint(path, model, config_to_json(config), 20000, model.sparsifier.stats().as_report())
    return path


def time_command(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    adapmtl = shutil.which("adapmtl") or sys.exit("install adapmtl first (make install)")
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(Path(tmp))
        size_mib = path.stat().st_size / 2**20
        rows = {
            "python -c pass": time_command([sys.executable, "-c", "pass"], args.repeats),
            "python -c 'import torch'": time_command([sys.executable, "-c", "import torch"], args.repeats),
            "adapmtl --help": time_command([adapmtl, "--help"], args.repeats),
            "adapmtl inspect (90M checkpoint)": time_command([adapmtl, "inspect", str(path)], args.repeats),
            "adapmtl inspect --json": time_command([adapmtl, "inspect", "--json", str(path)], args.repeats),
        }
    lines = [f"### CLI latency (median of {args.repeats}, checkpoint {size_mib:.0f} MiB, warm page cache)", "",
             "| command | seconds | target | within |", "|---|---|---|---|"]
    for name, seconds in rows.items():
        target = TARGETS.get(name)
        verdict = "-" if target is None else ("yes" if seconds <= target else "NO")
        lines.append(f"| `{name}` | {seconds:.2f} | {'-' if target is None else f'{target:.1f}'} | {verdict} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(Path(__file__).parent / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
