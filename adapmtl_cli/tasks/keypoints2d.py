"""2D keypoints (``keypoints2d``, Taskonomy): L1 loss, ``key_err`` = mean absolute error."""

from __future__ import annotations

from adapmtl_cli.tasks.regression import L1RegressionTask


class KeypointsTask(L1RegressionTask):
    name = "keypoints2d"
    metric_key = "key_err"
