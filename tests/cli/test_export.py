"""`adapmtl export`: dense, sparse and program exports of a checkpoint's effective weights.

Every expected number is computed here independently: from the checkpoint model's own forward and
weights (what the parametrized convs compute), from numpy reads of the written files, and from
hand formulas for the sizes."""

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from adapmtl_cli.cli import main
from adapmtl_cli.config import config_to_json, load_config
from adapmtl_cli.errors import CheckpointError
from adapmtl_cli.io.checkpoint import load_model_from_checkpoint, save_checkpoint
from adapmtl_cli.io.export import read_sparse_export
from adapmtl_cli.builders import build_model

OUT_CHANNELS = {"segment_semantic": 6, "normal": 3, "depth_zbuffer": 1}
WIDTH = 8


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def make_checkpoint(path: Path, overrides=(), thresholds=(0.05, 0.08, 0.03, 0.06), seed=0) -> Path:
    config = load_config("demo", [f"model.width={WIDTH}", *overrides])
    torch.manual_seed(seed)
    model = build_model(config, OUT_CHANNELS)
    with torch.no_grad():
        for param, t in zip(model.sparsifier.thresholds, thresholds):
            param.fill_(logit(t))
        # BN statistics and biases that are not the defaults, so that they matter in the outputs
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    save_checkpoint(path, model, config_to_json(config), 42, model.sparsifier.stats().as_report())
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors")


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The checkpoint's model (parametrized convs) and its effective weights, read off the convs."""
    model, config, _ = load_model_from_checkpoint(checkpoint)
    convs = {f"{name}.weight": module.weight.detach().clone() for name, module in model.named_modules()
             if isinstance(module, nn.Conv2d)}  # module.weight is W_eff through the parametrization
    return model, config, convs


def export(checkpoint, fmt, out, *extra):
    return main(["export", str(checkpoint), "--format", fmt, "--out", str(out), *extra])


def inspect_json(path, capsys) -> dict:
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def plain_demo_model(width: int) -> nn.Module:
    """The demo network rebuilt from torch modules only, under the names of adapmtl_cli/models/demo.py."""

    def cbr(cin, cout, stride=1, dilation=1):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU()]

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*cbr(3, width, 2), *cbr(width, width), *cbr(width, 2 * width, 2),
                                          *cbr(2 * width, 2 * width, 1, 2), *cbr(2 * width, 2 * width, 1, 4))

        def forward(self, x):
            return self.features(x)

    class Head(nn.Module):
        def __init__(self, cout):
            super().__init__()
            self.conv1 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
            self.conv2 = nn.Conv2d(2 * width, 2 * width, 3, padding=2, dilation=2)
            self.conv3 = nn.Conv2d(2 * width, cout, 1)

        def forward(self, x):
            return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            self.heads = nn.ModuleDict({task: Head(c) for task, c in OUT_CHANNELS.items()})

        def forward(self, x):
            features = self.backbone(x)
            return {task: head(features) for task, head in self.heads.items()}

    return Plain()


def expected_counts(convs, components) -> dict:
    """component -> (params, zeros) of the effective weights."""
    counts = {}
    for key, weight in convs.items():
        entry = counts.setdefault(components[key], [0, 0])
        entry[0] += weight.numel()
        entry[1] += int((weight == 0).sum())
    return counts


def component_of(key: str) -> str:
    return "backbone" if key.startswith("backbone.") else "head." + key.split(".")[1]


def assert_same_sparsity(report, checkpoint_report, convs):
    counts = expected_counts(convs, {k: component_of(k) for k in convs})
    for name, (params, zeros) in counts.items():
        assert report["params"][name] == params
        assert report["nonzeros"][name] == params - zeros == checkpoint_report["nonzeros"][name]
    assert report["sparsity"] == checkpoint_report["sparsity"]  # the same counts give the same floats


# -- dense ---------------------------------------------------------------------------------------


