"""Depth (``depth_zbuffer``): L1 loss; Abs Err, Rel Err and the delta accuracies.

Depth clamping (standard mode). Rel Err and delta compare prediction and truth as a ratio, which
only measures an error when both are positive: with ``max(p/g, g/p)`` a negative prediction makes
both ratios negative, hence "within 1.25", so the worse the sign the better the score. Standard
mode therefore clamps every prediction to ``DEPTH_MIN`` before any metric: a non-positive
prediction then scores like predicting (almost) zero depth - Rel Err about 1, outside every delta.
``DEPTH_MIN`` (1e-6) is below any valid ground truth (NYUv2 marks depth <= 3e-5 m invalid), so the
clamp never changes a prediction that could be right, and it moves a prediction towards every truth
above ``DEPTH_MIN``. QUIRK ``depth_unclamped`` (the reference) uses the raw predictions.
"""

from __future__ import annotations

import torch

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks.base import (
    STYLES,
    BatchWeightedMeans,
    Metric,
    MetricQuirks,
    Task,
    as_channels,
    masked_l1_loss,
    resize_nearest,
    safe_ratio,
)

DEPTH_MIN = 1e-6
# delta_k: the % of valid pixels whose ratio max(p/g, g/p) is below 1.25 ** k.
DELTA_THRESHOLDS = {"delta_1_25": 1.25, "delta_1_25_2": 1.25**2, "delta_1_25_3": 1.25**3}


class DepthTask(Task):
    """L1 loss over finite ground-truth pixels at the prediction's resolution.

    Styles: ``nyuv2`` reports ``abs_err``, ``rel_err`` (mean |p - g| / g) and ``delta_1_25``,
    ``delta_1_25_2``, ``delta_1_25_3`` (%), over pixels whose truth is finite and > 0 (the ratios
    need g > 0; loaders already mark non-positive depth invalid); ``taskonomy`` reports ``abs_err``
    over finite pixels (its log-scaled depth may be exactly 0).
    """

    name = "depth_zbuffer"
    out_channels = 1
    directions_by_style = {
        "nyuv2": {"abs_err": False, "rel_err": False, **{key: True for key in DELTA_THRESHOLDS}},
        "taskonomy": {"abs_err": False},
    }

    def __init__(self, style: str = "nyuv2", quirks: MetricQuirks = MetricQuirks()):
        if style not in STYLES:
            raise ConfigError(f"depth_zbuffer: unknown style {style!r}; valid styles: {', '.join(STYLES)}")
        self.style = style
        self.quirks = quirks
        self.higher_is_better = dict(self.directions_by_style[style])
        self.primary_metric = "abs_err"

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return masked_l1_loss(pred, target)

    def new_metric(self) -> Metric:
        return DepthMetric(self.quirks, with_ratios=self.style == "nyuv2")


class DepthMetric(Metric):
    """Abs Err and, with ``with_ratios``, Rel Err and delta over the valid pixels of the split.

    Abs Err and Rel Err are pooled over pixels, or with QUIRK ``batch_weighted_means`` the
    batch-size-weighted mean of per-batch values; delta is always pooled (as in the reference).
    """

    def __init__(self, quirks: MetricQuirks, with_ratios: bool = True):
        super().__init__()
        self.quirks = quirks
        self.with_ratios = with_ratios

    def _new_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        state = {
            "pixels": torch.zeros((), dtype=torch.int64, device=device),
            "abs_sum": torch.zeros((), dtype=torch.float64, device=device),
            "rel_sum": torch.zeros((), dtype=torch.float64, device=device),
            "within": torch.zeros(len(DELTA_THRESHOLDS), dtype=torch.int64, device=device),
        }
        state.update(BatchWeightedMeans.new_state(("abs_err", "rel_err"), device))
        return state

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        state = self.state(pred.device)
        truth = as_channels(target).double()
        depth = resize_nearest(pred.double(), truth.shape[-2:])
        if not self.quirks.depth_unclamped:
            depth = depth.clamp_min(DEPTH_MIN)
        valid = torch.isfinite(truth)
        if self.with_ratios:
            valid = valid & (truth > 0)
        # Stand-ins on invalid pixels keep NaN and 0-division out of the sums; they are masked.
        truth = torch.where(valid, truth, torch.ones_like(truth))
        depth = torch.where(valid, depth, torch.ones_like(depth))
        abs_error = torch.where(valid, (depth - truth).abs(), torch.zeros_like(truth))
        pixels = valid.sum()
        abs_sum = abs_error.sum()
        rel_sum = (abs_error / truth).sum()
        state["pixels"] += pixels
        state["abs_sum"] += abs_sum
        state["rel_sum"] += rel_sum
        if self.with_ratios:
            ratio = torch.maximum(depth / truth, truth / depth)
            state["within"] += torch.stack([(valid & (ratio < limit)).sum() for limit in DELTA_THRESHOLDS.values()])
        BatchWeightedMeans.add(state, pred.shape[0], pixels, {"abs_err": abs_sum, "rel_err": rel_sum})

    def compute(self) -> dict[str, float]:
        state = self.state()
        if self.quirks.batch_weighted_means:
            abs_err = BatchWeightedMeans.mean(state, "abs_err")
            rel_err = BatchWeightedMeans.mean(state, "rel_err")
        else:
            abs_err = safe_ratio(state["abs_sum"], state["pixels"])
            rel_err = safe_ratio(state["rel_sum"], state["pixels"])
        if not self.with_ratios:
            return {"abs_err": float(abs_err)}
        within = (safe_ratio(state["within"], state["pixels"].expand_as(state["within"])) * 100).tolist()
        return {"abs_err": float(abs_err), "rel_err": float(rel_err), **dict(zip(DELTA_THRESHOLDS, within))}
