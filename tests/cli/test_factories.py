"""model.factory / model.components / data.factory: a user's network and datasets in a preset.

The worked example (examples/custom-model.toml) trains for a few steps, then every command that
rebuilds its model runs on the checkpoint; every fault of a factory is one line with its exit code.
"""

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.nn.utils import parametrize

import factory_helpers
from adapmtl_cli.builders import build_model, build_model_and_tasks, build_tasks
from adapmtl_cli.cli import main
from conftest import recount_zeros
from adapmtl_cli.config import config_to_toml, load_config, tomllib, validate_config
from adapmtl_cli.data import build_datasets
from adapmtl_cli.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "custom-model.toml"
HELPERS = Path(factory_helpers.__file__).resolve()
TINY = ["data.resolution=16", "data.train_size=4", "data.val_size=2", "data.test_size=2", "train.batch_size=2",
        "train.steps=2", "train.val_every=2", "train.log_every=1", "model.width=4", "sparsity.init=-4"]
EXAMPLE_FAST = ["train.steps=3", "train.val_every=3", "train.log_every=1", "data.resolution=32", "data.train_size=6",
                "data.val_size=2", "data.test_size=2", "train.batch_size=2", "model.factory_args.hidden=8"]
OUT_CHANNELS = {"segment_semantic": 6, "normal": 3, "depth_zbuffer": 1}  # data.num_classes = 6 in the demo


def helper(function: str) -> str:
    return f"model.factory={HELPERS}:{function}"


def data_helper(function: str) -> str:
    return f"data.factory={HELPERS}:{function}"


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny runs (conftest.py)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_fails(capsys, tmp_path, *overrides) -> tuple[int, str]:
    code, _, err = run(capsys, "train", "--preset", "demo", "--out", str(tmp_path / "run"), "--force", "--quiet", *TINY, *overrides)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return code, lines[0]


# -- the worked example ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("custom")
    code = main(["train", "--preset", str(EXAMPLE), "--out", str(out), "--force", "--quiet", *EXAMPLE_FAST])
    assert code == 0
    return out


def test_the_example_trains_and_records_its_factory(example_run):
    config = load_config(str(example_run / "config.toml"))
    assert config.model.factory == f"{REPO / 'examples' / 'custom_model.py'}:build"  # absolute: found from anywhere
    with safe_open(str(example_run / "model.safetensors"), framework="np") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    # The tasks come from the config: this model has no `heads`.
    assert json.loads(metadata["tasks"]) == ["segment_semantic", "normal", "depth_zbuffer"]
    assert json.loads(metadata["config"])["model"]["factory"] == config.model.factory
    assert {k for k in keys if k.startswith("threshold.")} == {
        "threshold.backbone", "threshold.head.segment_semantic", "threshold.head.normal", "threshold.head.depth_zbuffer"}
    layers = json.loads(metadata["layers"])
    # Every Conv2d of the example is in a component: 17 in the ResNet-18 trunk up to layer3
    # (conv1, 2 x 2 x 2 in layer1..3 ... counted: 1 + 4 + 5 + 5, the 1x1 downsamples included),
    # 3 per decoder.
    assert sum(info["component"] == "backbone" for info in layers.values()) == 1 + 4 + 5 + 5
    for task in ("segment_semantic", "normal", "depth_zbuffer"):
        assert sorted(k for k, i in layers.items() if i["component"] == f"head.{task}") == sorted(
            [f"decoders.{task}.reduce.0.weight", f"decoders.{task}.refine.0.weight", f"decoders.{task}.classify.weight"])


