"""The demo end to end on a reduced step count, and what it leaves on disk."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors import safe_open

from adapmtl_cli.cli import main
from adapmtl_cli.config import load_config

from conftest import TINY_RUN as FAST


@pytest.fixture
def demo_run(trained_run):
    return trained_run


def test_run_directory_holds_every_file(demo_run):
    for name in ["config.toml", "model.safetensors", "best.safetensors", "state.safetensors", "metrics.jsonl", "summary.json", "log.txt"]:
        assert (demo_run / name).is_file(), name
    assert list(demo_run.glob("events.out.tfevents.*"))
    lines = (demo_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [20, 40]


def test_summary_has_the_one_report_shape(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["step"] == 40
    assert set(summary["sparsity"]) == {"overall", "components", "zeros", "params"}
    assert list(summary["sparsity"]["components"]) == ["backbone", "head.segment_semantic", "head.normal", "head.depth_zbuffer"]
    sparsity = summary["sparsity"]
    # The fractions are the integer counts divided, component by component and overall.
    for name, value in sparsity["components"].items():
        assert value == sparsity["zeros"][name] / sparsity["params"][name]
    assert sparsity["overall"] == sum(sparsity["zeros"].values()) / sum(sparsity["params"].values())
    assert set(summary["thresholds"]) == set(summary["sparsity"]["components"])
    assert set(summary["metrics"]) == {"segment_semantic", "normal", "depth_zbuffer"}
    assert 0 <= summary["metrics"]["segment_semantic"]["pixel_acc"] <= 1


def _numpy_sparsity(path):
    """Count zeros of sign(W) * max(|W| - sigmoid(s), 0) with numpy from the file alone."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="np") as handle:
        layers = json.loads(handle.metadata()["layers"])
    zeros, total, per_component = 0, 0, {}
    for key, info in layers.items():
        weight = tensors[key]  # float32, the raw W
        s = float(tensors[f"threshold.{info['threshold']}"])
        t = np.float32(1.0 / (1.0 + np.exp(-s)))
        effective = np.sign(weight) * np.maximum(np.abs(weight) - t, np.float32(0))
        z = int((effective == 0).sum())
        zeros += z
        total += weight.size
        c = per_component.setdefault(info["component"], [0, 0])
        c[0] += z
        c[1] += weight.size
    return zeros / total, {k: z / n for k, (z, n) in per_component.items()}


def test_sparsity_accounting_equals_a_numpy_count(demo_run):
    overall, components = _numpy_sparsity(demo_run / "model.safetensors")
    with safe_open(str(demo_run / "model.safetensors"), framework="np") as handle:
        recorded = json.loads(handle.metadata()["sparsity"])
    assert recorded["overall"] == pytest.approx(overall, abs=1e-12)
    assert recorded["components"] == pytest.approx(components, abs=1e-12)
    assert overall > 0  # the thresholds did bite


def test_resolved_config_reruns_the_same(demo_run):
    assert load_config(str(demo_run / "config.toml")) == load_config("demo", FAST)


def test_existing_run_directory_is_not_overwritten(demo_run, capsys):
    assert main(["train", "--preset", "demo", "--out", str(demo_run), "--quiet", *FAST]) == 2
    assert "--force" in capsys.readouterr().err


def test_seeded_cpu_runs_are_bitwise_repeatable(demo_run, tmp_path):
    assert main(["train", "--preset", "demo", "--out", str(tmp_path), "--quiet", *FAST]) == 0
    first = load_file(str(demo_run / "model.safetensors"))
    second = load_file(str(tmp_path / "model.safetensors"))
    assert first.keys() == second.keys()
    for key in first:
        assert np.array_equal(first[key], second[key]), key
