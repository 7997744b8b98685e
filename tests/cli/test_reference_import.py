"""Reference AdapMTL `.model` checkpoints: read through a restricted unpickler, never executed."""

import json
import math
import os

import pytest
import torch

from adapmtl_cli.cli import main
from adapmtl_cli.config import load_config
from adapmtl_cli.errors import CheckpointError
from adapmtl_cli.io.reference import load_reference_checkpoint
from adapmtl_cli.builders import build_model


class Layout:
    """Stands for TreeMTL's pickled Layout object."""

    def __init__(self):
        self.T = 3
        self.state = [[{0, 1, 2}], [{0}, {1, 2}]]


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def reference_state(threshold=-3.0, hidden=8):
    """A reference-style state dict: adapmtl's names plus a sparseThreshold per component and a
    copy under every conv, like the reference model."""
    config = load_config("nyuv2-mnv2", [f"model.head_hidden={hidden}"])
    torch.manual_seed(0)
    model = build_model(config, {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}, sparse=False)
    state = dict(model.state_dict())
    state.pop("sparsifier._layer_numel", None)
    values = {"backbone": threshold, "segment_semantic": threshold - 1, "normal": threshold - 2, "depth_zbuffer": threshold - 3}
    state["backbone.sparseThreshold"] = torch.tensor(values["backbone"])
    for task in ("segment_semantic", "normal", "depth_zbuffer"):
        state[f"heads.{task}.sparseThreshold"] = torch.tensor(values[task])
        state[f"heads.{task}.fc1.conv1.sparseThreshold"] = torch.tensor(values[task])
    state["backbone.features.0.0.sparseThreshold"] = torch.tensor(values["backbone"])
    return state, values


def save_reference(path, state, iteration=16000, extra=None):
    document = {"iter": iteration, "state_dict": state, "layout": Layout(),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]}, "scheduler": {"last_epoch": 3}}
    document.update(extra or {})
    torch.save(document, path)


def test_import_maps_keys_and_collapses_thresholds(tmp_path):
    state, values = reference_state()
    path = tmp_path / "segment_semantic_normal_depth_zbuffer.model"
    save_reference(path, state)
    reference = load_reference_checkpoint(path)
    assert reference.tasks == ["segment_semantic", "normal", "depth_zbuffer"]
    assert reference.backbone == "mobilenetv2" and reference.step == 16000
    assert {k: float(v) for k, v in reference.thresholds.items()} == {
        "backbone": values["backbone"], "head.segment_semantic": values["segment_semantic"],
        "head.normal": values["normal"], "head.depth_zbuffer": values["depth_zbuffer"]}
    assert not any(k.endswith("sparseThreshold") for k in reference.state_dict)
    for key, value in state.items():
        if not key.endswith("sparseThreshold"):
            assert torch.equal(reference.state_dict[key], value), key


def test_inspect_and_eval_read_reference_files(tmp_path, capsys):
    state, values = reference_state()
    path = tmp_path / "best.model"
    save_reference(path, state)
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    t = 1 / (1 + math.exp(-values["backbone"]))
    weights = [v for k, v in state.items() if k.startswith("backbone.") and v.dim() == 4]
    expected = sum(int((w.abs() <= t).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert report["sparsity"]["components"]["backbone"] == pytest.approx(expected)
    assert report["thresholds"]["backbone"] == pytest.approx(t)
    assert main(["eval", str(path), "--json"]) == 0  # on synthetic scenes: no data root given
    result = json.loads(capsys.readouterr().out)
    assert set(result["metrics"]) == {"segment_semantic", "normal", "depth_zbuffer"}
    assert result["sparsity"]["components"]["backbone"] == pytest.approx(expected)


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    state, _ = reference_state()
    path = tmp_path / "evil.model"
    save_reference(path, state, extra={"payload": Exploit(marker)})
    with pytest.raises(CheckpointError, match="refused to load the global"):
        load_reference_checkpoint(path)
    assert main(["inspect", str(path)]) == 3
    err = capsys.readouterr().err
    assert "posix.system" in err or "os.system" in err
    assert not marker.exists()


def test_damaged_files_are_checkpoint_errors(tmp_path):
    state, _ = reference_state()
    good = tmp_path / "good.model"
    save_reference(good, state)
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(good.read_bytes()[:5000])
    noise = tmp_path / "noise.model"
    noise.write_bytes(os.urandom(3000))
    no_state = tmp_path / "no-state.model"
    torch.save({"iter": 3}, no_state)
    for path in (truncated, noise, no_state):
        with pytest.raises(CheckpointError, match=path.name):
            load_reference_checkpoint(path)


def test_disagreeing_per_conv_thresholds_are_refused(tmp_path):
    state, _ = reference_state()
    state["heads.normal.fc1.conv1.sparseThreshold"] = torch.tensor(1.0)
    path = tmp_path / "odd.model"
    save_reference(path, state)
    with pytest.raises(CheckpointError, match="head.normal"):
        load_reference_checkpoint(path)