def test_dense_export_loads_into_a_plain_torch_model(checkpoint, reference, tmp_path, capsys):
    model, config, convs = reference
    out = tmp_path / "dense.safetensors"
    assert export(checkpoint, "dense", out) == 0
    err = capsys.readouterr().err
    # real sizes, in bytes, and the honest note
    assert f"{checkpoint.stat().st_size:,} bytes" in err and f"{out.stat().st_size:,} bytes" in err
    assert "not dense-kernel time" in err

    state = load_file(str(out))
    assert not any(k.startswith("threshold.") or "parametrizations" in k or k.startswith("sparsifier.") for k in state)
    plain = plain_demo_model(WIDTH)
    plain.load_state_dict(state, strict=True)  # every key, ordinary Conv2d / BatchNorm2d
    plain.eval()
    torch.manual_seed(1)
    image = torch.randn(3, 3, config.data.resolution, config.data.resolution)
    with torch.no_grad():
        want, got = model(image), plain(image)
    assert list(got) == list(OUT_CHANNELS)
    for task in OUT_CHANNELS:
        torch.testing.assert_close(got[task], want[task], atol=1e-6, rtol=0)
    for key, weight in convs.items():
        assert torch.equal(state[key], weight)

    with safe_open(str(out), framework="np") as handle:
        metadata = handle.metadata()
        arrays = {k: handle.get_tensor(k) for k in handle.keys()}
    assert metadata["format"] == "adapmtl.dense"
    assert json.loads(metadata["tasks"]) == list(OUT_CHANNELS)
    assert json.loads(metadata["config"])["model"]["width"] == WIDTH
    layers = json.loads(metadata["layers"])
    assert set(layers) == set(convs) and all(v["threshold"] is None for v in layers.values())

    # inspect reports the checkpoint's sparsity, and the zeros numpy counts in the file
    dense_report = inspect_json(out, capsys)
    checkpoint_report = inspect_json(checkpoint, capsys)
    assert_same_sparsity(dense_report, checkpoint_report, convs)
    numpy_zeros = sum(int(np.count_nonzero(arrays[k] == 0)) for k in convs)
    numpy_params = sum(arrays[k].size for k in convs)
    assert dense_report["sparsity"]["overall"] == pytest.approx(numpy_zeros / numpy_params)
    assert 0.3 < numpy_zeros / numpy_params < 0.9  # the fixture is genuinely sparse, not trivially so


# -- sparse --------------------------------------------------------------------------------------


def test_sparse_export_round_trip_is_bitwise(checkpoint, reference, tmp_path, capsys):
    model, _, convs = reference
    out = tmp_path / "sparse.safetensors"
    assert export(checkpoint, "sparse", out) == 0
    capsys.readouterr()
    from adapmtl_cli.engine.sparsifier import effective_state_dict

    want = effective_state_dict(model)
    got = read_sparse_export(out)
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key

    # the documented layout, decoded with numpy alone
    with safe_open(str(out), framework="np") as handle:
        metadata = handle.metadata()
        assert metadata["format"] == "adapmtl.sparse" and metadata["values_dtype"] == "float32"
        shapes = json.loads(metadata["sparse"])
        assert set(shapes) == set(convs)
        assert not (set(handle.keys()) & set(convs))  # no dense copy of a sparsified weight
        for key, weight in convs.items():
            mask, values = handle.get_tensor(f"bitmask.{key}"), handle.get_tensor(f"values.{key}")
            numel = weight.numel()
            assert mask.dtype == np.uint8 and mask.size == (numel + 7) // 8
            keep = np.unpackbits(mask, bitorder="big")[:numel].astype(bool)
            decoded = np.zeros(numel, dtype=np.float32)
            decoded[keep] = values
            assert np.array_equal(decoded.reshape(shapes[key]["shape"]), weight.numpy())
            assert values.size == int(np.count_nonzero(weight.numpy()))
        for key in want:
            if key not in convs:  # BN, biases, buffers as they are
                assert np.array_equal(handle.get_tensor(key), want[key].numpy())

    sparse_report = inspect_json(out, capsys)
    assert sparse_report["kind"] == "adapmtl.sparse"
    assert_same_sparsity(sparse_report, inspect_json(checkpoint, capsys), convs)


