"""The bad-input matrix: every command, one line on stderr naming the culprit, a documented exit
code, no traceback, nothing half-written."""

import errno
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from adapmtl_cli.cli import main
from adapmtl_cli.config import config_to_json, load_config
from adapmtl_cli.io.checkpoint import save_checkpoint
from adapmtl_cli.builders import build_model

OUT_CHANNELS = {"segment_semantic": 6, "normal": 3, "depth_zbuffer": 1}
SMALL = ["model.width=8", "data.resolution=32", "data.test_size=4", "data.val_size=4", "train.batch_size=2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    config = load_config("demo", SMALL)
    torch.manual_seed(0)
    model = build_model(config, OUT_CHANNELS)
    good = root / "good.safetensors"
    save_checkpoint(good, model, config_to_json(config), 5, model.sparsifier.stats().as_report())
    data = good.read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 3])
    flipped = bytearray(data)
    flipped[10] ^= 0xFF  # inside the JSON header
    (root / "flipped.safetensors").write_bytes(bytes(flipped))
    (root / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    save_file({"x": np.zeros(2, dtype=np.float32)}, str(root / "foreign.safetensors"))
    other = load_config("demo", SMALL[1:] + ["model.width=12"])  # another model: the tensors do not fit
    save_checkpoint(root / "mismatch.safetensors", model, config_to_json(other), 5, model.sparsifier.stats().as_report())
    (root / "unknown-key.toml").write_text('name = "x"\n[train]\nstepz = 3\n')
    (root / "wrong-type.toml").write_text('[optim]\nlr = "fast"\n')
    (root / "broken.toml").write_text("[train\n")
    (root / "not-json.json").write_text("{nope")
    (root / "no-metrics.json").write_text('{"step": 1}')
    (root / "existing-run").mkdir()
    (root / "existing-run" / "config.toml").write_text("")
    (root / "empty-dir").mkdir()
    (root / "corrupt-state").mkdir()
    (root / "corrupt-state" / "config.toml").write_text('name = "demo"\n[model]\nwidth = 8\n')
    (root / "corrupt-state" / "state.safetensors").write_bytes(b"\x00" * 100)
    (root / "existing.toml").write_text("")
    return root


# (id, argv with {root} placeholders, exit code, a substring the one-line message must contain)
CASES = [
    ("unknown preset", ["train", "--preset", "nope"], 2, "unknown preset 'nope'"),
    ("missing preset file", ["train", "--preset", "{root}/missing.toml"], 2, "missing.toml does not exist"),
    ("broken toml", ["train", "--preset", "{root}/broken.toml"], 2, "not valid TOML"),
    ("unknown key in file", ["train", "--preset", "{root}/unknown-key.toml"], 2, "did you mean 'train.steps'"),
    ("wrong type in file", ["train", "--preset", "{root}/wrong-type.toml"], 2, "optim.lr"),
    ("unknown override", ["train", "train.stepz=3"], 2, "did you mean 'train.steps'"),
    ("target above 1", ["train", "sparsity.target=1.5"], 2, "sparsity.target"),
    ("target 0", ["train", "sparsity.target=0"], 2, "sparsity.target"),
    ("empty task list", ["train", "tasks=[]"], 2, "task list is empty"),
    ("unknown task", ["train", "tasks=['colour']"], 2, "unknown task 'colour'"),
    ("steps not a number", ["train", "train.steps=abc"], 2, "train.steps"),
    ("negative lr", ["train", "optim.lr=-1"], 2, "optim.lr"),
    ("override without =", ["train", "novalue"], 2, "not key=value"),
    ("bad granularity", ["train", "sparsity.granularity=row"], 2, "sparsity.granularity"),
    ("bad weighting", ["train", "weighting.method=magic"], 2, "weighting.method"),
    ("bad backbone", ["train", "model.backbone=vgg"], 2, "model.backbone"),
    ("schedule out of order", ["train", "sparsity.control=schedule", "sparsity.schedule_start=0.8", "sparsity.schedule_end=0.5"], 2, "schedule_end"),
    ("freeze_only unknown", ["train", "--out", "{root}/fo", "sparsity.freeze_only=['head.nope']", *SMALL], 2, "head.nope"),
    ("dataset without root", ["train", "--out", "{root}/nr", "data.source=nyuv2"], 2, "data.root"),
    ("existing run dir", ["train", "--out", "{root}/existing-run"], 2, "--force"),
    ("unwritable out", ["train", "--out", "/proc/adapmtl-run", *SMALL], 2, "/proc/adapmtl-run"),
    ("resume without config", ["train", "--resume", "{root}/empty-dir"], 2, "no config.toml"),
    ("resume with overrides", ["train", "--resume", "{root}/existing-run", "train.steps=3"], 2, "overrides are not allowed"),
    ("resume corrupt state", ["train", "--resume", "{root}/corrupt-state", "--quiet"], 3, "state.safetensors"),
    ("priorities of unknown task", ["train", "weighting.priorities.keypoints2d=2"], 2, "weighting.priorities"),
    ("inspect missing", ["inspect", "{root}/missing.safetensors"], 3, "missing.safetensors"),
    ("inspect random bytes", ["inspect", "{root}/random.safetensors"], 3, "random.safetensors"),
    ("inspect truncated", ["inspect", "{root}/truncated.safetensors"], 3, "truncated.safetensors"),
    ("inspect bit-flipped", ["inspect", "{root}/flipped.safetensors"], 3, "flipped.safetensors"),
    ("inspect foreign safetensors", ["inspect", "{root}/foreign.safetensors"], 3, "not written by adapmtl"),
    ("eval truncated", ["eval", "{root}/truncated.safetensors"], 3, "truncated.safetensors"),
    ("eval bit-flipped", ["eval", "{root}/flipped.safetensors"], 3, "flipped.safetensors"),
    ("eval other model", ["eval", "{root}/mismatch.safetensors"], 3, "does not fit"),
    ("eval gate without baseline", ["eval", "{root}/good.safetensors", "--fail-under", "0"], 2, "--fail-under needs --baseline"),
    ("eval baseline not json", ["eval", "{root}/good.safetensors", "--baseline", "{root}/not-json.json"], 2, "not-json.json"),
    ("eval baseline without metrics", ["eval", "{root}/good.safetensors", "--baseline", "{root}/no-metrics.json"], 2, "no 'metrics'"),
    ("eval bad split", ["eval", "{root}/good.safetensors", "--split", "train"], 2, "--split"),
    ("compare bad format", ["compare", "{root}/good.safetensors", "--baseline", "{root}/good.safetensors", "--format", "xml"], 2, "--format"),
    ("prune ratio above 1", ["prune", "{root}/good.safetensors", "--ratio", "1.5", "--out", "{root}/p.safetensors"], 2, "--ratio"),
    ("prune ratio 0", ["prune", "{root}/good.safetensors", "--ratio", "0", "--out", "{root}/p.safetensors"], 2, "--ratio"),
    ("prune unknown method", ["prune", "{root}/good.safetensors", "--ratio", "0.5", "--method", "lottery", "--out", "{root}/p.safetensors"], 2, "--method"),
    ("prune unknown scope", ["prune", "{root}/good.safetensors", "--ratio", "0.5", "--scope", "row", "--out", "{root}/p.safetensors"], 2, "--scope"),
    ("prune over an existing file", ["prune", "{root}/good.safetensors", "--ratio", "0.5", "--out", "{root}/existing.toml"], 2, "--force"),
    ("prune truncated", ["prune", "{root}/truncated.safetensors", "--ratio", "0.5", "--out", "{root}/p2.safetensors"], 3, "truncated.safetensors"),
    ("finetune masked without masks", ["finetune", "{root}/good.safetensors", "--mode", "masked", "--out", "{root}/ft"], 3, "has no masks"),
    ("finetune unknown mode", ["finetune", "{root}/good.safetensors", "--mode", "magic", "--out", "{root}/ft2"], 2, "--mode"),
    ("export unknown format", ["export", "{root}/good.safetensors", "--format", "onnx", "--out", "{root}/e.bin"], 2, "onnx"),
    ("export over an existing file", ["export", "{root}/good.safetensors", "--format", "dense", "--out", "{root}/existing.toml"], 2, "--force"),
    ("export unwritable", ["export", "{root}/good.safetensors", "--format", "dense", "--out", "/proc/x/e.safetensors"], 3, "/proc/x"),
    ("presets copy over a file", ["presets", "copy", "demo", "{root}/existing.toml"], 2, "--force"),
    ("presets show unknown", ["presets", "show", "demoo"], 2, "did you mean 'demo'"),
]


@pytest.mark.parametrize("argv,code,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(files, argv, code, needle, capsys):
    args = [a.replace("{root}", str(files)) for a in argv]
    assert main(args) == code
    err = capsys.readouterr().err
    assert needle.replace("{root}", str(files)) in err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, err  # one line


def test_cli_usage_errors_exit_2(capsys):
    assert main(["train", "--nproc", "-1"]) == 2
    assert main(["frobnicate"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_full_disk_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    from adapmtl_cli.errors import CheckpointError
    from adapmtl_cli.io import checkpoint as ckpt

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.os, "fsync", full)
    with pytest.raises(CheckpointError, match="No space left"):
        ckpt.atomic_write_bytes(target, b"new bytes")
    assert target.read_bytes() == b"old"  # the previous file survives whole
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind
