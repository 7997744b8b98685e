"""``adapmtl compare``'s output: the paper's Table 2 layout (every metric, Delta per task,
component sparsity, Delta_T and Delta_p) as string cells, then as Markdown, CSV or a rich table.

The cells are made once (``comparison_columns``); each format only lays them out. Metrics keep the
units of the JSON; an undefined value (null) is ``n/a``, a value a model does not have is ``-``.
"""

from __future__ import annotations

import csv
import io

from adapmtl_cli.report.jsonout import UNDEFINED, is_undefined

# The --format values of `adapmtl compare` (a rich table on stderr, or text on stdout).
COMPARISON_FORMATS = ("table", "markdown", "csv")


def comparison_columns(comparison: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Table 2 layout, as strings (metrics in the units of the JSON)."""
    rows = comparison["rows"]
    metric_keys = [(task, key) for task, values in rows[0]["metrics"].items() for key in values]
    components = list(rows[0]["sparsity"].get("components", {}))
    tasks = list(rows[0]["metrics"])
    header = (["model"] + [f"{task}/{key}" for task, key in metric_keys] + [f"Delta {task}" for task in tasks]
              + [f"{c} %" for c in components] + ["overall %", "Delta_T", "Delta_p"])
    body = []
    for row in rows:
        cells = [row["model"]]
        cells += [_fmt_metric(row["metrics"].get(task, {}), key) for task, key in metric_keys]
        # A task left out of per_task had no metric both sides define: its Delta is n/a.
        cells += [_fmt(row["delta"]["per_task"].get(task), signed=True) for task in tasks]
        components_of = row["sparsity"].get("components", {})
        cells += [_fmt(100 * components_of[c]) if c in components_of else "-" for c in components]
        overall = row["sparsity"].get("overall")
        cells += ["-" if overall is None else _fmt(100 * overall), _fmt(row["delta"]["delta_t"], signed=True),
                  _fmt(row["delta"]["delta_p"], signed=True)]
        body.append(cells)
    return header, body


def _fmt_metric(values: dict, key: str) -> str:
    """A metric cell: "-" when the model has no such metric, "n/a" when it is undefined (null)."""
    return _fmt(values[key]) if key in values else "-"


def _fmt(value, signed: bool = False) -> str:
    """A number cell; "n/a" for an undefined one (None or not finite)."""
    if is_undefined(value):
        return UNDEFINED
    return f"{value:+.2f}" if signed else f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table, one line per row, ending with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(header: list[str], rows: list[list[str]]) -> str:
    """CSV as the ``csv`` module writes it by default (``\\r\\n`` line ends, quoting as needed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def comparison_text(comparison: dict, output_format: str) -> str:
    """The comparison as ``markdown`` or ``csv`` text, for stdout."""
    header, rows = comparison_columns(comparison)
    if output_format == "markdown":
        return markdown_table(header, rows)
    if output_format == "csv":
        return csv_table(header, rows)
    raise ValueError(f"not a text format: {output_format!r}")


def comparison_table(comparison: dict):
    """The comparison as a rich Table titled with its baseline (``--format table``)."""
    from rich.table import Table

    header, rows = comparison_columns(comparison)
    table = Table(title=f"Against {comparison['baseline']}", title_justify="left")
    for column in header:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def curve_columns(curve: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the sparsity-accuracy curve (``compare --metric/--plot``): one row per
    point of each method, then the dense baseline; sparsity in percent."""
    header = ["method", "overall %", curve["metric"], "sd", "n", "models"]
    body = []
    for method, points in curve["methods"].items():
        for point in points:
            body.append([method, _fmt(100 * point["x"]), _fmt(point["y"]), _fmt_sd(point["sd"]), str(point["n"]),
                         ", ".join(point["labels"])])
    baseline = curve["baseline"]
    body.append(["dense baseline", _fmt(0.0), _fmt(baseline["y"]), _fmt_sd(baseline["sd"]), str(baseline["n"] or "-"),
                 ", ".join(baseline["dense_inputs"]) or baseline["description"]])
    return header, body


def _fmt_sd(value) -> str:
    """A standard deviation cell: "-" below two values (None)."""
    return "-" if value is None else _fmt(value)


def curve_table(curve: dict):
    """The curve's points as a rich Table titled with its y axis."""
    from rich.table import Table

    header, rows = curve_columns(curve)
    table = Table(title=curve["y_label"], title_justify="left")
    for column in header:
        table.add_column(column, justify="left" if column in ("method", "models") else "right")
    for row in rows:
        table.add_row(*row)
    return table
