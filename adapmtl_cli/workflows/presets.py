"""``adapmtl presets``: list, show, copy and validate presets."""

from __future__ import annotations

import shutil
from pathlib import Path

from adapmtl_cli.config import Config, list_presets, load_config, resolve_preset_path
from adapmtl_cli.errors import ConfigError


def preset_descriptions() -> dict[str, str]:
    """Each shipped preset's name and one-line description, validated on the way."""
    return {name: load_config(str(path)).description for name, path in list_presets().items()}


def preset_text(name: str) -> str:
    return resolve_preset_path(name).read_text(encoding="utf-8")


def copy_preset(name: str, destination: Path, force: bool = False) -> Path:
    source = resolve_preset_path(name)
    if destination.exists() and not force:
        raise ConfigError(f"{destination} exists; pass --force to overwrite it")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    except OSError as exc:
        raise ConfigError(f"{destination}: cannot write ({exc.strerror})") from None
    return destination


def validate_preset(name_or_file: str, overrides: list[str] = ()) -> Config:
    return load_config(name_or_file, list(overrides))
