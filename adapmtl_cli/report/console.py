"""Rich console output: progress on stderr, summary tables. Human output never goes to stdout, so
``--json`` output can be piped."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

stderr_console = Console(stderr=True)

# Metrics that are fractions are shown in percent, like the paper's tables.
FRACTION_METRICS = {"miou", "pixel_acc"}


def training_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("sparsity {task.fields[sparsity]:6.2%}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console or stderr_console,
        transient=False,
    )


def sparsity_bar(fraction: float, width: int = 20) -> str:
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def sparsity_table(report: dict, params: dict[str, int] | None = None, nonzeros: dict[str, int] | None = None, title: str = "Sparsity") -> Table:
    """Per-component sparsity (%), threshold sigmoid(s) and a bar; optionally weights and non-zeros."""
    table = Table(title=title, title_justify="left")
    table.add_column("component")
    if params is not None:
        table.add_column("conv weights", justify="right")
    if nonzeros is not None:
        table.add_column("non-zeros", justify="right")
    table.add_column("sparsity %", justify="right")
    table.add_column("threshold", justify="right")
    table.add_column("", no_wrap=True)
    components = report["sparsity"]["components"]
    thresholds = report.get("thresholds", {})
    for name, fraction in components.items():
        row = [name]
        if params is not None:
            row.append(f"{params[name]:,}")
        if nonzeros is not None:
            row.append(f"{nonzeros[name]:,}")
        threshold = thresholds.get(name, thresholds.get("global"))
        row += [f"{100 * fraction:.2f}", "-" if threshold is None else f"{threshold:.3e}", sparsity_bar(fraction)]
        table.add_row(*row)
    overall = report["sparsity"]["overall"]
    row = ["[bold]overall"]
    if params is not None:
        row.append(f"{sum(params.values()):,}")
    if nonzeros is not None:
        row.append(f"{sum(nonzeros.values()):,}")
    row += [f"[bold]{100 * overall:.2f}", "", sparsity_bar(overall)]
    table.add_row(*row)
    return table


def format_metric(key: str, value: float) -> str:
    if key in FRACTION_METRICS:
        return f"{100 * value:.2f}%"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def metrics_table(metrics: dict[str, dict[str, float]], title: str = "Metrics") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("task")
    table.add_column("metrics")
    for task, values in metrics.items():
        table.add_row(task, "  ".join(f"{key} {format_metric(key, value)}" for key, value in values.items()))
    return table
