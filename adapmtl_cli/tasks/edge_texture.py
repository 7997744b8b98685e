"""Texture edges (``edge_texture``, Taskonomy): L1 loss, ``edge_err`` = mean absolute error."""

from __future__ import annotations

from adapmtl_cli.tasks.regression import L1RegressionTask


class EdgeTextureTask(L1RegressionTask):
    name = "edge_texture"
    metric_key = "edge_err"
