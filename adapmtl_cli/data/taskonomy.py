"""Tiny-Taskonomy in the AdaShare layout, 5 tasks (REFERENCE.md 5).

``<root>/taskonomy.json`` maps each split to a list of [img, seg, normal, depth, keypoints2d,
edge_texture] paths relative to ``<root>/<split>/``; ``<root>/semseg_prior_factor.npy`` holds the
17 class weights of the segmentation loss. Every file is resized (nearest) to 256 x 256 first.
- img: colour PNG, RGB turned to BGR, minus the BGR mean;
- seg: 8-bit PNG; ``label[label == 0] = 1; label -= 1`` (0 becomes class 0), >= 17 ignored;
- normal: 8-bit 3-channel PNG, / 255 * 2 - 1, x negated on flip (in both modes, as the reference);
- depth: 16-bit PNG d, log(1 + d) / log(2^16), invalid where d >= 64500;
- keypoints2d, edge_texture: 16-bit PNGs / 65535, clipped to [0, 0.005] and [0, 0.08] and
  rescaled to [-1, 1].
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn.functional as F

from adapmtl_cli.data.base import PairedDataset, png_size, read_npy, read_png, require_file
from adapmtl_cli.data.nyuv2 import BGR_MEAN
from adapmtl_cli.data.sources import data_source
from adapmtl_cli.errors import DataError

TASKONOMY_CLASSES = data_source("taskonomy").classes
# Each entry of taskonomy.json: the image, then one file per task in the source's task order.
COLUMNS = ("img", *data_source("taskonomy").tasks)
CLIPS = {"keypoints2d": 0.005, "edge_texture": 0.08}
NATIVE = 256


class TaskonomyAdaShare(PairedDataset):
    mean = BGR_MEAN
    paper_mirrors_normals = True

    def __init__(self, root, split: str, tasks, **options):
        self.split = split
        super().__init__(root, tasks, **options)
        self.class_weights = self._prior()

    def _prior(self) -> torch.Tensor:
        path = require_file(self.root, "semseg_prior_factor.npy")
        prior = torch.from_numpy(read_npy(path).astype(np.float32)).flatten()
        if prior.numel() != TASKONOMY_CLASSES:
            raise DataError(f"{path}: holds {prior.numel()} class weights, expected {TASKONOMY_CLASSES}")
        return prior

    def index(self) -> list:
        if not self.root.is_dir():
            raise DataError(f"data.root {self.root} does not exist; point --data-root at the Taskonomy folder")
        path = require_file(self.root, "taskonomy.json")
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))[self.split]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}: not an index with a {self.split!r} list") from None
        if not entries or any(not isinstance(e, list) or len(e) != len(COLUMNS) for e in entries):
            raise DataError(f"{path}: each {self.split!r} entry must list {', '.join(COLUMNS)}")
        return entries

    def _file(self, relative: str):
        return self.root / self.split / relative

    def load(self, item):
        files = dict(zip(COLUMNS, item))
        image = torch.from_numpy(read_png(self._file(files["img"]))[..., :3][..., ::-1].copy()).permute(2, 0, 1).float()
        image = _nearest(image, NATIVE)
        targets = {}
        for task in self.tasks:
            raw = read_png(self._file(files[task]))
            targets[task] = getattr(self, f"_{task}")(torch.from_numpy(raw.astype(np.float32)))
        return image, targets

    @staticmethod
    def _segment_semantic(raw: torch.Tensor) -> torch.Tensor:
        label = _nearest(raw[None], NATIVE)[0].long()
        label[label == 0] = 1
        label -= 1
        return label.masked_fill(label >= TASKONOMY_CLASSES, 255)

    @staticmethod
    def _normal(raw: torch.Tensor) -> torch.Tensor:
        return _nearest(raw[..., :3].permute(2, 0, 1), NATIVE) / 255 * 2 - 1

    @staticmethod
    def _depth_zbuffer(raw: torch.Tensor) -> torch.Tensor:
        d = _nearest(raw[None], NATIVE)
        return (torch.log1p(d) / math.log(2**16)).masked_fill(d >= 64500, float("nan"))

    @staticmethod
    def _clipped(raw: torch.Tensor, clip: float) -> torch.Tensor:
        v = _nearest(raw[None], NATIVE) / 65535
        return v.clamp(0, clip) / clip * 2 - 1

    def _keypoints2d(self, raw):
        return self._clipped(raw, CLIPS["keypoints2d"])

    def _edge_texture(self, raw):
        return self._clipped(raw, CLIPS["edge_texture"])

    def check(self, item) -> str | None:
        files = dict(zip(COLUMNS, item))
        for column in ("img", *self.tasks):
            if not self._file(files[column]).is_file():
                return f"{self.split}/{files[column]} is missing"
        size = png_size(self._file(files["img"]))
        if size is None:
            return f"{self.split}/{files['img']} is not a readable PNG"
        for task in self.tasks:
            shape = png_size(self._file(files[task]))
            if shape != size:
                return f"{self.split}/{files[task]} is {'unreadable' if shape is None else f'{shape[0]}x{shape[1]}'} but {files['img']} is {size[0]}x{size[1]}"
        return None


def _nearest(tensor: torch.Tensor, size: int) -> torch.Tensor:
    if tensor.shape[-2:] == (size, size):
        return tensor
    return F.interpolate(tensor[None].float(), size=(size, size), mode="nearest")[0]
