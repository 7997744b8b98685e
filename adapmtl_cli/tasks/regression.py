"""Dense regression scored by one mean absolute error: the common base of ``keypoints2d`` and
``edge_texture`` (Taskonomy). Loaders turn the reference's 255 padding into NaN, so "valid" means
a finite ground truth, for the L1 loss and the metric alike."""

from __future__ import annotations

import torch

from adapmtl_cli.tasks.base import Metric, MetricQuirks, Task, as_channels, masked_l1_loss, resize_nearest, safe_ratio


class L1RegressionTask(Task):
    """A one-channel regression task. Subclasses set ``name`` and ``metric_key``; the metric is the
    mean |prediction - truth| over the valid pixels of the split, lower is better. The quirk
    switches do not affect it."""

    metric_key: str
    out_channels = 1

    def __init__(self, quirks: MetricQuirks = MetricQuirks()):
        self.quirks = quirks
        self.higher_is_better = {self.metric_key: False}
        self.primary_metric = self.metric_key

    @classmethod
    def metric_directions(cls) -> dict[str, bool]:
        return {cls.metric_key: False}

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return masked_l1_loss(pred, target)

    def new_metric(self) -> Metric:
        return MeanAbsErrorMetric(self.metric_key)


class MeanAbsErrorMetric(Metric):
    """Mean absolute error pooled over every finite ground-truth pixel of the split."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def _new_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {"pixels": torch.zeros((), dtype=torch.int64, device=device),
                "abs_sum": torch.zeros((), dtype=torch.float64, device=device)}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        state = self.state(pred.device)
        truth = as_channels(target).double()
        estimate = resize_nearest(pred.double(), truth.shape[-2:])
        valid = torch.isfinite(truth)
        error = (estimate - torch.where(valid, truth, torch.zeros_like(truth))).abs()
        state["pixels"] += valid.sum()
        state["abs_sum"] += torch.where(valid, error, torch.zeros_like(error)).sum()

    def compute(self) -> dict[str, float]:
        state = self.state()
        return {self.key: float(safe_ratio(state["abs_sum"], state["pixels"]))}
