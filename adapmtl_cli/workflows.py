"""What each command does, as plain Python functions: they take a Config or a path and return a
result; the CLI only parses, calls, renders and picks the exit code."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from adapmtl_cli.config import (
    Config,
    config_to_toml,
    list_presets,
    load_config,
    resolve_preset_path,
)
from adapmtl_cli.errors import ConfigError


# -- train ----------------------------------------------------------------------------------


def prepare_config(preset: str, overrides: list[str], data_root: str | None = None) -> Config:
    overrides = list(overrides)
    if data_root is not None:
        overrides.append(f"data.root={_quote(data_root)}")
    return load_config(preset, overrides)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_run_dir(config: Config) -> Path:
    return Path("runs") / config.name / time.strftime("%Y%m%d-%H%M%S")


def make_run_dir(out: Path, force: bool = False) -> Path:
    """Create a fresh run directory; an existing non-empty one is kept unless ``force``."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"--out {out} already holds a run; pass --force to overwrite it, or --resume {out} to continue it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the run directory ({exc.strerror})") from None
    return out


def train(config: Config, out: Path, *, console=None, force: bool = False, quiet: bool = False) -> dict:
    """Train a new run in ``out``; returns the summary (the contents of summary.json)."""
    from adapmtl_cli.engine.trainer import Trainer
    from adapmtl_cli.io.checkpoint import atomic_write_text

    if _is_rank_zero_env():  # under torchrun only rank 0 writes; the process group starts later
        make_run_dir(out, force)
        atomic_write_text(out / "config.toml", config_to_toml(config))
    trainer = Trainer(config, out, console=console, quiet=quiet)
    return trainer.fit()


def resume(run_dir: Path, *, console=None, quiet: bool = False) -> dict:
    """Continue the run in ``run_dir`` from its state.safetensors, exactly where it stopped."""
    from adapmtl_cli.engine.trainer import Trainer

    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.toml there; is it an adapmtl run directory?")
    config = load_config(str(config_path))
    trainer = Trainer(config, run_dir, console=console, resume=True, quiet=quiet)
    return trainer.fit()


def _is_rank_zero_env() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


# -- presets --------------------------------------------------------------------------------


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