@pytest.mark.parametrize("flag, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_sparse_half_values_round_to_that_dtype(checkpoint, reference, tmp_path, capsys, flag, dtype):
    model, _, convs = reference
    out = tmp_path / f"sparse-{flag}.safetensors"
    full = tmp_path / "sparse-fp32.safetensors"
    assert export(checkpoint, "sparse", out, "--dtype", flag) == 0
    assert export(checkpoint, "sparse", full) == 0
    capsys.readouterr()
    from adapmtl_cli.engine.sparsifier import effective_state_dict

    want = effective_state_dict(model)
    got = read_sparse_export(out)
    smallest = {"fp16": 2.0 ** -24, "bf16": 2.0 ** -133}[flag]  # the dtype's smallest subnormal
    for key in want:
        assert got[key].dtype == want[key].dtype
        if key not in convs:
            assert torch.equal(got[key], want[key]), key
            continue
        rounded = want[key].to(dtype).to(want[key].dtype)
        # The zeros are exactly the model's: a survivor too small for the dtype keeps the smallest
        # subnormal of its sign rather than becoming a zero of the file.
        assert torch.equal(got[key] == 0, want[key] == 0), key
        underflowed = (rounded == 0) & (want[key] != 0)
        assert torch.equal(got[key][~underflowed], rounded[~underflowed]), key
        assert torch.equal(got[key][underflowed], torch.sign(want[key][underflowed]) * smallest), key
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata()["values_dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[flag]
        assert handle.get_tensor(f"values.{next(iter(convs))}").dtype == dtype
    nonzeros = sum(int((w != 0).sum()) for w in convs.values())
    # two bytes saved per stored non-zero
    saved = full.stat().st_size - out.stat().st_size
    assert 2 * nonzeros - 64 <= saved <= 4 * nonzeros


def test_sparse_export_of_a_dense_checkpoint(tmp_path, capsys):
    """A model without thresholds (sparsity off, e.g. pruned): exact zeros are what is stored."""
    config = load_config("demo", [f"model.width={WIDTH}", "sparsity.enabled=false"])
    torch.manual_seed(3)
    model = build_model(config, OUT_CHANNELS)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.mul_((torch.rand_like(module.weight) > 0.7).float())
    path = tmp_path / "dense-model.safetensors"
    save_checkpoint(path, model, config_to_json(config), 1, model.sparsifier.stats().as_report())
    out = tmp_path / "export.safetensors"
    assert export(path, "sparse", out) == 0
    capsys.readouterr()
    got = read_sparse_export(out)
    for key, value in model.state_dict().items():
        if not key.startswith("sparsifier."):
            assert torch.equal(got[key], value), key
    convs = {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    zeros = sum(int((w == 0).sum()) for w in convs.values())
    assert inspect_json(out, capsys)["sparsity"]["overall"] == pytest.approx(zeros / sum(w.numel() for w in convs.values()))


def test_sparse_size_is_at_the_information_floor(tmp_path, capsys):
    """At 0.9 sparsity: data <= 1.05 x (nnz x 4 + weights / 8 + dense non-weight tensors), header small."""
    config = load_config("demo", ["model.width=32"])
    torch.manual_seed(0)
    model = build_model(config, OUT_CHANNELS)
    sparsifier = model.sparsifier
    with torch.no_grad():
        for index, name in enumerate(sparsifier.threshold_names):
            weights = torch.cat([sparsifier.raw_weight(i).abs().flatten() for i, layer in enumerate(sparsifier.layers)
                                 if layer.threshold == name])
            t = float(torch.quantile(weights, 0.9))
            sparsifier.thresholds[index].fill_(logit(t))
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, config_to_json(config), 1, sparsifier.stats().as_report())
    out, dense = tmp_path / "sparse.safetensors", tmp_path / "dense.safetensors"
    assert export(path, "sparse", out) == 0 and export(path, "dense", dense) == 0
    capsys.readouterr()

    conv_weights = {f"{n}.weight": m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    weights = sum(w.numel() for w in conv_weights.values())
    nonzeros = sum(int((w != 0).sum()) for w in conv_weights.values())
    assert nonzeros / weights == pytest.approx(0.1, abs=0.01)
    others = sum(v.numel() * v.element_size() for k, v in model.state_dict().items()
                 if k.startswith(("backbone.", "heads.")) and "parametrizations" not in k)
    floor = nonzeros * 4 + weights / 8 + others
    size = out.stat().st_size
    with open(out, "rb") as handle:
        (header,) = struct.unpack("<Q", handle.read(8))
    assert header <= 16 * 1024  # the JSON header (tensor table, config, layer map) stays small
    assert size - 8 - header <= 1.05 * floor
    assert size <= 1.05 * floor + 16 * 1024 + 8
    assert dense.stat().st_size > 3 * size  # 10% of float32 weights plus a 1-bit mask vs all of them


# -- program -------------------------------------------------------------------------------------


def test_program_export_matches_the_checkpoint_model(checkpoint, reference, tmp_path, capsys):
    model, config, _ = reference
    out = tmp_path / "model.pt2"
    assert export(checkpoint, "program", out) == 0
    assert "not dense-kernel time" in capsys.readouterr().err
    extra = {"adapmtl.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    info = json.loads(extra["adapmtl.json"])
    resolution = config.data.resolution
    assert info["format"] == "adapmtl.program" and info["input"]["shape"][1:] == [3, resolution, resolution]
    runner = program.module()
    batches = [3, 1] if info["input"]["dynamic_batch"] else [info["input"]["shape"][0]]
    for batch in batches:
        torch.manual_seed(batch)
        image = torch.randn(batch, 3, resolution, resolution)
        with torch.no_grad():
            want, got = model(image), runner(image)
        assert list(got) == list(OUT_CHANNELS)
        for task in OUT_CHANNELS:
            torch.testing.assert_close(got[task], want[task], atol=1e-5, rtol=0)
    # no parametrization survives in the program: its parameters are plain conv weights
    assert not any("parametrizations" in k or k.startswith("sparsifier.") for k in program.state_dict)
    # inspect says what the file is instead of misreading it
    err = assert_one_line_error(capsys, main(["inspect", str(out)]), 3)
    assert "torch.export program" in err


# -- bad input -----------------------------------------------------------------------------------


def assert_one_line_error(capsys, code, expected_code):
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert err.count("\n") == 1 and err.startswith("adapmtl: error:") and "Traceback" not in err
    return err


def no_leftovers(folder: Path, allowed: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == allowed


def test_bad_checkpoints_exit_3_and_write_nothing(checkpoint, tmp_path, capsys):
    data = checkpoint.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.safetensors"
    damaged = bytearray(data)
    damaged[8] ^= 0x01  # the header's opening brace: no longer JSON
    flipped.write_bytes(bytes(damaged))
    for bad in (truncated, flipped, tmp_path / "missing.safetensors"):
        for fmt in ("dense", "sparse", "program"):
            out = tmp_path / f"out-{fmt}"
            err = assert_one_line_error(capsys, export(bad, fmt, out), 3)
            assert str(bad) in err
    no_leftovers(tmp_path, {"truncated.safetensors", "flipped.safetensors"})


def test_damaged_exports_are_caught(checkpoint, tmp_path, capsys):
    out = tmp_path / "sparse.safetensors"
    assert export(checkpoint, "sparse", out) == 0
    data = out.read_bytes()
    (header,) = struct.unpack("<Q", data[:8])
    flipped = tmp_path / "flipped.safetensors"
    damaged = bytearray(data)
    damaged[8 + header + (len(data) - 8 - header) // 2] ^= 0x10  # one bit in the middle of the tensors
    flipped.write_bytes(bytes(damaged))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    capsys.readouterr()
    for bad in (flipped, truncated):
        err = assert_one_line_error(capsys, main(["inspect", str(bad)]), 3)
        assert str(bad) in err
        with pytest.raises(CheckpointError, match=str(bad)):
            read_sparse_export(bad)
    # a dense export is not a sparse one
    dense = tmp_path / "dense.safetensors"
    assert export(checkpoint, "dense", dense) == 0
    with pytest.raises(CheckpointError, match="not a sparse export"):
        read_sparse_export(dense)


def test_unwritable_out_exits_3_and_leaves_nothing(checkpoint, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out in (tmp_path / "no" / "such" / "dir" / "x.safetensors", a_file / "x.safetensors"):
        err = assert_one_line_error(capsys, export(checkpoint, "sparse", out), 3)
        assert str(out) in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert_one_line_error(capsys, export(checkpoint, "dense", locked / "x.safetensors"), 3)
            assert list(locked.iterdir()) == []
        finally:
            locked.chmod(0o700)
    assert {p.name for p in tmp_path.iterdir()} <= {"a-file", "locked"}


def test_existing_out_needs_force(checkpoint, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    err = assert_one_line_error(capsys, export(checkpoint, "dense", out), 2)
    assert "--force" in err and out.read_bytes() == b"precious"
    assert export(checkpoint, "dense", out, "--force") == 0
    assert load_file(str(out))  # replaced by a real export
    no_leftovers(tmp_path, {"out.safetensors"})


@pytest.mark.parametrize("args, needle", [
    (["--format", "onnx"], "--format"),
    (["--format", "sparse", "--dtype", "int8"], "--dtype"),
    (["--format", "dense", "--dtype", "fp16"], "--dtype"),
])
def test_usage_errors_exit_2(checkpoint, tmp_path, capsys, args, needle):
    out = tmp_path / "out.safetensors"
    err = assert_one_line_error(capsys, main(["export", str(checkpoint), *args, "--out", str(out)]), 2)
    assert needle in err
    assert not out.exists()


def test_eval_reads_sparse_and_dense_exports_like_their_checkpoint(tmp_path, capsys):
    """The metrics of an export equal those of the checkpoint it came from (same weights)."""
    from adapmtl_cli.cli import main as cli

    checkpoint = tmp_path / "model.safetensors"
    make_checkpoint(checkpoint)
    assert cli(["eval", str(checkpoint), "--json"]) == 0
    reference = json.loads(capsys.readouterr().out)
    for output_format in ("sparse", "dense"):
        exported = tmp_path / f"model-{output_format}.safetensors"
        assert cli(["export", str(checkpoint), "--format", output_format, "--out", str(exported)]) == 0
        capsys.readouterr()
        assert cli(["eval", str(exported), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        for task, values in reference["metrics"].items():
            assert result["metrics"][task] == pytest.approx(values, rel=1e-5), (output_format, task)
        assert result["sparsity"]["overall"] == pytest.approx(reference["sparsity"]["overall"])