def test_every_command_works_on_the_example_checkpoint(example_run, tmp_path, capsys, monkeypatch):
    checkpoint = example_run / "model.safetensors"
    monkeypatch.chdir(tmp_path)  # another folder: the recorded factory path still resolves

    code, out, _ = run(capsys, "inspect", str(checkpoint), "--json")
    assert code == 0
    report = json.loads(out)
    zeros, total = recount_zeros(checkpoint)
    assert sum(report["sparsity"]["zeros"].values()) == zeros
    assert sum(report["sparsity"]["params"].values()) == total
    assert report["tasks"] == ["segment_semantic", "normal", "depth_zbuffer"]

    code, out, _ = run(capsys, "eval", str(checkpoint), "--json")
    assert code == 0
    assert set(json.loads(out)["metrics"]) == {"segment_semantic", "normal", "depth_zbuffer"}

    for fmt, name in (("dense", "d.safetensors"), ("sparse", "s.safetensors"), ("program", "p.pt2")):
        code, _, err = run(capsys, "export", str(checkpoint), "--format", fmt, "--out", str(tmp_path / name))
        assert code == 0, err

    # The dense export loads into the example's own class with no adapmtl code, and the program
    # computes what that plain model computes.
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import custom_model
    finally:
        sys.path.remove(str(REPO / "examples"))
    plain = custom_model.build(OUT_CHANNELS, hidden=8)
    plain.load_state_dict(load_file(str(tmp_path / "d.safetensors")), strict=True)
    plain.eval()
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    program = torch.export.load(str(tmp_path / "p.pt2")).module()
    with torch.no_grad():
        expected, got = plain(image), program(image)
    for task in OUT_CHANNELS:
        torch.testing.assert_close(got[task], expected[task], rtol=1e-4, atol=1e-5)
    with safe_open(str(checkpoint), framework="np") as handle:
        layer_keys = set(json.loads(handle.metadata()["layers"]))
    dense = load_file(str(tmp_path / "d.safetensors"))
    dense_zeros = sum(int((dense[key] == 0).sum()) for key in layer_keys)
    assert dense_zeros >= zeros  # the folded weights are zero at least where the thresholds zero them

    code, _, err = run(capsys, "prune", str(checkpoint), "--ratio", "0.5", "--out", str(tmp_path / "pruned.safetensors"))
    assert code == 0, err
    code, out, _ = run(capsys, "inspect", str(tmp_path / "pruned.safetensors"), "--json")
    assert code == 0
    pruned = json.loads(out)
    alive_before = total - dense_zeros
    alive_after = sum(pruned["nonzeros"].values())
    assert abs(alive_after - alive_before / 2) <= 1  # half of the non-zero weights removed
    assert recount_zeros(tmp_path / "pruned.safetensors") == (total - alive_after, total)


# -- model.factory: arguments, components -------------------------------------------------------


def test_the_factory_gets_the_task_channels_and_typed_arguments():
    factory_helpers.CALLS.clear()
    config = load_config("demo", [helper("tiny"), "data.num_classes=5", "model.components.backbone=encoder",
                                  "model.factory_args.width=6", "model.factory_args.scale=0.5",
                                  "model.factory_args.name='x'", "model.factory_args.flags=[1, 2]"])
    model, tasks = build_model_and_tasks(config)
    name, channels, kwargs = factory_helpers.CALLS[-1]
    assert channels == {"segment_semantic": 5, "normal": 3, "depth_zbuffer": 1}
    assert kwargs == {"width": 6, "scale": 0.5, "name": "x", "flags": [1, 2]}
    assert type(kwargs["width"]) is int and type(kwargs["scale"]) is float
    assert model.encoder[0].out_channels == 6
    # The config's round trip through config.toml keeps the arguments and their types.
    again = validate_config(tomllib.loads(config_to_toml(config)))
    assert again == config and type(again.model.factory_args["width"]) is int


def test_default_components_are_backbone_and_heads():
    config = load_config("demo", [helper("backbone_heads")])
    model = build_model(config, OUT_CHANNELS)
    assert model.sparsifier.component_names == ["backbone", "head.segment_semantic", "head.normal", "head.depth_zbuffer"]
    assert [layer.key for layer in model.sparsifier.layers] == [
        "backbone.0.weight", "heads.segment_semantic.weight", "heads.normal.weight", "heads.depth_zbuffer.weight"]
    builtin = build_model(load_config("demo", ["model.width=4"]), OUT_CHANNELS)
    assert builtin.sparsifier.component_names == ["backbone", "head.segment_semantic", "head.normal", "head.depth_zbuffer"]


def test_a_component_not_named_stays_dense():
    config = load_config("demo", [helper("tiny"), "model.components.backbone=encoder",
                                  "model.components.head.normal=decoders.normal"])
    model = build_model(config, OUT_CHANNELS)
    sparsifier = model.sparsifier
    assert sparsifier.threshold_names == ["backbone", "head.normal"]
    assert [layer.key for layer in sparsifier.layers] == ["encoder.0.weight", "encoder.2.weight",
                                                          "decoders.normal.0.weight", "decoders.normal.2.weight"]
    for task in ("segment_semantic", "depth_zbuffer"):
        for conv in model.decoders[task].modules():
            if isinstance(conv, torch.nn.Conv2d):
                assert not parametrize.is_parametrized(conv, "weight")
    # A dense decoder computes with its raw weights whatever the thresholds.
    with torch.no_grad():
        for threshold in sparsifier.thresholds:
            threshold.fill_(10.0)  # t = 0.99995: every sparsified weight of this model is zeroed
    outputs = model(torch.randn(1, 3, 16, 16))
    assert torch.count_nonzero(outputs["normal"] - model.decoders["normal"][2].bias.view(1, -1, 1, 1)) == 0
    assert torch.count_nonzero(outputs["segment_semantic"]) > 0


