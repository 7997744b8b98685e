"""TensorBoard logging with the reference's tag names (REFERENCE.md 12). Rank 0 only; a no-op
elsewhere, so the training loop never asks who it is."""

from __future__ import annotations

from pathlib import Path


def _tag_part(name: str) -> str:
    return name.replace("/", "_")


class TensorBoardLogger:
    def __init__(self, log_dir: Path | None):
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))
            # One chart with the planned and the actual overall sparsity (schedule control).
            self._writer.add_custom_scalars({"sparsity": {"planned vs actual": ["Multiline", ["sparsity/overall_sparsity", "sparsity/planned"]]}})

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def count(self, tag: str, value: int, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), step, new_style=True, double_precision=True)

    def train_step(self, step: int, lr: float, losses: dict[str, float], weights: dict[str, float], overall: float | None) -> None:
        if self._writer is None:
            return
        self.scalar("LR", lr, step)
        for task, value in losses.items():
            self.scalar(f"Loss/train/{task}", value, step)
            self.scalar(f"LR/{task}/weights", weights[task], step)
        if overall is not None:
            self.scalar("sparsity/overall_sparsity", overall, step)

    def sparsity(self, step: int, stats, layer_components: dict[str, str], layer_thresholds: dict[str, str | None], with_layers: bool) -> None:
        if self._writer is None:
            return
        self.scalar("sparsity/overall_sparsity", stats.overall, step)
        for component, value in stats.components.items():
            self.scalar(f"sparsity/{component}", 100.0 * value, step)
        # The integer zero counts, stored in float64 (exact up to 2**53: a float32 scalar is not
        # beyond 2**24 weights), the same numbers as summary.json, inspect and eval.
        self.count("Zeros/overall", stats.zeros, step)
        for component, count in stats.component_zeros.items():
            self.count(f"Zeros/{component}", count, step)
        if with_layers:
            for key, value in stats.layers.items():
                component = layer_components[key]
                module = key.removesuffix(".weight")
                short = module.split(".", 1)[1] if "." in module else module
                if component.startswith("head."):
                    short = short.split(".", 1)[1] if "." in short else short  # drop the task name: the component says it
                tag = f"{_tag_part(component)}_{short}"
                self.scalar(f"Layer_sparsity/{tag}", 100.0 * value, step)
                threshold = layer_thresholds[key]
                if threshold is not None:
                    self.scalar(f"Layer_thresh/{tag}", stats.thresholds[threshold], step)

    def validation(self, step: int, metrics: dict[str, dict[str, float]], losses: dict[str, float], split: str = "val") -> None:
        if self._writer is None:
            return
        for task, value in losses.items():
            self.scalar(f"Loss/{split}/{task}", value, step)
        for task, values in metrics.items():
            for key, value in values.items():
                self.scalar(f"Metric/{task}/{key}", value, step)

    def image(self, tag: str, image_chw, step: int) -> None:
        if self._writer is not None:
            self._writer.add_image(tag, image_chw, step)

    def figure_curve(self, tag: str, values: dict[int, float]) -> None:
        for step, value in sorted(values.items()):
            self.scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
