"""``adapmtl compare``'s Table 2 layout (report/tables.py) on a comparison written by hand: the
cells, the Markdown and the CSV are spelled out here, not taken from the code."""

import pytest

from adapmtl_cli.report.tables import comparison_columns, comparison_text

COMPARISON = {
    "baseline": "dense.json",
    "rows": [
        {"model": "baseline", "file": "dense.json",
         "metrics": {"seg": {"miou": 0.5, "pixel_acc": 0.75}, "depth": {"abs_err": 12.5}},
         "sparsity": {"overall": 0.0, "components": {"backbone": 0.0}},
         "delta": {"per_task": {"seg": 0.0, "depth": 0.0}, "delta_t": 0.0, "delta_p": 0.0}},
        # An undefined metric (null) and a task with no metric both sides define (no per_task entry).
        {"model": "sparse", "file": "sparse.json",
         "metrics": {"seg": {"miou": None, "pixel_acc": 0.7}, "depth": {"abs_err": 13.0}},
         "sparsity": {"overall": 0.8, "components": {"backbone": 0.755}},
         "delta": {"per_task": {"depth": -5.3}, "delta_t": -5.3, "delta_p": -2.1}},
        # A model without the depth task, pixel accuracy or sparsity; a comma in its name.
        {"model": "no, sparsity", "file": "x.json",
         "metrics": {"seg": {"miou": 0.4}},
         "sparsity": {},
         "delta": {"per_task": {}, "delta_t": None, "delta_p": None}},
    ],
}

HEADER = ["model", "seg/miou", "seg/pixel_acc", "depth/abs_err", "Delta seg", "Delta depth", "backbone %",
          "overall %", "Delta_T", "Delta_p"]
ROWS = [
    ["baseline", "0.5", "0.75", "12.50", "+0.00", "+0.00", "0", "0", "+0.00", "+0.00"],
    ["sparse", "n/a", "0.7", "13.00", "n/a", "-5.30", "75.50", "80.00", "-5.30", "-2.10"],
    ["no, sparsity", "0.4", "-", "-", "n/a", "n/a", "-", "-", "n/a", "n/a"],
]


def test_cells_follow_the_number_rules():
    # Below 1: four significant digits; from 1: two decimals; Deltas signed; sparsity in percent;
    # n/a for undefined, - for absent.
    assert comparison_columns(COMPARISON) == (HEADER, ROWS)


def test_markdown_and_csv():
    markdown = comparison_text(COMPARISON, "markdown")
    assert markdown == (
        "| model | seg/miou | seg/pixel_acc | depth/abs_err | Delta seg | Delta depth | backbone % | overall % | Delta_T | Delta_p |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        "| baseline | 0.5 | 0.75 | 12.50 | +0.00 | +0.00 | 0 | 0 | +0.00 | +0.00 |\n"
        "| sparse | n/a | 0.7 | 13.00 | n/a | -5.30 | 75.50 | 80.00 | -5.30 | -2.10 |\n"
        "| no, sparsity | 0.4 | - | - | n/a | n/a | - | - | n/a | n/a |\n")
    assert comparison_text(COMPARISON, "csv") == (
        "model,seg/miou,seg/pixel_acc,depth/abs_err,Delta seg,Delta depth,backbone %,overall %,Delta_T,Delta_p\r\n"
        "baseline,0.5,0.75,12.50,+0.00,+0.00,0,0,+0.00,+0.00\r\n"
        "sparse,n/a,0.7,13.00,n/a,-5.30,75.50,80.00,-5.30,-2.10\r\n"
        '"no, sparsity",0.4,-,-,n/a,n/a,-,-,n/a,n/a\r\n')
    with pytest.raises(ValueError):
        comparison_text(COMPARISON, "table")  # the rich table is comparison_table
