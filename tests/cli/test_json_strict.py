"""Every JSON document adapmtl writes parses with a strict parser (no NaN / Infinity literals, as
jq and JavaScript require); an undefined metric is null in JSON, "n/a" in the tables, and skipped
with a reason by everything that reads it back (issue #15, part 3)."""

import io
import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console

from adapmtl_cli.cli import main
from adapmtl_cli.report.jsonout import dumps, to_strict


def _refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")


def strict_loads(text):
    """What jq or JavaScript accept: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=_refuse)


def rendered(renderable) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(renderable)
    return console.file.getvalue()


# -- the helper -------------------------------------------------------------------------------


def test_strict_parser_refuses_what_python_writes_by_default():
    with pytest.raises(ValueError):
        strict_loads(json.dumps({"miou": float("nan")}))


def test_to_strict_nulls_every_non_finite_number_in_nested_containers():
    document = {
        "a": float("nan"), "b": [1.5, float("inf"), {"c": -math.inf, "d": (2, float("nan"))}],
        "numpy": [np.float32("nan"), np.float64("inf"), np.float32(0.25), np.int64(7), np.array(float("-inf"))],
        "torch": [torch.tensor(float("nan")), torch.tensor(0.5, dtype=torch.float64), torch.tensor(3)],
        "kept": ["text", True, None, 0, -2.0],
    }
    expected = {
        "a": None, "b": [1.5, None, {"c": None, "d": [2, None]}],
        "numpy": [None, None, 0.25, 7, None],
        "torch": [None, 0.5, 3],
        "kept": ["text", True, None, 0, -2.0],
    }
    assert to_strict(document) == expected
    assert strict_loads(dumps(document)) == expected
    assert strict_loads(dumps(document, indent=2)) == expected
    # Types are plain Python after the round trip (bool stays bool, ints stay ints).
    strict = to_strict(document)
    assert type(strict["numpy"][3]) is int and type(strict["kept"][1]) is bool and type(strict["torch"][2]) is int


def test_to_strict_leaves_the_input_alone():
    document = {"x": [float("nan")]}
    to_strict(document)
    assert math.isnan(document["x"][0])


# -- an undefined metric: null in JSON, n/a in the tables ----------------------------------------


def test_paper_miou_without_a_true_positive_is_null():
    from adapmtl_cli.tasks.base import MetricQuirks
    from adapmtl_cli.tasks.segmentation import ConfusionMetric

    # Truth: class 0 everywhere; prediction: class 1 everywhere (logit 3 against 1 and 2).
    # No class has a true positive: the reference's mIoU over such classes is 0/0; pixel acc 0/16.
    logits = torch.tensor([1.0, 3.0, 2.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    paper = ConfusionMetric(3, MetricQuirks(miou_tp_only=True))
    paper.update(logits, labels)
    assert strict_loads(dumps(paper.compute())) == {"miou": None, "pixel_acc": 0.0}
    # Standard mode counts classes 0 and 1 (in the truth or the prediction), both IoU 0/16.
    standard = ConfusionMetric(3, MetricQuirks())
    standard.update(logits, labels)
    assert strict_loads(dumps(standard.compute())) == {"miou": 0.0, "pixel_acc": 0.0}


def test_tables_show_n_a_for_undefined_metrics():
    from adapmtl_cli.report.console import delta_table, format_metric, metrics_table

    assert format_metric("miou", None) == "n/a"
    assert format_metric("miou", float("nan")) == "n/a"
    assert format_metric("abs_err", float("inf")) == "n/a"
    assert format_metric("miou", 0.5) == "50.00%"
    text = rendered(metrics_table({"segment_semantic": {"miou": None, "pixel_acc": 0.25}}))
    assert "miou n/a" in text and "pixel_acc 25.00%" in text
    text = rendered(delta_table({"per_task": {}, "per_task_mean": {}, "delta_t": None, "delta_p": float("nan")}))
    assert text.count("n/a") == 2


def test_delta_scores_skip_null_metrics_with_a_reason():
    from adapmtl_cli.tasks.scores import delta_scores

    directions = {"segment_semantic": {"miou": True, "pixel_acc": True}, "depth_zbuffer": {"abs_err": False}}
    metrics = {"segment_semantic": {"miou": None, "pixel_acc": 0.6}, "depth_zbuffer": {"abs_err": 0.5}}
    baseline = {"segment_semantic": {"miou": 0.4, "pixel_acc": 0.5}, "depth_zbuffer": {"abs_err": None}}
    scores = delta_scores(metrics, baseline, directions)
    # Only pixel_acc is defined on both sides: (0.6 - 0.5) / 0.5 * 100 = +20; depth has no metric left.
    assert scores.per_task == pytest.approx({"segment_semantic": 20.0})
    assert scores.delta_t == pytest.approx(20.0) and scores.delta_p == pytest.approx(20.0)
    assert [(s.task, s.metric, s.reason) for s in scores.skipped] == [
        ("segment_semantic", "miou", "undefined (null or not finite) in the metrics"),
        ("depth_zbuffer", "abs_err", "undefined (null or not finite) in the baseline"),
    ]
    nothing = delta_scores({"depth_zbuffer": {"abs_err": None}}, {"depth_zbuffer": {"abs_err": 1.0}}, directions)
    assert strict_loads(dumps(nothing.to_dict()))["delta_t"] is None


# -- end to end: every command's JSON -----------------------------------------------------------

# 40 classes on tiny splits leave most classes absent from the labels. With eval.miou_tp_only (the
# paper's mIoU), a model that predicts an absent class everywhere has no true positive at all.
RUN = ["--preset", "demo", "model.width=4", "data.resolution=16", "data.num_classes=40", "data.train_size=16",
       "data.val_size=2", "data.test_size=2", "train.batch_size=2", "train.steps=4", "train.val_every=2",
       "weighting.begin=0", "weighting.window=1", "eval.miou_tp_only=true"]


def _classes(config) -> tuple[int, int]:
    """A class that no label of the val and test splits holds, and one that every test image
    holds (worked out from the data itself)."""
    from adapmtl_cli.data import build_datasets

    data = build_datasets(config)
    present, everywhere = set(), set(range(config.data.num_classes))
    for split in (data.val, data.test):
        for index in range(len(split)):
            labels = set(split[index][1]["segment_semantic"].unique().tolist())
            present |= labels
            if split is data.test:
                everywhere &= labels
    absent = [c for c in range(config.data.num_classes) if c not in present]
    assert absent and everywhere, "the test needs a class missing from the labels and one in every test image"
    return absent[-1], min(everywhere)


def _predicting_only(source, out, label):
    """``source`` with its segmentation head answering ``label`` at every pixel: zero classifier
    weights (zero under any threshold) and a bias of 50 for that class."""
    from adapmtl_cli.io.checkpoint import load_model_from_checkpoint, save_checkpoint

    model, config, checkpoint = load_model_from_checkpoint(source)
    classifier = model.heads["segment_semantic"].conv3
    with torch.no_grad():
        classifier.parametrizations.weight.original.zero_()
        classifier.bias.zero_()
        classifier.bias[label] = 50.0
    save_checkpoint(out, model, checkpoint.config_json, checkpoint.step, model.sparsifier.stats().as_report())
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from adapmtl_cli.config import load_config

    root = tmp_path_factory.mktemp("strict")
    capture = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(capture):
        assert main(["train", "--out", str(root / "run"), "--quiet", "--json", *RUN]) == 0
    absent, present = _classes(load_config("demo", RUN[2:]))
    _predicting_only(root / "run" / "model.safetensors", root / "blind.safetensors", absent)
    # A baseline with a defined mIoU: the class in every test image has a true positive.
    _predicting_only(root / "run" / "model.safetensors", root / "sighted.safetensors", present)
    return {"root": root, "train_stdout": capture.getvalue()}


def test_train_json_summary_and_metrics_lines_are_strict(runs):
    run = runs["root"] / "run"
    stdout = strict_loads(runs["train_stdout"])
    assert stdout == strict_loads((run / "summary.json").read_text())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [strict_loads(line)["step"] for line in lines] == [2, 4]


def test_an_undefined_metric_is_null_in_eval_json_and_n_a_in_its_table(runs, capsys):
    blind = runs["root"] / "blind.safetensors"
    assert main(["eval", str(blind), "--json"]) == 0
    result = strict_loads(capsys.readouterr().out)
    assert result["metrics"]["segment_semantic"]["miou"] is None  # no class has a true positive
    assert result["metrics"]["segment_semantic"]["pixel_acc"] == 0.0  # the label never occurs
    assert main(["eval", str(blind)]) == 0
    assert "miou n/a" in capsys.readouterr().err


def test_null_metrics_on_either_side_of_a_baseline_are_skipped(runs, capsys, tmp_path):
    root = runs["root"]
    blind, trained = root / "blind.safetensors", root / "sighted.safetensors"
    assert main(["eval", str(blind), "--json"]) == 0
    blind_json = tmp_path / "blind.json"
    blind_json.write_text(capsys.readouterr().out)
    assert main(["eval", str(trained), "--json"]) == 0
    trained_json = tmp_path / "trained.json"
    trained_json.write_text(capsys.readouterr().out)
    assert strict_loads(trained_json.read_text())["metrics"]["segment_semantic"]["miou"] is not None

    for checkpoint, baseline, reason in ((blind, trained_json, "undefined (null or not finite) in the metrics"),
                                         (trained, blind_json, "undefined (null or not finite) in the baseline")):
        assert main(["eval", str(checkpoint), "--baseline", str(baseline), "--json"]) == 0
        delta = strict_loads(capsys.readouterr().out)["delta"]
        assert {"task": "segment_semantic", "metric": "miou", "reason": reason} in delta["skipped"]
        assert "miou" not in delta["per_metric"].get("segment_semantic", {})

    # A baseline that defines none of the model's metrics: Delta_T is undefined, null, and fails a gate.
    empty = tmp_path / "empty.json"
    empty.write_text('{"metrics": {"segment_semantic": {"miou": null}}}')
    assert main(["eval", str(trained), "--baseline", str(empty), "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["delta"]["delta_t"] is None
    assert main(["eval", str(trained), "--baseline", str(empty), "--fail-under", "-100"]) == 1
    err = capsys.readouterr().err
    assert "Delta_T is undefined" in err and err.count("adapmtl: error") == 1 and "Traceback" not in err

    assert main(["compare", str(blind), "--baseline", str(trained_json), "--json"]) == 0
    comparison = strict_loads(capsys.readouterr().out)
    assert comparison["rows"][1]["metrics"]["segment_semantic"]["miou"] is None
    assert {"task": "segment_semantic", "metric": "miou", "reason": "undefined (null or not finite) in the metrics"} in comparison["rows"][1]["delta"]["skipped"]
    assert main(["compare", str(blind), "--baseline", str(trained_json), "--format", "csv"]) == 0
    import csv

    header, _, blind_row = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert blind_row[header.index("segment_semantic/miou")] == "n/a"


def test_finetune_summary_metrics_inspect_prune_and_export_json_are_strict(runs, capsys):
    """An honest NaN all the way to summary.json and metrics.jsonl: one finetuning step at a small
    learning rate keeps the blind classifier blind (its bias margin is 50)."""
    root = runs["root"]
    out = root / "blind-finetune"
    assert main(["finetune", str(root / "blind.safetensors"), "--out", str(out), "--json",
                 "train.steps=1", "train.val_every=1", "optim.lr=1e-5"]) == 0
    captured = capsys.readouterr()
    summary = strict_loads(captured.out)
    assert summary["metrics"]["segment_semantic"]["miou"] is None
    assert strict_loads((out / "summary.json").read_text()) == summary
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    assert strict_loads(line)["metrics"]["segment_semantic"]["miou"] is None
    assert "miou n/a" in captured.err  # the summary table

    model = out / "model.safetensors"
    assert main(["inspect", str(model), "--json", "--layers"]) == 0
    assert strict_loads(capsys.readouterr().out)["metrics"]["segment_semantic"]["miou"] is None
    assert main(["inspect", str(model)]) == 0
    assert "miou n/a" in capsys.readouterr().err

    assert main(["prune", str(model), "--ratio", "0.5", "--out", str(root / "pruned.safetensors"), "--json"]) == 0
    assert "sparsity" in strict_loads(capsys.readouterr().out)
    assert main(["export", str(model), "--format", "dense", "--out", str(root / "dense.safetensors"), "--json"]) == 0
    strict_loads(capsys.readouterr().out)
    assert main(["presets", "list", "--json"]) == 0
    assert "demo" in strict_loads(capsys.readouterr().out)
