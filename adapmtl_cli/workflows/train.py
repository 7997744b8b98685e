"""``adapmtl train``: a new run in a fresh run directory, or ``--resume`` of a stopped one."""

from __future__ import annotations

import time
from pathlib import Path

from adapmtl_cli.config import Config, config_to_toml, load_config
from adapmtl_cli.errors import ConfigError


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
    from adapmtl_cli.io.checkpoint import atomic_write_text
    from adapmtl_cli.run import TrainingRun

    if _is_rank_zero_env():  # under torchrun only rank 0 writes; the process group starts later
        make_run_dir(out, force)
        atomic_write_text(out / "config.toml", config_to_toml(config))
    return _fit_and_leave(TrainingRun(config, out, console=console, quiet=quiet))


def _fit_and_leave(run) -> dict:
    """Run the training run; under torchrun, leave the process group cleanly whatever happens (a
    barrier first only on success: after a failure another rank may never reach it)."""
    from adapmtl_cli.engine import distributed

    try:
        summary = run.fit()
        distributed.barrier()
        return summary
    finally:
        distributed.shutdown()


def resume(run_dir: Path, *, console=None, quiet: bool = False) -> dict:
    """Continue the run in ``run_dir`` from its state.safetensors, exactly where it stopped."""
    from adapmtl_cli.run import TrainingRun

    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.toml there; is it an adapmtl run directory?")
    config = load_config(str(config_path))
    return _fit_and_leave(TrainingRun(config, run_dir, console=console, resume=True, quiet=quiet))


def _is_rank_zero_env() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
