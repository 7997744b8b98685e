"""Fuzz the preset loader and the override parser: any input ends in a Config or a one-line
ConfigError, never another exception."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapmtl_cli.config import all_keys, config_to_toml, load_config, tomllib, validate_config
from adapmtl_cli.errors import ConfigError

scalars = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(string.printable, max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
keys = st.sampled_from(all_keys() + ["bogus", "train.bogus", "model.width.x", "sparsity"])


def assert_one_line(error: ConfigError) -> None:
    assert str(error) and "\n" not in str(error)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6))
def test_random_presets_validate_or_fail_cleanly(entries):
    raw: dict = {}
    for dotted, value in entries.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[parts[-1]] = value
    try:
        config = validate_config(raw, source="fuzz.toml")
    except ConfigError as error:
        assert_one_line(error)
    else:
        # Whatever validates must survive the trip through config.toml unchanged.
        assert validate_config(tomllib.loads(config_to_toml(config))) == config


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, st.text(string.printable, max_size=16)),
                          st.text(string.printable, max_size=20)), max_size=4))
def test_random_overrides_apply_or_fail_cleanly(overrides):
    try:
        load_config("demo", overrides)
    except ConfigError as error:
        assert_one_line(error)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_toml_text_fails_cleanly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "preset.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(str(path))
    except ConfigError as error:
        assert_one_line(error)
