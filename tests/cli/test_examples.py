"""examples/own_loop.py, the custom model trained by a loop of the user's own through the
public API, runs as a script and lands on its target; its checkpoint reads back with inspect."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapmtl_cli.cli import main
from conftest import recount_zeros

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_own_loop_example_lands_on_its_target(tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "own_loop.py"), "4"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("overall  80.00%"), done.stdout[:200]
    checkpoint = tmp_path / "own-loop.safetensors"
    zeros, total = recount_zeros(checkpoint)
    assert zeros / total == pytest.approx(0.8, abs=2 / total)
    assert main(["inspect", str(checkpoint), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(report["sparsity"]["zeros"].values()) == zeros
    assert report["tasks"] == ["segment_semantic", "depth_zbuffer"]
