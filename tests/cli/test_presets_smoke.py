"""Every shipped preset trains a few steps on the synthetic scenes at a small size, no dataset."""

import json

import pytest

from adapmtl_cli.cli import main
from adapmtl_cli.config import list_presets, load_config

SMALL = ["data.source='synthetic'", "train.steps=2", "train.val_every=2", "train.batch_size=2", "data.resolution=64",
         "data.train_size=4", "data.val_size=2", "data.test_size=2", "model.head_hidden=16", "data.workers=0",
         "train.select_after=0"]


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_preset_runs_on_synthetic_data(preset, tmp_path):
    assert main(["train", "--preset", preset, "--out", str(tmp_path), "--quiet", *SMALL]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    config = load_config(preset)
    assert list(summary["metrics"]) == config.tasks
    assert list(summary["sparsity"]["components"]) == ["backbone"] + [f"head.{t}" for t in config.tasks]


def test_paper_presets_follow_the_published_recipes():
    nyu = load_config("nyuv2-resnet34")
    assert (nyu.train.steps, nyu.train.batch_size, nyu.optim.lr, nyu.optim.lr_step, nyu.optim.lr_gamma) == (20000, 16, 1e-3, 4000, 0.5)
    assert (nyu.sparsity.init, load_config("nyuv2-mnv2").sparsity.init) == (-15.0, -18.0)
    assert nyu.optim.betas == (0.5, 0.999) and nyu.weighting.begin == 5000 and nyu.weighting.window == 500
    taskonomy = load_config("taskonomy-mnv2")
    assert (taskonomy.train.steps, taskonomy.optim.lr, taskonomy.optim.lr_step, taskonomy.optim.lr_gamma) == (100000, 1e-4, 12000, 0.3)
    assert len(taskonomy.tasks) == 5 and taskonomy.data.crop == 224
    for name in ("nyuv2-resnet34", "nyuv2-mnv2", "taskonomy-resnet34", "taskonomy-mnv2"):
        config = load_config(name)
        assert config.mode == "paper" and config.sparsity.control == "freeze"
        assert config.eval.miou_tp_only and config.eval.batch_weighted_means and config.eval.depth_unclamped
        assert config.weighting.quirk_normalise_to_three and config.train.select_on == "test"
