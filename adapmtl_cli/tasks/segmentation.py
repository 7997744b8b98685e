"""Semantic segmentation (``segment_semantic``): cross entropy, mIoU / Pixel Acc, or the
Taskonomy "seg err".

Labels ``0..C-1`` are classes; 255 (and any other value outside ``0..C-1``) is ignored by the loss
and the metrics alike, so a stray label can never index outside the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks.base import (
    STYLES,
    BatchWeightedMeans,
    Metric,
    MetricQuirks,
    Task,
    masked_mean,
    resize_labels_nearest,
    resize_nearest,
    safe_ratio,
)



def labelled_pixels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mask of the pixels that carry a class label (``0 <= label < C``)."""
    return (labels >= 0) & (labels < num_classes)


class ClassWeights:
    """Per-class loss weights, copied once to each device / dtype they are used on (a host-to-device
    copy every step would stall the step)."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights
        self._copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._copies:
            self._copies[key] = self.weights.to(device=device, dtype=dtype)
        return self._copies[key]


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        class_weights: ClassWeights | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel ``(weight * cross entropy, weight)`` maps ``[B, H, W]``, both 0 on unlabelled pixels.

    ``sum(first) / sum(second)`` is PyTorch's weighted ``cross_entropy(..., reduction="mean")``
    (it divides by the summed weights of the labelled pixels); with no class weights every
    labelled pixel weighs 1.
    """
    labelled = labelled_pixels(labels, num_classes)
    safe_labels = torch.where(labelled, labels, torch.zeros_like(labels))
    loss = F.cross_entropy(logits, safe_labels, reduction="none")
    weight = labelled.to(loss.dtype)
    if class_weights is not None:
        weight = weight * class_weights.on(loss.device, loss.dtype)[safe_labels]
    return torch.where(labelled, loss * weight, torch.zeros_like(loss)), weight


