"""What every task kind shares: the quirk switches of the metrics, the ``Task`` and ``Metric``
interfaces, and the resizing / masking helpers the losses and metrics are built from.

Conventions (docs/internals.md, "Tensors that flow ..."):
- predictions are ``[B, C, h, w]`` at the backbone's resolution;
- targets are at the image's ``H x W``: segmentation int64 ``[B, H, W]`` with 255 = ignore, every
  other task float ``[B, C, H, W]`` with NaN = invalid pixel;
- losses work at the prediction's resolution (the target is nearest-downsampled), metrics at the
  label's resolution (the prediction is nearest-upsampled) - REFERENCE.md 6 and 7.

Metrics keep running sums as tensors on the prediction's device, so ``update`` never waits for the
device; only ``compute`` reads them back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Label value the loaders use for "no label" in segmentation maps (REFERENCE.md 5).
IGNORE_LABEL = 255
# Metric styles: what a data source reports for the tasks whose metrics depend on it (``style``).
STYLES = ("nyuv2", "taskonomy")


@dataclass(frozen=True)
class MetricQuirks:
    """Switches that reproduce the reference's evaluation quirks (REFERENCE.md 7).

    All False is standard mode; paper mode sets all True (``MetricQuirks.paper()``).

    - ``miou_tp_only``: mIoU averages only the classes with at least one true positive. Standard:
      every class present in the ground truth or in the prediction counts, an IoU of 0 included.
    - ``batch_weighted_means``: Pixel Acc, Abs Err and Rel Err are batch-size-weighted means of
      per-batch values. Standard: pooled over all valid pixels of the set.
    - ``depth_unclamped``: depth predictions are used as they are, so a negative prediction counts
      as within delta (both ratios are negative, hence < 1.25). Standard: predictions are clamped
      to ``DEPTH_MIN`` first (see ``depth.py``).
    """

    miou_tp_only: bool = False
    batch_weighted_means: bool = False
    depth_unclamped: bool = False

    @classmethod
    def paper(cls) -> MetricQuirks:
        return cls(miou_tp_only=True, batch_weighted_means=True, depth_unclamped=True)

    @classmethod
    def standard(cls) -> MetricQuirks:
        return cls()


# --------------------------------------------------------------------------------------------
# Interfaces


class Metric(ABC):
    """Accumulates one task's metrics over a data split.

    Subclasses declare their running sums in ``_new_state`` (a dict of zero tensors); the base
    class creates them on the device of the first prediction, reduces them across processes and
    merges two meters. A meter that saw no valid pixel reports NaN.
    """

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] | None = None

    @abstractmethod
    def _new_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Zeroed running sums on ``device``."""

    @abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch. Must not synchronise with the host (no ``.item()``, no boolean indexing)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics of everything seen so far, with the task's fixed keys and units."""

    def state(self, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """The running sums, created on ``device`` (default CPU) if no batch was seen yet."""
        if self._state is None:
            self._state = self._new_state(torch.device("cpu") if device is None else device)
        return self._state

    def reset(self) -> None:
        self._state = None

    def reduce(self) -> None:
        """Sum the running sums over all processes (in place) when torch.distributed is running.

        Every rank must call it, also a rank that saw no batch: its sums are created as zeros on
        the device the process group's backend works on.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        device = None if self._state is not None else _collective_device()
        for tensor in self.state(device).values():
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)

    def merge(self, other: Metric) -> None:
        """Add another meter's sums to this one (what ``reduce`` does across processes)."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if other._state is None:
            return
        mine = self.state(next(iter(other._state.values())).device)
        for key, tensor in other._state.items():
            mine[key] += tensor.to(mine[key].device)


def _collective_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Task(ABC):
    """One task kind: its head's output channels, its loss and its metrics.

    Attributes:
        name: the task name (``segment_semantic``, ``normal``, ...).
        out_channels: channels of the head's output.
        higher_is_better: each metric key -> True when a larger value is better; its keys are
            exactly the keys ``new_metric().compute()`` returns.
        primary_metric: the key used when one number must choose between models.
    """

    name: str
    out_channels: int
    higher_is_better: dict[str, bool]
    primary_metric: str
    # A kind whose metrics depend on the ``style`` option: each style's ``higher_is_better``.
    directions_by_style: dict[str, dict[str, bool]] = {}

    @abstractmethod
    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``pred [B, C, h, w]`` against the full-resolution target."""

    @abstractmethod
    def new_metric(self) -> Metric:
        """A fresh meter for this task."""

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return tuple(self.higher_is_better)

    @classmethod
    def metric_directions(cls) -> dict[str, bool]:
        """Every metric key a task of this kind can report, whatever its options, with its
        direction (comparing result files needs no task built with their options). The union of
        ``directions_by_style``, or the class's own ``higher_is_better``; a kind that sets
        ``higher_is_better`` in its constructor from something else overrides this."""
        directions: dict[str, bool] = {}
        for style_directions in cls.directions_by_style.values():
            directions.update(style_directions)
        return directions or dict(getattr(cls, "higher_is_better", {}))

    def render(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample's prediction ``[C, h, w]`` and target as RGB images ``[3, H, W]`` in [0, 1]
        at the label's size, for TensorBoard. The default shows one channel in grey, both scaled
        by the target's valid range; invalid target pixels are black."""
        size = target.shape[-2:]
        pred = F.interpolate(pred[None, :1].float(), size=size, mode="nearest")[0, 0]
        target = as_channels(target[None].float())[0, 0]
        valid = torch.isfinite(target)
        low = target[valid].min() if valid.any() else pred.min()
        high = target[valid].max() if valid.any() else pred.max()
        scale = (high - low).clamp_min(1e-12)

        def grey(x: torch.Tensor) -> torch.Tensor:
            return ((x - low) / scale).clamp(0, 1).nan_to_num(0.0).expand(3, -1, -1)

        return grey(pred[None]), grey(target[None]) * valid

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, out_channels={self.out_channels})"


