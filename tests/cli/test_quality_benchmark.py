"""The quality benchmark's quick mode as a smoke test: every method runs, lands on the sparsity it
claims, the table's Delta_T is the REFERENCE formula applied to the run folders, the curve is drawn,
and --keep resumes (a finished run is never redone; a missing one is)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["adapmtl", "adapmtl-freeze", "adapmtl-one-threshold", "adapmtl-equal-weighting", "magnitude", "imp", "lth", "snip", "disparse"]
# REFERENCE.md 8: higher is better for these, lower for the rest.
HIGHER = {"miou", "pixel_acc", "within_11_25", "within_22_5", "within_30", "delta_1_25", "delta_1_25_2", "delta_1_25_3"}

pytest.importorskip("matplotlib")  # the curve needs the plot extra (the test extra installs it)


def delta_t(metrics: dict, baseline: dict) -> float:
    """Delta_T by hand: per task the sum of signed relative changes (%), then the mean over tasks."""
    per_task = []
    for task, values in baseline.items():
        per_task.append(sum((1 if key in HIGHER else -1) * (metrics[task][key] - base) / base * 100 for key, base in values.items()))
    return sum(per_task) / len(per_task)


def run_benchmark(keep: Path) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick", "--keep", str(keep),
                             "--plot", str(keep / "curve.png")], capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def table_rows(output: str) -> dict[str, str]:
    table = output.split("At overall sparsity", 1)[1]
    return {cells[0]: cells[1] for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| "))
            if cells[0] in METHODS}


def test_quick_benchmark_runs_every_method_and_resumes(tmp_path):
    keep = tmp_path / "bench"
    output = run_benchmark(keep)
    runs = keep / "runs"
    dense = json.loads((runs / "dense-seed0" / "summary.json").read_text())
    assert dense["sparsity"]["overall"] == 0
    rows = table_rows(output)
    assert sorted(rows) == sorted(METHODS)
    for method in METHODS:
        summary = json.loads((runs / f"{method}-s0.9-seed0" / "summary.json").read_text())
        assert summary["sparsity"]["overall"] == pytest.approx(0.9, abs=2e-3), method
        # One seed: the table shows the mean alone, to one decimal.
        assert float(rows[method]) == pytest.approx(delta_t(summary["metrics"], dense["metrics"]), abs=0.051), method
    png = (keep / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"\| adapmtl \| [+-]\d+\.\d \|", output.split("against overall sparsity", 1)[1])

    # Resume: a finished run is left alone, a missing one is made again.
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    lost = runs / "lth-s0.9-seed0" / "summary.json"
    before = json.loads(lost.read_text())
    lost.unlink()
    again = run_benchmark(keep)
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items() if p != lost)
    # Redone alone in a fresh worker, the run is the same to the bit: a job does not depend on
    # what its worker process ran before it.
    assert json.loads(lost.read_text())["metrics"] == before["metrics"]
    assert table_rows(again) == rows
