"""Exact resume, interrupts and divergence: nothing lost, documented exit codes."""

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

from adapmtl_cli.cli import main
from adapmtl_cli.run import TrainingRun

# ASPP heads (with dropout) on the demo backbone: resume must restore the RNG for the masks too.
FAST = ["train.steps=24", "train.val_every=8", "train.batch_size=4", "data.resolution=32", "data.train_size=40",
        "data.val_size=8", "data.test_size=8", "model.width=8", "model.head='aspp'", "model.head_hidden=8",
        "sparsity.init=-4", "optim.lr=5e-3", "weighting.begin=4", "weighting.window=3", "optim.lr_step=10"]


def stop_at(monkeypatch, step_to_stop, signum=signal.SIGTERM):
    original = TrainingRun.on_step_end

    def on_step_end(self, trainer, done, record):
        if done == step_to_stop + 1:
            self._stop_signal = signum  # what the signal handler records
        return original(self, trainer, done, record)

    monkeypatch.setattr(TrainingRun, "on_step_end", on_step_end)


@pytest.mark.parametrize("mode", ["standard", "paper"])  # paper mode updates the weighting before the backward
def test_interrupted_run_resumes_bitwise(tmp_path, monkeypatch, capsys, mode):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run = [*FAST, f"mode={mode!r}"]
    assert main(["train", "--out", str(straight), "--quiet", *run]) == 0
    stop_at(monkeypatch, 12)  # after 13 steps, between two validations
    assert main(["train", "--out", str(interrupted), "--quiet", *run]) == 130
    err = capsys.readouterr().err
    assert "step 13" in err and "--resume" in err
    assert not (interrupted / "model.safetensors").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(interrupted), "--quiet"]) == 0
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(interrupted / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [8, 16, 24]


@pytest.mark.parametrize("mode", ["standard", "paper"])  # paper mode checks the losses before the backward
def test_divergence_exits_4_names_the_task_and_keeps_the_last_good_state(tmp_path, monkeypatch, capsys, mode):
    from adapmtl_cli.tasks.normal import NormalTask

    original = NormalTask.loss
    calls = {"n": 0}

    def loss(self, pred, target):
        calls["n"] += 1
        value = original(self, pred, target)
        return value * float("nan") if calls["n"] == 6 else value

    monkeypatch.setattr(NormalTask, "loss", loss)
    assert main(["train", "--out", str(tmp_path), "--quiet", *FAST, f"mode={mode!r}"]) == 4
    err = capsys.readouterr().err
    assert "'normal'" in err and "diverged at step 6" in err and err.count("\n") == 1
    state = load_file(str(tmp_path / "state.safetensors"))
    assert all(np.isfinite(v).all() for k, v in state.items() if v.dtype.kind == "f")
    # The weighting never saw the bad step: the loss of step 5 (index 4 = weighting.begin) only
    # seeded it, and no change was recorded.
    assert int(state["weighting.count"]) == 0 and np.isfinite(state["weighting.previous"]).all()


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    from safetensors.numpy import save
    from adapmtl_cli.io.checkpoint import atomic_write_bytes
    blob = save({"w": np.arange(4_000_000, dtype=np.float32)})
    print("ready", flush=True)
    while True:
        atomic_write_bytes(Path(sys.argv[1]), blob)
""")


def test_kill_9_during_a_checkpoint_write_never_leaves_a_corrupt_file(tmp_path):
    target = tmp_path / "model.safetensors"
    for delay in (0.05, 0.13, 0.31):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        import time

        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if target.exists():
            assert np.array_equal(load_file(str(target))["w"], np.arange(4_000_000, dtype=np.float32))
    # Temporary files of killed writers may remain, but never under the checkpoint's name.
    assert all(p.name.startswith(".model.safetensors.") for p in tmp_path.iterdir() if p != target)


def test_a_real_sigterm_saves_the_state_and_exits_130(tmp_path):
    """The actual signal, sent to a training process: state written, exit 130, resumable."""
    import time

    run = tmp_path / "run"
    args = [sys.executable, "-m", "adapmtl_cli", "train", "--out", str(run), "--quiet", "train.steps=100000",
            "train.val_every=100000", "train.batch_size=2", "data.resolution=32", "data.train_size=16", "model.width=4"]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "log.txt").exists():
        time.sleep(0.1)
    time.sleep(1.0)  # some steps in
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "state saved" in err and "Traceback" not in err
    state = load_file(str(run / "state.safetensors"))
    assert "rng.torch" in state
