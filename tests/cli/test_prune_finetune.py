"""prune and finetune end to end: masks survive finetuning (also resumed), IMP lands on its ratio."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from adapmtl_cli.cli import main
from adapmtl_cli.run import TrainingRun

TRAIN = ["--quiet", "train.steps=8", "train.val_every=4", "train.batch_size=4", "data.resolution=32", "data.train_size=32",
         "data.val_size=4", "data.test_size=4", "model.width=8", "sparsity.target=0.5"]
FINETUNE = ["train.steps=8", "train.val_every=4", "optim.weight_decay=0.01"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pf")
    assert main(["train", "--out", str(root / "run"), "train.save_init=true", *TRAIN]) == 0
    return root


def conv_zero_fraction(path, layers=None):
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        layer_keys = list(json.loads(handle.metadata()["layers"]))
    zeros = sum(int((tensors[k] == 0).sum()) for k in layer_keys)
    return zeros / sum(tensors[k].size for k in layer_keys), tensors, layer_keys


def test_magnitude_prune_removes_the_ratio_of_nonzeros(trained, tmp_path):
    out = tmp_path / "pruned.safetensors"
    assert main(["prune", str(trained / "run" / "model.safetensors"), "--ratio", "0.6", "--out", str(out), "--json"]) == 0
    fraction, tensors, keys = conv_zero_fraction(out)
    # The source was at 50% sparsity; removing 60% of the rest gives 0.5 + 0.5 * 0.6 = 0.8.
    assert fraction == pytest.approx(0.8, abs=1e-3)
    for key in keys:
        assert np.array_equal(tensors[f"mask.{key}"].astype(bool), tensors[key] != 0)


def test_masks_persist_through_finetuning_and_a_resumed_finetune(trained, tmp_path, monkeypatch):
    pruned = tmp_path / "pruned.safetensors"
    assert main(["prune", str(trained / "run" / "model.safetensors"), "--ratio", "0.6", "--out", str(pruned)]) == 0
    _, before, keys = conv_zero_fraction(pruned)

    original = TrainingRun.on_step_end

    def stop_after_five(self, trainer, done, record):
        if done == 5:
            self._stop_signal = 15
        return original(self, trainer, done, record)

    monkeypatch.setattr(TrainingRun, "on_step_end", stop_after_five)
    run = tmp_path / "ft"
    assert main(["finetune", str(pruned), "--out", str(run), "--quiet", *FINETUNE]) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _, after, _ = conv_zero_fraction(run / "model.safetensors")
    changed = 0
    for key in keys:
        pruned_positions = before[f"mask.{key}"] == 0
        assert (after[key][pruned_positions] == 0).all(), key  # exactly zero after 8 Adam steps with decay
        changed += int((after[key][~pruned_positions] != before[key][~pruned_positions]).sum())
    assert changed > 0  # the survivors did train


def test_lottery_ticket_rewind_restarts_survivors_from_init(trained, tmp_path):
    pruned = tmp_path / "pruned.safetensors"
    assert main(["prune", str(trained / "run" / "model.safetensors"), "--ratio", "0.5", "--out", str(pruned)]) == 0
    run = tmp_path / "lth"
    assert main(["finetune", str(pruned), "--rewind", str(trained / "run" / "init.safetensors"), "--out", str(run),
                 "--quiet", "train.steps=1", "train.val_every=1", "optim.lr=1e-12"]) == 0
    init = load_file(str(trained / "run" / "init.safetensors"))
    _, after, keys = conv_zero_fraction(run / "model.safetensors")
    mask = load_file(str(pruned))
    for key in keys:
        keep = mask[f"mask.{key}"].astype(bool)
        assert np.allclose(after[key][keep], init[key][keep], atol=1e-9)
        assert (after[key][~keep] == 0).all()


def test_iterative_pruning_reaches_the_final_ratio_in_stages(trained, tmp_path):
    out = tmp_path / "imp.safetensors"
    assert main(["prune", str(trained / "run" / "model.safetensors"), "--ratio", "0.75", "--steps", "2", "--out", str(out),
                 "--json", "train.steps=2", "train.val_every=2"]) == 0
    fraction, _, _ = conv_zero_fraction(out)
    assert fraction == pytest.approx(0.5 + 0.5 * 0.75, abs=2e-3)
    stage_one, _, _ = conv_zero_fraction(tmp_path / "imp.safetensors.stages" / "stage1-pruned.safetensors")
    assert stage_one == pytest.approx(0.5 + 0.5 * 0.5, abs=2e-3)  # 1 - sqrt(1 - 0.75) = 0.5 of the rest


def test_resparsify_pushes_a_model_to_a_higher_target(trained, tmp_path):
    run = tmp_path / "more"
    assert main(["finetune", str(trained / "run" / "model.safetensors"), "--out", str(run), "--quiet",
                 "sparsity.target=0.9", "train.steps=10", "train.val_every=10"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sparsity"]["overall"] == pytest.approx(0.9, abs=0.005)


def test_snip_and_disparse_prune_to_the_ratio(trained, tmp_path):
    for method in ("snip", "disparse"):
        out = tmp_path / f"{method}.safetensors"
        assert main(["prune", str(trained / "run" / "model.safetensors"), "--ratio", "0.5", "--method", method,
                     "--batches", "2", "--out", str(out)]) == 0
        fraction, _, _ = conv_zero_fraction(out)
        assert fraction == pytest.approx(0.75, abs=2e-3)