def test_component_order_is_the_models_not_the_tables():
    paths = ["model.components.z_head=decoders.normal", "model.components.a_trunk=encoder"]
    first = build_model(load_config("demo", [helper("tiny"), *paths]), OUT_CHANNELS)
    second = build_model(load_config("demo", [helper("tiny"), *reversed(paths)]), OUT_CHANNELS)
    assert first.sparsifier.component_names == second.sparsifier.component_names == ["a_trunk", "z_head"]


def test_the_forward_check_leaves_train_mode():
    model = build_model(load_config("demo", [helper("tiny"), "model.components.backbone=encoder"]), OUT_CHANNELS)
    assert model.training


# -- where the factory is found ---------------------------------------------------------------------


FACTORY_SOURCE = "from torch import nn\nimport factory_helpers\n\ndef build(out_channels):\n    return factory_helpers.TinyNet(out_channels)\n"


def test_a_file_is_found_from_the_presets_folder(tmp_path, monkeypatch):
    (tmp_path / "presets" / "nets").mkdir(parents=True)
    (tmp_path / "presets" / "nets" / "mine.py").write_text(FACTORY_SOURCE)
    preset = tmp_path / "presets" / "mine.toml"
    preset.write_text('[model]\nfactory = "nets/mine.py:build"\n[model.components]\nbackbone = "encoder"\n')
    monkeypatch.chdir(REPO)
    config = load_config(str(preset))
    assert config.model.factory == f"{tmp_path / 'presets' / 'nets' / 'mine.py'}:build"
    build_model(config, OUT_CHANNELS)
    # An override is relative to the current directory.
    monkeypatch.chdir(tmp_path)
    config = load_config(str(preset), ["model.factory=presets/nets/mine.py:build"])
    assert config.model.factory == f"{tmp_path / 'presets' / 'nets' / 'mine.py'}:build"


def test_a_module_is_imported_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "my_factory_module_7f3.py").write_text(FACTORY_SOURCE)
    monkeypatch.chdir(tmp_path)
    config = load_config("demo", ["model.factory=my_factory_module_7f3:build", "model.components.backbone=encoder"])
    assert config.model.factory == "my_factory_module_7f3:build"  # a module spec is not a path: kept as written
    model = build_model(config, OUT_CHANNELS)
    assert type(model).__name__ == "TinyNet"
    sys.modules.pop("my_factory_module_7f3", None)


