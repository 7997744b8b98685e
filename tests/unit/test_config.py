"""Presets, overrides and their errors: one line, the field named, exit code 2."""

import json
from adapmtl_cli.config import tomllib

import pytest

from adapmtl_cli.cli import main
from adapmtl_cli.config import Config, all_keys, config_to_toml, list_presets, load_config
from adapmtl_cli.errors import ConfigError

STABLE_KEYS = ["seed", "data.source", "data.root", "train.steps", "train.batch_size", "optim.lr",
               "optim.weight_decay", "sparsity.target", "sparsity.init", "sparsity.granularity", "weighting.method"]


def test_sweep_keys_stay_stable():
    assert set(STABLE_KEYS) <= set(all_keys())


def test_every_shipped_preset_validates():
    assert "demo" in list_presets()
    for name in list_presets():
        assert isinstance(load_config(name), Config)


def test_overrides_keep_their_types():
    config = load_config("demo", ["optim.lr=3e-4", "train.steps=7", "sparsity.granularity=layer",
                                  "tasks=['normal', 'depth_zbuffer']", "weighting.priorities.normal=2", "data.root=/some/where"])
    assert config.optim.lr == 3e-4 and isinstance(config.train.steps, int) and config.train.steps == 7
    assert config.sparsity.granularity == "layer"
    assert config.tasks == ["normal", "depth_zbuffer"]
    assert config.weighting.priorities == {"normal": 2.0}
    assert config.data.root == "/some/where"


@pytest.mark.parametrize("data", [[], ["data.seed=7", "data.scenes=bench", "data.cache_dir=/tmp/scenes"]])
def test_resolved_config_round_trips_through_toml(tmp_path, data):
    # data.seed unset is None, which TOML cannot write: it is left out and reads back unset.
    config = load_config("demo", ["optim.betas=[0.9, 0.99]", "weighting.priorities.normal=0.5", "sparsity.freeze_only=['head.normal']", *data])
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config))
    assert tomllib.loads(path.read_text())  # valid TOML
    assert load_config(str(path)) == config


@pytest.mark.parametrize("override,needle", [
    ("train.stepz=3", "did you mean 'train.steps'"),
    ("sparsity.target=1.5", "sparsity.target"),
    ("sparsity.target=0", "sparsity.target"),
    ("tasks=[]", "task list is empty"),
    ("tasks=['segment_semantic', 'colour']", "unknown task 'colour'"),
    ("train.steps=abc", "train.steps"),
    ("sparsity.granularity=row", "sparsity.granularity"),
    ("weighting.priorities.keypoints2d=2", "weighting.priorities"),
    ("novalue", "not key=value"),
])
def test_bad_overrides_are_one_line_config_errors(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config("demo", [override])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_preset_files(tmp_path):
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('name = "x"\n[train]\nstepz = 3\n')
    with pytest.raises(ConfigError, match=r"unknown\.toml.*unknown key 'train.stepz'.*did you mean 'train.steps'"):
        load_config(str(unknown))
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('[optim]\nlr = "fast"\n')
    with pytest.raises(ConfigError, match=r"wrong\.toml: optim\.lr"):
        load_config(str(wrong_type))
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(broken))
    with pytest.raises(ConfigError, match="unknown preset 'demoo'.*did you mean 'demo'"):
        load_config("demoo")


def test_cli_errors_exit_2_without_traceback(capsys):
    assert main(["train", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown preset 'nope'" in err and "Traceback" not in err
    assert main(["presets", "validate", "demo", "sparsity.target=2"]) == 2


def test_presets_commands(tmp_path, capsys):
    assert main(["presets", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "demo" in listing
    assert main(["presets", "show", "demo"]) == 0
    shown = capsys.readouterr().out
    assert tomllib.loads(shown)["name"] == "demo"
    target = tmp_path / "mine.toml"
    assert main(["presets", "copy", "demo", str(target)]) == 0
    assert load_config(str(target)) == load_config("demo")
    assert main(["presets", "copy", "demo", str(target)]) == 2  # exists, no --force
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("adapmtl ")
