"""Cityscapes in the layout MTAN and LibMTL use (``data.source = "cityscapes"``).

``<root>/{train,val}/{image,label_7,label_19,depth}/<i>.npy``, 2975 train / 500 val items, 128 x 256
(MTAN also ships a 256 x 512 copy in the same layout). As those files hold them and as MTAN's and
LibMTL's loaders read them:
- image: float HxWx3, RGB in [0, 1]; fed to the network as stored (no mean subtraction), as they do;
- label_7 / label_19: float HxW, classes 0..C-1, -1 = ignore (``data.num_classes`` picks the
  folder); -1 becomes 255;
- depth: float HxWx1, inverse depth (disparity, rescaled), 0 = invalid; 0 becomes NaN.
The test split is ``val`` (there is no other labelled split); the validation split is carved from
train. Two tasks only: ``segment_semantic`` and ``depth_zbuffer``.
"""

from __future__ import annotations

import numpy as np
import torch

from adapmtl_cli.data.base import PairedDataset, read_npy
from adapmtl_cli.data.sources import data_source
from adapmtl_cli.errors import ConfigError, DataError

TASKS = data_source("cityscapes").tasks
LAYOUT = "<root>/{train,val}/{image,label_7 or label_19,depth}/<i>.npy"
# Images are checked to lie in [0, 1] up to this much (rounding of a resize), which still tells bytes.
IMAGE_SLACK = 0.05


class CityscapesMTAN(PairedDataset):
    def __init__(self, root, split: str, tasks, *, num_classes: int = 7, **options):
        lacking = [task for task in tasks if task not in TASKS]
        if lacking:
            raise ConfigError(f"tasks lists {lacking[0]!r}, which Cityscapes does not have; keep tasks within {list(TASKS)}")
        self.split = split  # "train" or "val" folders
        self.num_classes = num_classes
        self.label_folder = f"label_{num_classes}"
        self.folders = ["image"]
        if "segment_semantic" in tasks:
            self.folders.append(self.label_folder)
        if "depth_zbuffer" in tasks:
            self.folders.append("depth")
        super().__init__(root, tasks, **options)

    def index(self) -> list:
        if not self.root.is_dir():
            raise DataError(f"data.root {self.root} does not exist; point --data-root at the Cityscapes folder ({LAYOUT})")
        for folder in self.folders:
            if not (self.root / self.split / folder).is_dir():
                hint = ""
                if folder == self.label_folder and (self.root / self.split / "label").is_dir():
                    hint = " (a copy with one label/ folder, as LibMTL's, holds the 7 classes: rename it label_7/)"
                raise DataError(f"data.root {self.root}: missing {self.split}/{folder}/; expected the MTAN layout {LAYOUT}{hint}")
        names = sorted((self.root / self.split / "image").glob("*.npy"), key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.stem))
        if not names:
            raise DataError(f"data.root {self.root}: {self.split}/image/ holds no .npy files; expected {LAYOUT}")
        return [p.name for p in names]

    def _path(self, folder: str, name: str):
        return self.root / self.split / folder / name

    def load(self, name):
        image = torch.from_numpy(read_npy(self._path("image", name)).astype(np.float32)).permute(2, 0, 1)  # HxWx3 RGB
        targets = {}
        if "segment_semantic" in self.tasks:
            label = torch.from_numpy(read_npy(self._path(self.label_folder, name)).astype(np.int64))
            targets["segment_semantic"] = label.masked_fill(label < 0, 255)
        if "depth_zbuffer" in self.tasks:
            depth = read_npy(self._path("depth", name)).astype(np.float32)
            depth = torch.from_numpy(depth.reshape(depth.shape[:2]))[None]  # HxWx1 (or HxW) -> 1xHxW
            targets["depth_zbuffer"] = depth.masked_fill(depth <= 0, float("nan"))
        return image, targets

    def check(self, name) -> str | None:
        arrays = {}
        for folder in self.folders:
            where = f"{self.split}/{folder}/{name}"
            path = self._path(folder, name)
            if not path.is_file():
                return f"{where} is missing"
            try:
                arrays[folder] = read_npy(path)
            except (OSError, ValueError):
                return f"{where} is not a readable .npy"
            if arrays[folder].dtype.kind not in "fiu":
                return f"{where} holds {arrays[folder].dtype} values; expected float32"
        image = arrays["image"]
        where = f"{self.split}/image/{name}"
        if image.ndim != 3 or image.shape[-1] != 3:
            return f"{where} is {_show(image.shape)}; expected HxWx3 (RGB in [0, 1])"
        if not np.isfinite(image).all():
            return f"{where} holds non-finite values"
        if image.min() < -IMAGE_SLACK or image.max() > 1 + IMAGE_SLACK:
            return f"{where} holds values in {image.min():g}..{image.max():g}; expected RGB in [0, 1] (bytes: divide by 255)"
        size = image.shape[:2]
        label = arrays.get(self.label_folder)
        if label is not None:
            where = f"{self.split}/{self.label_folder}/{name}"
            if label.shape != size:
                return f"{where} is {_show(label.shape)} but the image is {_show(size)}"
            whole = np.isfinite(label) & (np.floor(label) == label)
            bad = label[~((label == -1) | (whole & (label >= 0) & (label < self.num_classes)))]
            if bad.size:
                return f"{where} holds label {bad[0]:g}, not a class 0..{self.num_classes - 1} or -1 (ignore)"
        depth = arrays.get("depth")
        if depth is not None:
            where = f"{self.split}/depth/{name}"
            if depth.shape not in (size, (*size, 1)):
                return f"{where} is {_show(depth.shape)} but the image is {_show(size)}; expected {_show(size)}x1"
            if not np.isfinite(depth).all():
                return f"{where} holds non-finite depth ({depth[~np.isfinite(depth)][0]}); mark invalid pixels 0"
            if (depth < 0).any():
                return f"{where} holds negative depth {depth[depth < 0][0]:g}; this layout marks invalid pixels 0"
        return None


def _show(shape) -> str:
    return "x".join(str(s) for s in shape)
