"""Data-parallel scaling of the demo on the CPU (1 vs 2 gloo processes) and the cost of resuming.

Both runs train the demo with the same global batch for the same number of steps; the script
reads each run's training time from its log (first to last step, no start-up) and prints steps
per second side by side. Resume overhead: a run stopped halfway and resumed, against the same run
straight through, wall clock of the whole command including start-up.

    python benchmarks/ddp_scaling.py [--steps 200] [--write]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from steptime import report

COMMON = ["--quiet", "train.batch_size=32", "data.train_size=2048", "data.val_size=32", "data.test_size=32"]


def log_seconds(run: Path) -> float:
    """Seconds between the 'training' line and the last validation line of log.txt."""
    stamps = []
    for line in (run / "log.txt").read_text().splitlines():
        stamp = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
        if " training " in line or ": val loss " in line:
            stamps.append(stamp)
    return (stamps[-1] - stamps[0]).total_seconds()


def adapmtl(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "adapmtl_cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def resume_overhead(tmp: Path, steps: int) -> tuple[float, float, float]:
    """Seconds of a straight run, of the same run stopped at half, and of its resumption."""
    from adapmtl_cli.config import load_config
    from adapmtl_cli.errors import Interrupted
    from adapmtl_cli.run import TrainingRun
    from adapmtl_cli.workflows.train import resume, train

    config = load_config("demo", [o for o in COMMON if "=" in o] + [f"train.steps={steps}", f"train.val_every={steps}"])
    start = time.perf_counter()
    train(config, tmp / "straight", quiet=True)
    straight = time.perf_counter() - start

    original = TrainingRun.on_step_end

    def stop_at_half(self, trainer, done, record):
        if done == steps // 2:
            self._stop_signal = 15  # what SIGTERM's handler records
        return original(self, trainer, done, record)

    TrainingRun.on_step_end = stop_at_half
    start = time.perf_counter()
    try:
        train(config, tmp / "split", quiet=True)
    except Interrupted:
        pass
    finally:
        TrainingRun.on_step_end = original
    interrupted = time.perf_counter() - start
    start = time.perf_counter()
    resume(tmp / "split", quiet=True)
    return straight, interrupted, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    steps = [f"train.steps={args.steps}", f"train.val_every={args.steps}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = adapmtl("train", "--out", str(tmp / "one"), *COMMON, *steps)
        two = adapmtl("train", "--nproc", "2", "--out", str(tmp / "two"), *COMMON, *steps)
        rate_one = args.steps / log_seconds(tmp / "one")
        rate_two = args.steps / log_seconds(tmp / "two")
        straight, interrupted, resumed = resume_overhead(tmp, args.steps)
    lines = [f"### Data-parallel scaling and resume overhead (demo, {args.steps} steps, global batch 32, CPU)", "",
             "| processes | steps / s (training loop) | wall clock of the command (s) | speed-up |", "|---|---|---|---|",
             f"| 1 | {rate_one:.2f} | {one:.1f} | 1.00x |",
             f"| 2 (gloo) | {rate_two:.2f} | {two:.1f} | {rate_two / rate_one:.2f}x |", "",
             "| run (in one process, start-up excluded) | seconds |", "|---|---|",
             f"| straight through | {straight:.2f} |",
             f"| stopped at half (state saved) + resumed to the end | {interrupted:.2f} + {resumed:.2f} = {interrupted + resumed:.2f} |",
             f"| resume overhead | {interrupted + resumed - straight:+.2f} ({(interrupted + resumed) / straight - 1:+.1%}) |"]
    report(lines, args.write)


if __name__ == "__main__":
    main()
