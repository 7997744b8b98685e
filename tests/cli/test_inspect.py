"""`adapmtl inspect` on adapmtl checkpoints: numbers from the file alone, bad files exit 3."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from adapmtl_cli.cli import main
from adapmtl_cli.config import config_to_json, load_config
from adapmtl_cli.io.checkpoint import save_checkpoint
from adapmtl_cli.builders import build_model

OUT_CHANNELS = {"segment_semantic": 6, "normal": 3, "depth_zbuffer": 1}


@pytest.fixture
def checkpoint(tmp_path):
    config = load_config("demo", ["model.width=8", "sparsity.init=-4"])
    torch.manual_seed(0)
    model = build_model(config, OUT_CHANNELS)
    with torch.no_grad():
        model.sparsifier.thresholds[1].fill_(math.log(0.2 / 0.8))  # head.segment_semantic: t = 0.2
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, config_to_json(config), 123, model.sparsifier.stats().as_report())
    return path, model


def expected_from_weights(model):
    """Independent count: zeros of the effective weights the model actually computes."""
    per_component = {}
    for name, module in model.components().items():
        convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        zeros = sum(int((m.weight == 0).sum()) for m in convs)  # m.weight is W_eff
        params = sum(m.weight.numel() for m in convs)
        per_component[name] = (zeros, params)
    return per_component


def test_inspect_json_matches_the_model(checkpoint, capsys):
    path, model = checkpoint
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = expected_from_weights(model)
    assert report["step"] == 123 and report["preset"] == "demo"
    assert report["tasks"] == list(OUT_CHANNELS)
    for name, (zeros, params) in expected.items():
        assert report["params"][name] == params
        assert report["sparsity"]["components"][name] == pytest.approx(zeros / params)
        assert report["nonzeros"][name] == params - zeros
    total_zeros = sum(z for z, _ in expected.values())
    total = sum(p for _, p in expected.values())
    assert report["sparsity"]["overall"] == pytest.approx(total_zeros / total)
    assert report["thresholds"]["head.segment_semantic"] == pytest.approx(0.2)
    assert report["thresholds"]["backbone"] == pytest.approx(1 / (1 + math.exp(4)))
    assert report["file_size"] == path.stat().st_size


def test_inspect_layers_and_table(checkpoint, capsys):
    path, model = checkpoint
    assert main(["inspect", str(path), "--json", "--layers"]) == 0
    report = json.loads(capsys.readouterr().out)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(report["layers"]) == {f"{n}.weight" for n in convs}
    first = "heads.segment_semantic.conv1"
    assert report["layers"][f"{first}.weight"]["sparsity"] == pytest.approx(float((convs[first].weight == 0).float().mean()))
    assert main(["inspect", str(path), "--layers"]) == 0
    err = capsys.readouterr().err
    assert "Components" in err and "Layers" in err and "dense-kernel time" in err


def test_bad_files_exit_3_with_one_line(tmp_path, checkpoint, capsys):
    path, _ = checkpoint
    random_bytes = tmp_path / "random.safetensors"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(1000))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": np.zeros(3, dtype=np.float32)}, str(foreign))
    for bad in (random_bytes, truncated, foreign, tmp_path / "missing.safetensors"):
        assert main(["inspect", str(bad)]) == 3, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
