"""``adapmtl compare --plot``: the sparsity-accuracy curve (``workflows.compare.sparsity_curve``)
drawn with matplotlib, an optional extra (``pip install 'adapmtl[plot]'``) imported only here and
only when a plot is asked for. The Agg backend draws into memory (no window); the file is written
atomically, in the format its suffix names."""

from __future__ import annotations

import io
from pathlib import Path

from adapmtl_cli.errors import ConfigError, MissingExtra

# Suffix -> matplotlib format.
PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
# 9 x 5.5 inches at 100 dpi: 900 x 550 pixels, readable at 800 px wide.
FIGURE_INCHES = (9.0, 5.5)
DPI = 100


def check_plot_target(path: Path) -> None:
    """Fail before any work when ``path`` cannot be written as a plot: an unknown suffix, a
    folder that does not exist, or no matplotlib."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise ConfigError(f"--plot {path}: the suffix names the format; choose {', '.join(PLOT_FORMATS)}")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot {path}: no folder {path.parent}; create it or choose another path")
    _pyplot()


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or a one-line error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtra("--plot needs matplotlib: pip install 'adapmtl[plot]'") from None
    return plt


def plot_curve(curve: dict, path: Path) -> Path:
    """Draw ``curve`` (x in percent) and write it to ``path``; returns the path."""
    from adapmtl_cli.io.checkpoint import atomic_write_bytes

    path = Path(path)
    check_plot_target(path)
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    try:
        _draw_baseline(axes, curve["baseline"])
        colours = plt.get_cmap("tab10" if len(curve["methods"]) <= 10 else "tab20")
        for index, (method, points) in enumerate(sorted(curve["methods"].items())):
            _draw_method(axes, method, points, colours(index))
        axes.set_title(curve["title"])
        axes.set_xlabel("overall sparsity (% of weights that are zero)")
        axes.set_ylabel(curve["y_label"], wrap=True)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize="small")
        buffer = io.BytesIO()
        figure.savefig(buffer, format=PLOT_FORMATS[path.suffix.lower()], dpi=DPI)
    finally:
        plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue(), option="--plot")
    return path


def _draw_method(axes, method: str, points: list[dict], colour) -> None:
    xs = [100 * p["x"] for p in points]
    ys = [p["y"] for p in points]
    errors = [0.0 if p["sd"] is None else p["sd"] for p in points]
    counts = sorted({p["n"] for p in points})
    n = f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]}-{counts[-1]}"
    axes.errorbar(xs, ys, yerr=errors if any(errors) else None, color=colour, marker="o", capsize=4,
                  linestyle="-" if len(points) > 1 else "none", label=f"{method} ({n} per point)")


def _draw_baseline(axes, baseline: dict) -> None:
    """The baseline's value as a dashed line, and +-1 sd of the dense inputs around it (the seed
    noise) when there are two or more."""
    if baseline["y"] is None:
        return
    axes.axhline(baseline["y"], color="black", linestyle="--", linewidth=1, label="dense baseline")
    if baseline["sd"] is not None:
        axes.axhspan(baseline["y"] - baseline["sd"], baseline["y"] + baseline["sd"], color="grey", alpha=0.2,
                     label=f"±1 sd of the {baseline['n']} dense models")