class SegmentationTask(Task):
    """Cross entropy over labelled pixels, optionally class-weighted (Taskonomy's prior factor).

    Styles: ``nyuv2`` reports ``miou`` and ``pixel_acc`` (fractions in 0..1); ``taskonomy`` reports
    ``seg_err``, the mean cross entropy over the labelled pixels of the split at label resolution,
    weighted by the class weights when the task has them (i.e. the training criterion, evaluated
    on the whole split; lower is better).
    """

    name = "segment_semantic"
    directions_by_style = {"nyuv2": {"miou": True, "pixel_acc": True}, "taskonomy": {"seg_err": False}}

    def __init__(self, num_classes: int, class_weights: torch.Tensor | None = None, style: str = "nyuv2",
                 quirks: MetricQuirks = MetricQuirks()):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"segment_semantic: num_classes must be a positive integer, got {num_classes!r}")
        if style not in STYLES:
            raise ConfigError(f"segment_semantic: unknown style {style!r}; valid styles: {', '.join(STYLES)}")
        self.num_classes = num_classes
        self.out_channels = num_classes
        checked = _check_class_weights(class_weights, num_classes)
        self.class_weights = None if checked is None else ClassWeights(checked)
        self.style = style
        self.quirks = quirks
        self.higher_is_better = dict(self.directions_by_style[style])
        self.primary_metric = "miou" if style == "nyuv2" else "seg_err"

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = resize_labels_nearest(target.long(), pred.shape[-2:])
        weighted_loss, weight = pixel_cross_entropy(pred, labels, self.num_classes, self.class_weights)
        return masked_mean(weighted_loss, weight)

    def new_metric(self) -> Metric:
        if self.style == "taskonomy":
            return SegmentationErrorMetric(self.num_classes, self.class_weights)
        return ConfusionMetric(self.num_classes, self.quirks)

    def render(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classes in a fixed colour map; ignored pixels black."""
        size = target.shape[-2:]
        classes = F.interpolate(pred[None].float(), size=size, mode="nearest")[0].argmax(0)
        palette = class_palette(self.out_channels).to(pred.device)
        valid = (target >= 0) & (target < self.out_channels)
        return palette[classes].permute(2, 0, 1), (palette[target.clamp(0, self.out_channels - 1)] * valid[..., None]).permute(2, 0, 1)


def _check_class_weights(class_weights, num_classes: int) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().flatten().cpu()
    if weights.numel() != num_classes:
        raise ConfigError(
            f"segment_semantic: {weights.numel()} class weights for {num_classes} classes; "
            "give one weight per class"
        )
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ConfigError("segment_semantic: class weights must be finite and >= 0")
    return weights


class ConfusionMetric(Metric):
    """mIoU and Pixel Acc from a confusion matrix over labels ``< C`` (rows: truth, columns: prediction).

    The matrix is filled with ``index_put_(accumulate=True)`` rather than ``torch.bincount``:
    bincount sizes its output from the data, which reads the maximum back to the host on CUDA,
    while ``index_put_`` adds into a preallocated buffer without a sync (and deterministically).
    Unlabelled pixels go to one extra "sink" cell that the metrics never read.
    """

    def __init__(self, num_classes: int, quirks: MetricQuirks):
        super().__init__()
        self.num_classes = num_classes
        self.quirks = quirks

    def _new_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        cells = self.num_classes * self.num_classes + 1
        state = {"confusion": torch.zeros(cells, dtype=torch.int64, device=device)}
        state.update(BatchWeightedMeans.new_state(("pixel_acc",), device))
        return state

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        state = self.state(pred.device)
        target = target.long()  # uint8 maps would overflow in target * C
        # Nearest upsampling copies whole pixels, so the argmax can be taken at the low resolution.
        predicted = resize_labels_nearest(pred.argmax(dim=1), target.shape[-2:])
        labelled = labelled_pixels(target, self.num_classes)
        sink = self.num_classes * self.num_classes
        cell = torch.where(labelled, target * self.num_classes + predicted, torch.full_like(target, sink))
        cell = cell.flatten()
        state["confusion"].index_put_((cell,), torch.ones_like(cell), accumulate=True)
        correct = (labelled & (predicted == target)).sum()
        BatchWeightedMeans.add(state, pred.shape[0], labelled.sum(), {"pixel_acc": correct})

    def compute(self) -> dict[str, float]:
        state = self.state()
        classes = self.num_classes
        confusion = state["confusion"][: classes * classes].view(classes, classes).double()
        true_pos = confusion.diagonal()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - true_pos
        iou = safe_ratio(true_pos, union)
        # Standard: every class seen in the truth or the prediction counts (IoU 0 included).
        # QUIRK miou_tp_only: only classes with a true positive, which hides missed classes.
        counted = true_pos > 0 if self.quirks.miou_tp_only else union > 0
        miou = iou[counted].mean() if bool(counted.any()) else torch.tensor(float("nan"))
        if self.quirks.batch_weighted_means:
            pixel_acc = BatchWeightedMeans.mean(state, "pixel_acc")
        else:
            pixel_acc = safe_ratio(true_pos.sum(), confusion.sum())
        return {"miou": float(miou), "pixel_acc": float(pixel_acc)}


class SegmentationErrorMetric(Metric):
    """Taskonomy's ``seg_err``: cross entropy of the upsampled logits, pooled over labelled pixels."""

    def __init__(self, num_classes: int, class_weights: ClassWeights | None):
        super().__init__()
        self.num_classes = num_classes
        self.class_weights = class_weights

    def _new_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {"loss_sum": torch.zeros((), dtype=torch.float64, device=device),
                "weight_sum": torch.zeros((), dtype=torch.float64, device=device)}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        state = self.state(pred.device)
        logits = resize_nearest(pred.double(), target.shape[-2:])
        weighted_loss, weight = pixel_cross_entropy(logits, target.long(), self.num_classes, self.class_weights)
        state["loss_sum"] += weighted_loss.sum()
        state["weight_sum"] += weight.sum()

    def compute(self) -> dict[str, float]:
        state = self.state()
        return {"seg_err": float(safe_ratio(state["loss_sum"], state["weight_sum"]))}


def class_palette(num_classes: int) -> torch.Tensor:
    """Distinct colours per class (the bit-interleaving map of PASCAL VOC), ``[C, 3]`` in [0, 1]."""
    colours = torch.zeros(num_classes, 3)
    for index in range(num_classes):
        value, shift = index, 7
        while value:
            for channel in range(3):
                colours[index, channel] += ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return colours / 255.0