# --------------------------------------------------------------------------------------------
# Helpers shared by the task modules


def as_channels(target: torch.Tensor) -> torch.Tensor:
    """A dense target as ``[B, C, H, W]``: a single-channel ``[B, H, W]`` map gets its channel axis."""
    return target.unsqueeze(1) if target.dim() == 3 else target


def resize_nearest(tensor: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest resize of a float ``[B, C, H, W]`` tensor to ``size``; NaN markers survive it."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=tuple(size), mode="nearest")


def resize_labels_nearest(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest resize of an integer ``[B, H, W]`` label map.

    ``interpolate`` only takes floats; the labels are small integers, exact in float32.
    """
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels.unsqueeze(1).float(), size=tuple(size), mode="nearest")
    return resized.squeeze(1).to(labels.dtype)


def finite_pixels(target: torch.Tensor) -> torch.Tensor:
    """Valid-pixel mask ``[B, H, W]`` of a ``[B, C, H, W]`` target: every channel finite."""
    return torch.isfinite(target).all(dim=1)


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(values) / sum(weights)``; 0 that still carries the graph when nothing is valid.

    ``values`` must already be 0 (via ``torch.where``, not a product with a NaN) where the weight
    is 0, so its sum is always connected to the prediction. Dividing by 1 instead of 0 keeps the
    gradient finite: a ``where`` around a 0/0 would still send NaN backwards.
    """
    total = weights.sum()
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    return values.sum() / safe_total


def safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` as a float64 tensor, NaN where the denominator is 0."""
    numerator = numerator.double()
    denominator = denominator.double()
    nan = torch.full_like(numerator, float("nan"))
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), nan)


class BatchWeightedMeans:
    """Running sums for the QUIRK ``batch_weighted_means`` (the reference's bookkeeping).

    The reference computes one value per batch (pooled over that batch's valid pixels), then
    averages those values weighted by batch size. A batch with no valid pixel has no value and is
    left out (weight 0) instead of poisoning the mean with NaN.
    """

    @staticmethod
    def new_state(keys: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
        state = {f"batch_sum_{key}": torch.zeros((), dtype=torch.float64, device=device) for key in keys}
        state["batch_items"] = torch.zeros((), dtype=torch.float64, device=device)
        return state

    @staticmethod
    def add(state: dict[str, torch.Tensor], batch_size: int, pixels: torch.Tensor,
            sums: dict[str, torch.Tensor]) -> None:
        """Add one batch whose per-key sums over ``pixels`` valid pixels are ``sums``."""
        has_pixels = pixels > 0
        weight = has_pixels.double() * batch_size
        safe_pixels = torch.where(has_pixels, pixels, torch.ones_like(pixels)).double()
        for key, total in sums.items():
            state[f"batch_sum_{key}"] += total.double() / safe_pixels * weight
        state["batch_items"] += weight

    @staticmethod
    def mean(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        return safe_ratio(state[f"batch_sum_{key}"], state["batch_items"])


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the finite pixels of the target, nearest-downsampled to the
    prediction (depth, keypoints2d, edge_texture); 0 with a graph when no pixel is valid."""
    target = resize_nearest(as_channels(target), pred.shape[-2:])
    valid = torch.isfinite(target)
    clean = torch.where(valid, target, torch.zeros_like(target)).to(pred.dtype)
    error = (pred - clean).abs()
    return masked_mean(torch.where(valid, error, torch.zeros_like(error)), valid)