def test_models_never_import_the_engine():
    for path in sorted((REPO / "adapmtl_cli" / "models").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                # A relative import from models/ reaches the engine as `..engine` (level 2).
                base = node.module or ""
                names = [f"adapmtl_cli.{base}" if node.level == 2 else base]
                names += [f"{names[0]}.{alias.name}" for alias in node.names]
            else:
                continue
            assert not any(n == "adapmtl_cli.engine" or n.startswith("adapmtl_cli.engine.") for n in names), (path.name, names)
    # Nor indirectly: importing every module of models/ loads no engine module.
    code = ("import sys, importlib, pkgutil, adapmtl_cli.models as m\n"
            "[importlib.import_module('adapmtl_cli.models.' + i.name) for i in pkgutil.iter_modules(m.__path__)]\n"
            "bad = [n for n in sys.modules if n.startswith('adapmtl_cli.engine')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


# -- model.factory faults: exit 2, one line naming the key -------------------------------------------


@pytest.mark.parametrize("overrides, expected", [
    (["model.factory=no_such_module_q9:build"], "cannot import module 'no_such_module_q9'"),
    ([helper("nope")], "has no 'nope'"),
    ([helper("not_callable")], "'not_callable' is a int, not a function"),
    ([helper("raises")], "raised ValueError: width must be even;"),
    ([helper("returns_dict")], "returned a dict, not a torch.nn.Module"),
    ([helper("tiny"), "model.components.backbone=encodr"], "model.components.backbone = 'encodr': the model of model.factory"),
    ([helper("tiny"), "model.components.backbone=encodr"], "no such submodule (closest: 'encoder')"),
    ([helper("tensor_output"), "model.components.backbone=encoder"], "the model's forward returned a Tensor, not a dict"),
    ([helper("missing_task"), "model.components.backbone=encoder"], "no output for task 'depth_zbuffer' (it returned: segment_semantic, normal)"),
    ([helper("wrong_channels"), "model.components.backbone=encoder"], "expected a float tensor [1, 6, h, w]"),
    ([helper("forward_raises"), "model.components.backbone=encoder"], "raised RuntimeError: shapes do not fit"),
    ([helper("tiny")], "model.components is not set"),
    ([helper("tiny"), "model.components.a=encoder", "model.components.b=encoder.0"], "overlaps model.components.a"),
    ([helper("tiny"), "model.components.a=norm"], "model.components.a = 'norm' holds no Conv2d layer"),
    (["model.factory=missing_file.py:build"], "no such file"),
    (["model.factory=just_a_name"], "model.factory"),
])
def test_model_factory_faults_are_one_line_config_errors(capsys, tmp_path, overrides, expected):
    code, line = train_fails(capsys, tmp_path, *overrides)
    assert code == 2
    assert expected in line
    assert "model.factory" in line or "model.components" in line


def test_a_module_that_fails_to_import_is_named(capsys, tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('needs a GPU driver')\n")
    code, line = train_fails(capsys, tmp_path, f"model.factory={tmp_path / 'broken.py'}:build")
    assert code == 2
    assert "model.factory" in line and "failed (RuntimeError: needs a GPU driver)" in line


# -- data.factory ----------------------------------------------------------------------------------


def test_a_data_factory_supplies_the_splits():
    factory_helpers.CALLS.clear()
    config = load_config("demo", [data_helper("tiny_data"), "data.factory_args.size=3", "data.factory_args.tag='x'",
                                  "tasks=['segment_semantic', 'depth_zbuffer']"])
    data = build_datasets(config)
    assert factory_helpers.CALLS[-1] == ("tiny_data", ["segment_semantic", "depth_zbuffer"], {"size": 3, "resolution": 16, "tag": "x"})
    assert [len(split) for split in (data.train, data.val, data.test)] == [3, 3, 3]
    assert all(isinstance(split, factory_helpers.TinyScenes) for split in (data.train, data.val, data.test))
    tuple_config = load_config("demo", [data_helper("tiny_data_tuple")])
    assert len(build_datasets(tuple_config).test) == 4


def test_training_and_eval_on_a_data_factory(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--preset", "demo", "--out", str(out), "--quiet", *TINY, data_helper("tiny_data"))
    assert code == 0, err
    code, text, err = run(capsys, "eval", str(out / "model.safetensors"), "--json")
    assert code == 0, err
    result = json.loads(text)
    assert result["data"] == f"data.factory = '{HELPERS}:tiny_data'"
    assert set(result["metrics"]) == {"segment_semantic", "normal", "depth_zbuffer"}
    assert all(math.isfinite(v) for v in result["losses"].values())


@pytest.mark.parametrize("overrides, code_expected, expected", [
    ([data_helper("two_splits")], 2, "returned a 2-item list; return the train, val and test datasets"),
    ([data_helper("raises")], 2, "data.factory = "),
    ([data_helper("bad_data"), "data.factory_args.fault='missing_task'"], 3, "val item 0: no target for task 'normal'"),
    ([data_helper("bad_data"), "data.factory_args.fault='float_labels'"], 3,
     "val item 0: target 'segment_semantic' is float32 [16, 16]; expected int64 [16, 16]"),
    ([data_helper("bad_data"), "data.factory_args.fault='flat_depth'", "data.factory_args.split='test'"], 3,
     "test item 0: target 'depth_zbuffer' is float32 [16, 16]; expected float32 [1, 16, 16]"),
    ([data_helper("bad_data"), "data.factory_args.fault='class_nine'", "data.factory_args.split='train'"], 3,
     "train item 0: target 'segment_semantic' holds class 9, outside 0..5"),
    ([data_helper("bad_data"), "data.factory_args.fault='raises'"], 3, "reading val item 0 raised OSError: image 0.png is truncated"),
    ([data_helper("tiny_data"), "data.source=nyuv2"], 2, "data.factory and data.source = 'nyuv2'"),
])
def test_data_factory_faults_are_one_line(capsys, tmp_path, overrides, code_expected, expected):
    code, line = train_fails(capsys, tmp_path, *overrides)
    assert code == code_expected
    assert expected in line and "data.factory" in line


def test_factory_args_must_be_recordable():
    with pytest.raises(ConfigError, match="not a Python identifier"):
        load_config("demo", ["model.factory_args.not-a-name=1"])
    with pytest.raises(ConfigError, match="non-finite"):
        load_config("demo", ["model.factory_args.x=nan"])
    with pytest.raises(ConfigError, match="two components name the same submodule"):
        load_config("demo", ["model.components.a=encoder", "model.components.b=encoder"])


def test_tasks_of_a_checkpoint_come_from_the_config(tmp_path):
    from adapmtl_cli.config import config_to_json
    from adapmtl_cli.io.checkpoint import read_checkpoint, save_checkpoint

    config = load_config("demo", [helper("tiny"), "model.components.backbone=encoder", "tasks=['depth_zbuffer', 'normal']"])
    model = build_model(config, {name: task.out_channels for name, task in build_tasks(config).items()})
    assert not hasattr(model, "heads")
    save_checkpoint(tmp_path / "m.safetensors", model, config_to_json(config), 0, {})
    assert read_checkpoint(tmp_path / "m.safetensors").tasks == ["depth_zbuffer", "normal"]
