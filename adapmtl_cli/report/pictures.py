"""Pictures for TensorBoard: a few fixed validation samples, each a row of the input followed by
every task's ground truth and prediction side by side. Each task renders itself (Task.render)."""

from __future__ import annotations

import torch


def display_image(image: torch.Tensor, bgr: bool) -> torch.Tensor:
    """A normalised input ``[3, H, W]`` stretched to [0, 1] for display (BGR turned to RGB)."""
    image = image.float()
    if bgr:
        image = image.flip(0)
    low, high = image.amin(), image.amax()
    return (image - low) / (high - low).clamp_min(1e-12)


def picture_grid(images: torch.Tensor, targets: dict, outputs: dict, tasks: dict, *, bgr: bool = False, gap: int = 2) -> torch.Tensor:
    """Rows = samples; columns = input, then (ground truth, prediction) per task. ``[3, H, W]``."""
    rows = []
    for i in range(images.shape[0]):
        tiles = [display_image(images[i], bgr)]
        for name, task in tasks.items():
            pred, gt = task.render(outputs[name][i].detach(), targets[name][i])
            tiles += [gt.cpu(), pred.cpu()]
        # Invalid ground truth (NaN) and a diverging prediction (inf) show as black, not as
        # undefined bytes.
        rows.append(_hstack([t.float().nan_to_num(nan=0.0, posinf=1.0, neginf=0.0) for t in tiles], gap))
    return _vstack(rows, gap)


def _hstack(tiles: list[torch.Tensor], gap: int) -> torch.Tensor:
    height = max(t.shape[1] for t in tiles)
    padded = []
    for tile in tiles:
        canvas = torch.ones(3, height, tile.shape[2] + gap)
        canvas[:, : tile.shape[1], : tile.shape[2]] = tile.cpu()
        padded.append(canvas)
    return torch.cat(padded, dim=2)


def _vstack(rows: list[torch.Tensor], gap: int) -> torch.Tensor:
    width = max(r.shape[2] for r in rows)
    padded = []
    for row in rows:
        canvas = torch.ones(3, row.shape[1] + gap, width)
        canvas[:, : row.shape[1], : row.shape[2]] = row
        padded.append(canvas)
    return torch.cat(padded, dim=1)
