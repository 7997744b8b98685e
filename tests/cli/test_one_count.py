"""One count of zeros, everywhere, exactly: summary.json, inspect (checkpoint, dense export,
sparse exports, reference .model), eval, TensorBoard and the dense export's actual zeros give the
same integer number of zero conv weights for the same model (issue 15)."""

import json
import pickle

import numpy as np
from conftest import rule_threshold
import pytest
import torch
from safetensors import safe_open

from adapmtl_cli.cli import main
from adapmtl_cli.config import config_to_json, load_config
from adapmtl_cli.io.checkpoint import save_checkpoint
from adapmtl_cli.builders import build_model

OUT_CHANNELS = {"segment_semantic": 6, "normal": 3, "depth_zbuffer": 1}


def run_json(capsys, *args) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def zeros_of(document: dict) -> dict[str, int]:
    return document["sparsity"]["zeros"]


def actual_zeros(path) -> dict[str, int]:
    """Exact zeros of a dense export's conv weights, grouped by component, with numpy."""
    counts: dict[str, int] = {}
    with safe_open(str(path), framework="np") as handle:
        for key, info in json.loads(handle.metadata()["layers"]).items():
            counts[info["component"]] = counts.get(info["component"], 0) + int(np.count_nonzero(handle.get_tensor(key) == 0))
    return counts


def tensorboard_zeros(run_dir) -> dict[str, int]:
    """The last value of every Zeros/<component> tag of the run's event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    counts = {}
    for tag in events.Tags()["tensors"]:
        if tag.startswith("Zeros/") and tag != "Zeros/overall":
            value = float(make_ndarray(events.Tensors(tag)[-1].tensor_proto))
            assert value == int(value)
            counts[tag[len("Zeros/"):]] = int(value)
    return counts


def write_reference_model(checkpoint, path) -> None:
    """The checkpoint as a reference AdapMTL ``.model`` (state_dict with one sparseThreshold per
    component, as REFERENCE.md 13 describes), for inspect's reference reader."""
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint))
    state = {k: v for k, v in tensors.items() if not k.startswith("threshold.")}
    for key, value in tensors.items():
        if key.startswith("threshold."):
            component = key[len("threshold."):]
            prefix = "backbone" if component == "backbone" else "heads." + component[len("head."):]
            state[f"{prefix}.sparseThreshold"] = value
    torch.save({"iter": 30, "state_dict": state, "layout": None, "optimizer": {}, "scheduler": {}}, path,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)


def every_reader(tmp_path, capsys, checkpoint, run_dir=None) -> dict[str, dict[str, int]]:
    readers = {"inspect checkpoint": zeros_of(run_json(capsys, "inspect", str(checkpoint), "--json")),
               "eval checkpoint": zeros_of(run_json(capsys, "eval", str(checkpoint), "--json"))}
    dense = tmp_path / "dense.safetensors"
    assert main(["export", str(checkpoint), "--format", "dense", "--out", str(dense), "--force"]) == 0
    readers["dense export, actual zeros"] = actual_zeros(dense)
    readers["inspect dense export"] = zeros_of(run_json(capsys, "inspect", str(dense), "--json"))
    readers["eval dense export"] = zeros_of(run_json(capsys, "eval", str(dense), "--json"))
    for dtype in ("fp32", "fp16", "bf16"):
        sparse = tmp_path / f"sparse-{dtype}.safetensors"
        assert main(["export", str(checkpoint), "--format", "sparse", "--dtype", dtype, "--out", str(sparse), "--force"]) == 0
        readers[f"inspect sparse {dtype} export"] = zeros_of(run_json(capsys, "inspect", str(sparse), "--json"))
    reference = tmp_path / "best_segment_semantic_normal_depth_zbuffer.model"
    write_reference_model(checkpoint, reference)
    readers["inspect reference .model"] = zeros_of(run_json(capsys, "inspect", str(reference), "--json"))
    if run_dir is not None:
        readers["summary.json"] = zeros_of(json.loads((run_dir / "summary.json").read_text()))
        readers["TensorBoard"] = tensorboard_zeros(run_dir)
    capsys.readouterr()
    return readers


def test_a_trained_demo_gives_one_count_in_every_reader(trained_run, tmp_path, capsys):
    run_dir = trained_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sparsity"]["overall"] == pytest.approx(0.3, abs=0.005)  # conftest.TINY_RUN's target
    readers = every_reader(tmp_path, capsys, run_dir / "model.safetensors", run_dir)
    expected = summary["sparsity"]["zeros"]
    assert sum(expected.values()) > 0
    for reader, counts in readers.items():
        assert counts == expected, reader


def test_thresholds_exactly_on_weight_values(tmp_path, capsys):
    """Weights planted at exactly +-t, one float32 step above and below t, and between the rule's
    t and a float32 sigmoid's t where the two differ: every reader agrees with |W| <= t."""
    config = load_config("demo", ["model.width=4"])
    torch.manual_seed(0)
    model = build_model(config, OUT_CHANNELS)
    sparsifier = model.sparsifier
    # An s where torch's float32 sigmoid and the rule's t differ, so a reader using the former
    # would disagree on a weight planted between them.
    candidates = np.linspace(-7.0, -4.0, 4001, dtype=np.float32)
    float32_t = torch.sigmoid(torch.from_numpy(candidates)).numpy()
    differs = [i for i, s in enumerate(candidates) if float32_t[i] != rule_threshold(s)]
    expected, total = 0, 0
    with torch.no_grad():
        for index, name in enumerate(sparsifier.threshold_names):
            s = float(candidates[differs[index % len(differs)]]) if differs else -5.0 - index
            sparsifier.thresholds[index].fill_(s)
            t = rule_threshold(float(np.float32(s)))
            other = np.float32(torch.sigmoid(torch.tensor(s, dtype=torch.float32)).item())
            planted = [t, -t, np.nextafter(t, np.float32(1)), np.nextafter(t, np.float32(0)), max(t, other), -min(t, other)]
            for layer_index, layer in enumerate(sparsifier.layers):
                if layer.threshold != name:
                    continue
                raw = sparsifier.raw_weight(layer_index)
                flat = raw.view(-1)
                flat[: len(planted)] = torch.tensor(np.array(planted, dtype=np.float32))
                expected += int(np.count_nonzero(np.abs(raw.numpy()) <= t))
                total += raw.numel()
    stats = sparsifier.stats()
    assert stats.zeros == expected
    path = tmp_path / "planted.safetensors"
    save_checkpoint(path, model, config_to_json(config), 1, stats.as_report())
    for reader, counts in every_reader(tmp_path, capsys, path).items():
        assert sum(counts.values()) == expected, reader
        assert counts == stats.component_zeros, reader
