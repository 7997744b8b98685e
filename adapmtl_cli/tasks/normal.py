"""Surface normals (``normal``): cosine loss; angle statistics (NYUv2) or cosine similarity
(Taskonomy).

Both prediction and ground truth are normalised before the cosine, so the ground truth may be unit
vectors (standard) or the raw 0..254 byte vectors of the paper's NYUv2 files (QUIRK, REFERENCE.md 6):
only its direction matters. A pixel is valid when every channel of the ground truth is finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks.base import (
    STYLES,
    Metric,
    MetricQuirks,
    Task,
    finite_pixels,
    masked_mean,
    resize_nearest,
    safe_ratio,
)

# Angle histogram for the median: 0.01 degree bins over [0, 180]. The median is reported as the
# centre of the bin holding it (the mean of two bin centres for an even count), so it is within
# 0.005 degrees of the exact median. A histogram, unlike a list of every angle, has a fixed size,
# stays on the device and sums across processes.
ANGLE_BIN_DEGREES = 0.01
ANGLE_BINS = 18000
# The "within" thresholds are counted exactly (angle < threshold), not read off the histogram.
ANGLE_THRESHOLDS = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}


def pixel_cosine(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine ``[B, H, W]`` between the normalised vectors, and the valid-pixel mask.

    Invalid ground truth is replaced by 0 before any arithmetic, so no NaN reaches the gradient;
    its cosine is 0 and masked out by the caller.
    """
    valid = finite_pixels(target)
    clean = torch.where(valid.unsqueeze(1), target, torch.zeros_like(target))
    cosine = (F.normalize(pred, dim=1) * F.normalize(clean.to(pred.dtype), dim=1)).sum(dim=1)
    return cosine, valid


class NormalTask(Task):
    """Loss: ``1 - mean cosine`` over valid pixels at the prediction's resolution.

    Styles: ``nyuv2`` reports ``angle_mean`` and ``angle_median`` (degrees) and ``within_11_25``,
    ``within_22_5``, ``within_30`` (% of valid pixels with an angle below the threshold);
    ``taskonomy`` reports ``cosine_similarity`` (mean cosine over valid pixels, higher is better).
    The quirk switches do not affect this task.
    """

    name = "normal"
    out_channels = 3
    directions_by_style = {
        "nyuv2": {"angle_mean": False, "angle_median": False, **{key: True for key in ANGLE_THRESHOLDS}},
        "taskonomy": {"cosine_similarity": True},
    }

    def __init__(self, style: str = "nyuv2", quirks: MetricQuirks = MetricQuirks()):
        if style not in STYLES:
            raise ConfigError(f"normal: unknown style {style!r}; valid styles: {', '.join(STYLES)}")
        self.style = style
        self.quirks = quirks
        self.higher_is_better = dict(self.directions_by_style[style])
        self.primary_metric = "angle_mean" if style == "nyuv2" else "cosine_similarity"

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # 1 - cosine per pixel (not 1 - mean cosine) so that a batch with no valid pixel gives 0.
        cosine, valid = pixel_cosine(pred, resize_nearest(target, pred.shape[-2:]))
        return masked_mean(torch.where(valid, 1 - cosine, torch.zeros_like(cosine)), valid)

    def new_metric(self) -> Metric:
        return AngleMetric() if self.style == "nyuv2" else CosineMetric()

    def render(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit normals as RGB, (n + 1) / 2; invalid target pixels black."""
        size = target.shape[-2:]
        pred = F.normalize(F.interpolate(pred[None].float(), size=size, mode="nearest")[0], dim=0)
        valid = torch.isfinite(target).all(0)
        gt = F.normalize(target.float().nan_to_num(0.0), dim=0)
        return (pred + 1) / 2, (gt + 1) / 2 * valid


def _metric_cosine(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine at label resolution in float64: in float32, acos near cos = 1 is off by hundredths of
    a degree, the size of the histogram bins."""
    return pixel_cosine(resize_nearest(pred.double(), target.shape[-2:]), target.double())


class AngleMetric(Metric):
    """Angle statistics over every valid pixel of the split (NYUv2 style)."""

    def _new_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "pixels": torch.zeros((), dtype=torch.int64, device=device),
            "angle_sum": torch.zeros((), dtype=torch.float64, device=device),
            "within": torch.zeros(len(ANGLE_THRESHOLDS), dtype=torch.int64, device=device),
            # One extra "sink" bin collects the invalid pixels.
            "histogram": torch.zeros(ANGLE_BINS + 1, dtype=torch.int64, device=device),
        }

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        state = self.state(pred.device)
        cosine, valid = _metric_cosine(pred, target)
        angle = torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))
        state["pixels"] += valid.sum()
        state["angle_sum"] += torch.where(valid, angle, torch.zeros_like(angle)).sum()
        state["within"] += torch.stack([(valid & (angle < limit)).sum() for limit in ANGLE_THRESHOLDS.values()])
        bins = torch.floor(angle / ANGLE_BIN_DEGREES).long().clamp(0, ANGLE_BINS - 1)
        bins = torch.where(valid, bins, torch.full_like(bins, ANGLE_BINS)).flatten()
        state["histogram"].index_put_((bins,), torch.ones_like(bins), accumulate=True)

    def compute(self) -> dict[str, float]:
        state = self.state()
        pixels = int(state["pixels"])
        within = (safe_ratio(state["within"], state["pixels"].expand_as(state["within"])) * 100).tolist()
        return {
            "angle_mean": float(safe_ratio(state["angle_sum"], state["pixels"])),
            "angle_median": _histogram_median(state["histogram"][:ANGLE_BINS].cpu(), pixels),
            **dict(zip(ANGLE_THRESHOLDS, within)),
        }


def _histogram_median(histogram: torch.Tensor, count: int) -> float:
    """Median of ``count`` values binned in ``histogram``: the mean of the centres of the bins
    holding the two middle values (one value when ``count`` is odd)."""
    if count == 0:
        return math.nan
    cumulative = histogram.cumsum(0)
    middle = torch.tensor([(count - 1) // 2, count // 2], dtype=cumulative.dtype)
    # The value of 0-based rank r lies in the first bin whose cumulative count exceeds r.
    bins = torch.searchsorted(cumulative, middle, right=True).double()
    return float(((bins + 0.5) * ANGLE_BIN_DEGREES).mean())


class CosineMetric(Metric):
    """Mean cosine similarity over every valid pixel of the split (Taskonomy style)."""

    def _new_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {"pixels": torch.zeros((), dtype=torch.int64, device=device),
                "cosine_sum": torch.zeros((), dtype=torch.float64, device=device)}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        state = self.state(pred.device)
        cosine, valid = _metric_cosine(pred, target)
        state["pixels"] += valid.sum()
        state["cosine_sum"] += torch.where(valid, cosine, torch.zeros_like(cosine)).sum()

    def compute(self) -> dict[str, float]:
        state = self.state()
        return {"cosine_similarity": float(safe_ratio(state["cosine_sum"], state["pixels"]))}
