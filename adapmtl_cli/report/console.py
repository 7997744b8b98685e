"""Rich console output: progress on stderr, summary tables, and what each command prints for
humans (``print_*``). Human output never goes to stdout, so ``--json`` output can be piped."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from adapmtl_cli.report.jsonout import UNDEFINED, is_undefined

stderr_console = Console(stderr=True)
if not stderr_console.is_terminal:
    # Logs and CI capture: rich would assume 80 columns and cut the tables' names.
    stderr_console.width = 120

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


def sparsity_bar(fraction: float, width: int = 12) -> str:
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def sparsity_table(report: dict, params: dict[str, int] | None = None, nonzeros: dict[str, int] | None = None, title: str = "Sparsity") -> Table:
    """Per-component sparsity (%), threshold sigmoid(s) and a bar; optionally weights and non-zeros."""
    table = Table(title=title, title_justify="left")
    table.add_column("component", no_wrap=True)
    if params is not None:
        table.add_column("weights", justify="right", no_wrap=True)
    if nonzeros is not None:
        table.add_column("non-zeros", justify="right", no_wrap=True)
    table.add_column("sparsity %", justify="right", no_wrap=True)
    table.add_column("threshold", justify="right", no_wrap=True)
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
        row += [f"{100 * fraction:.2f}", "-" if threshold is None else f"{threshold:.2e}", sparsity_bar(fraction)]
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


def format_metric(key: str, value: float | None) -> str:
    """A metric in its table unit; an undefined one (null in JSON, or NaN) is "n/a"."""
    if is_undefined(value):
        return UNDEFINED
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


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


def inspect_tables(report, with_layers: bool = False) -> list:
    """The renderables of ``adapmtl inspect``: a header, the component table, optional layers."""
    document = report.as_dict()
    header = Table.grid(padding=(0, 2))
    header.add_row("file", f"{report.path} ({human_size(report.file_size)})")
    header.add_row("kind", report.kind)
    header.add_row("preset", str(report.preset or "-"))
    header.add_row("tasks", ", ".join(report.tasks) or "-")
    header.add_row("step", "-" if report.step is None else str(report.step))
    items = [header, sparsity_table(document, params=document["params"], nonzeros=document["nonzeros"], title="Components")]
    if with_layers:
        table = Table(title="Layers", title_justify="left")
        for column, justify in (("layer", "left"), ("component", "left"), ("weights", "right"), ("sparsity %", "right"), ("threshold", "right")):
            table.add_column(column, justify=justify)
        for layer in report.layers:
            threshold = "-" if layer.threshold is None else f"{layer.threshold:.3e}"
            table.add_row(layer.key, layer.component, f"{layer.params:,}", f"{100 * layer.zeros / layer.params:.2f}", threshold)
        items.append(table)
    if document["metrics"]:
        items.append(metrics_table(document["metrics"], title="Metrics recorded in the file"))
    items.extend(f"[dim]{note}[/]" for note in report.notes)
    items.append("[dim]Unstructured sparsity saves storage and memory (see `adapmtl export --format sparse`), not dense-kernel time.[/]")
    return items


def delta_table(delta: dict) -> Table:
    """Delta per task (Delta_T's per-task sums and Delta_p's per-task means), then the totals."""
    table = Table(title=f"Delta vs {delta.get('baseline', 'baseline')} (%, positive = better)", title_justify="left")
    table.add_column("task")
    table.add_column("Delta_T (sum)", justify="right")
    table.add_column("Delta_p (mean)", justify="right")
    for task, value in delta["per_task"].items():
        table.add_row(task, _signed(value), _signed(delta["per_task_mean"][task]))
    table.add_row("[bold]all tasks", f"[bold]{_signed(delta['delta_t'])}", f"[bold]{_signed(delta['delta_p'])}")
    return table


def _signed(value: float | None) -> str:
    """A Delta in percent with its sign; "n/a" when undefined (no metric could be compared)."""
    return UNDEFINED if is_undefined(value) else f"{value:+.2f}"


def presets_table(descriptions: dict[str, str]) -> Table:
    """``adapmtl presets list``: each preset's name and description."""
    table = Table(title="Presets", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for name, description in descriptions.items():
        table.add_row(name, description)
    return table


def print_summary(console: Console, summary: dict, run_dir: Path) -> None:
    """A finished run (``train``, ``finetune``): sparsity, test metrics, notes, the run directory."""
    console.print(sparsity_table(summary, title=f"Sparsity at step {summary['step']}"))
    console.print(metrics_table(summary["metrics"], title="Test metrics (final model)"))
    for note in summary.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", markup=True, highlight=False)
    console.print(f"run directory: [bold]{run_dir}[/]")


def print_eval(console: Console, result: dict) -> None:
    """``adapmtl eval``: what was evaluated on which data, metrics, sparsity, Delta if any."""
    console.print(f"{result['file']} on the {result['split']} split of {result['data']}")
    console.print(metrics_table(result["metrics"], title="Metrics"))
    console.print(sparsity_table(result, title="Sparsity"))
    if "delta" in result:
        console.print(delta_table(result["delta"]))


def print_file_report(console: Console, report: dict) -> None:
    """A written checkpoint's inspect report (``prune``): per-component weights and non-zeros."""
    console.print(sparsity_table(report, params=report["params"], nonzeros=report["nonzeros"], title=f"{report['file']}"))


def print_export(console: Console, result, output_format: str) -> None:
    """``adapmtl export``: the sizes of the checkpoint and the export, the non-zeros, the notes."""
    what = output_format + (f", {result.values_dtype} values" if result.values_dtype else "")
    lines = [
        f"checkpoint {escape(str(result.checkpoint))}: {human_size(result.checkpoint_size)} ({result.checkpoint_size:,} bytes)",
        f"export     {escape(str(result.out))} ({what}): {human_size(result.export_size)} ({result.export_size:,} bytes), "
        f"{result.export_size / result.checkpoint_size:.3f}x the checkpoint",
        f"sparsified weights: {result.nonzeros:,} non-zero of {result.weights:,} ({100 * (1 - result.nonzeros / max(result.weights, 1)):.2f}% sparse)",
        *(escape(note) for note in result.notes),
        "[dim]Unstructured sparsity saves storage and memory, not dense-kernel time: dense convs cost the same.[/]",
    ]
    for line in lines:
        console.print(line, soft_wrap=True)


def print_inspect(console: Console, report, with_layers: bool = False) -> None:
    """``adapmtl inspect``: the header, the component table, optional layers, notes."""
    for renderable in inspect_tables(report, with_layers=with_layers):
        console.print(renderable)
