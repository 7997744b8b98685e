"""The evaluation loop: every task's metrics and mean loss over a data split."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader


def autocast_context(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model, loader: DataLoader, tasks: dict, device: torch.device, amp: str = "none",
             max_batches: int = 0, on_batch=None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Return ``(metrics, losses)``: ``metrics[task][key]`` and the mean loss per task.

    Metrics accumulate on the device and are reduced across processes; ``on_batch(index, image,
    targets, outputs)`` lets callers pick samples (e.g. TensorBoard pictures) without a second pass.
    """
    was_training = model.training
    model.eval()
    meters = {name: task.new_metric() for name, task in tasks.items()}
    loss_sums = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    batches = 0
    for index, (image, targets) in enumerate(loader):
        if max_batches and index >= max_batches:
            break
        image = image.to(device, non_blocking=True)
        targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        with autocast_context(device, amp):
            outputs = model(image)
        outputs = {k: v.float() for k, v in outputs.items()}
        for i, (name, task) in enumerate(tasks.items()):
            loss_sums[i] += task.loss(outputs[name], targets[name]).double()
            meters[name].update(outputs[name], targets[name])
        if on_batch is not None:
            on_batch(index, image, targets, outputs)
        batches += 1
    from adapmtl_cli.engine.distributed import all_reduce_mean_

    all_reduce_mean_(loss_sums)
    metrics = {}
    for name, meter in meters.items():
        meter.reduce()
        metrics[name] = meter.compute()
    losses = dict(zip(tasks, (loss_sums / max(batches, 1)).tolist()))
    model.train(was_training)
    return metrics, losses
