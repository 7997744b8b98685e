"""eval --baseline / --fail-under as a CI gate, and compare in the paper's Table 2 layout."""

import csv
import io
import json

import pytest

from adapmtl_cli.cli import main
from adapmtl_cli.tasks.scores import delta_scores

RUN = ["--quiet", "train.steps=6", "train.val_every=6", "train.batch_size=4", "data.resolution=32", "data.train_size=32",
       "data.val_size=4", "data.test_size=8", "model.width=8"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    assert main(["train", "--out", str(root / "dense"), "sparsity.enabled=false", *RUN]) == 0
    assert main(["train", "--out", str(root / "sparse"), "sparsity.target=0.8", *RUN]) == 0
    return root


def eval_json(path, capsys, *extra):
    assert main(["eval", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_delta_against_a_baseline_json_and_checkpoint(models, capsys, tmp_path):
    dense = eval_json(models / "dense" / "model.safetensors", capsys)
    baseline = tmp_path / "dense.json"
    baseline.write_text(json.dumps(dense))
    sparse = eval_json(models / "sparse" / "model.safetensors", capsys, "--baseline", str(baseline))
    # Independent recomputation of Delta_T from the two metric sets, by the paper's formula.
    lower_better = {"angle_mean", "angle_median", "abs_err", "rel_err"}
    per_task = {}
    for task, values in dense["metrics"].items():
        per_task[task] = sum((1 if key not in lower_better else -1) * (sparse["metrics"][task][key] - base) / base * 100
                             for key, base in values.items() if base != 0)  # a zero baseline has no relative change
    assert sparse["delta"]["per_task"] == pytest.approx(per_task)
    assert sparse["delta"]["delta_t"] == pytest.approx(sum(per_task.values()) / len(per_task))
    assert "SUM" in sparse["delta"]["definition"]["delta_t"] and "MEAN" in sparse["delta"]["definition"]["delta_p"]
    from_checkpoint = eval_json(models / "sparse" / "model.safetensors", capsys, "--baseline", str(models / "dense" / "model.safetensors"))
    assert from_checkpoint["delta"]["delta_t"] == pytest.approx(sparse["delta"]["delta_t"])


def test_fail_under_gates_on_delta_t(models, capsys):
    baseline = str(models / "dense" / "model.safetensors")
    result = eval_json(models / "sparse" / "model.safetensors", capsys, "--baseline", baseline)
    delta_t = result["delta"]["delta_t"]
    assert main(["eval", str(models / "sparse" / "model.safetensors"), "--baseline", baseline, "--fail-under", str(delta_t - 1)]) == 0
    capsys.readouterr()
    assert main(["eval", str(models / "sparse" / "model.safetensors"), "--baseline", baseline, "--fail-under", str(delta_t + 1)]) == 1
    assert "below --fail-under" in capsys.readouterr().err


def test_compare_formats(models, capsys):
    files = [str(models / "sparse" / "model.safetensors")]
    baseline = str(models / "dense" / "model.safetensors")
    assert main(["compare", *files, "--baseline", baseline, "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    rows = comparison["rows"]
    assert [r["model"] for r in rows] == ["baseline", "model"]
    assert rows[0]["delta"]["delta_t"] == pytest.approx(0.0)
    expected = delta_scores(rows[1]["metrics"], rows[0]["metrics"],
                            {"segment_semantic": {"miou": True, "pixel_acc": True},
                             "normal": {"angle_mean": False, "angle_median": False, "within_11_25": True, "within_22_5": True, "within_30": True},
                             "depth_zbuffer": {"abs_err": False, "rel_err": False, "delta_1_25": True, "delta_1_25_2": True, "delta_1_25_3": True}})
    assert rows[1]["delta"]["delta_t"] == pytest.approx(expected.delta_t)
    assert main(["compare", *files, "--baseline", baseline, "--format", "csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0][0] == "model" and "Delta_T" in table[0] and "backbone %" in table[0] and len(table) == 3
    assert main(["compare", *files, "--baseline", baseline, "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0].startswith("| model |") and markdown[1].startswith("|---|") and len(markdown) == 4
