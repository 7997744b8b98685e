"""NYUv2 in the two layouts users have (REFERENCE.md 5).

AdaShare layout (40 classes), ``<root>/nyu_v2_3task.json``:
``{"train": [[img, seg, normal, depth], ...], "test": [...]}`` with paths relative to the root.
- img: 8-bit colour PNG, used in BGR order, minus the BGR mean, no scaling;
- seg: 8-bit grey, classes 0..39, 255 = ignore;
- normal: 8-bit 3-channel PNG in BGR order as OpenCV reads it; a pixel is invalid if any channel
  is 255. Paper mode keeps the raw 0..254 values (QUIRK); standard mode decodes b / 255 * 2 - 1
  and normalises, channels kept in that (BGR) order - x is channel 0 as the flip assumes;
- depth: float ``.npy`` in metres, valid where > 3e-5.

MTAN layout (13 classes): ``<root>/{train,val}/{image,label,depth,normal}/<i>.npy`` (288 x 384),
label -1 = ignore, depth 0 = invalid, normals already in [-1, 1] (all-zero = invalid).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from adapmtl_cli.data.base import PairedDataset, npy_shape, png_size, read_npy, read_png, require_file
from adapmtl_cli.data.sources import data_source
from adapmtl_cli.errors import DataError

BGR_MEAN = torch.tensor([104.00698793, 116.66876762, 122.67891434])
NYU_CLASSES = data_source("nyuv2").classes
MTAN_CLASSES = data_source("nyuv2-mtan").classes


class NYUv2AdaShare(PairedDataset):
    mean = BGR_MEAN
    index_file = "nyu_v2_3task.json"

    def __init__(self, root, split: str, tasks, **options):
        self.split = split
        super().__init__(root, tasks, **options)

    def index(self) -> list:
        if not self.root.is_dir():
            raise DataError(f"data.root {self.root} does not exist; point --data-root at the NYUv2 folder")
        path = require_file(self.root, self.index_file)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            entries = document[self.split]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}: not an index with a {self.split!r} list of [img, seg, normal, depth]") from None
        if not entries or any(not isinstance(e, list) or len(e) != 4 for e in entries):
            raise DataError(f"{path}: the {self.split!r} list must hold [img, seg, normal, depth] entries")
        return entries

    def load(self, item):
        img, seg, normal, depth = (self.root / p for p in item)
        image = torch.from_numpy(read_png(img)[..., :3][..., ::-1].copy()).permute(2, 0, 1).float()  # RGB -> BGR
        targets = {}
        if "segment_semantic" in self.tasks:
            targets["segment_semantic"] = torch.from_numpy(read_png(seg).astype(np.int64))
        if "normal" in self.tasks:
            raw = torch.from_numpy(read_png(normal)[..., :3][..., ::-1].copy()).permute(2, 0, 1).float()  # as OpenCV reads
            invalid = (raw == 255).any(0)
            values = raw if self.mode == "paper" else torch.nn.functional.normalize(raw / 255 * 2 - 1, dim=0)
            targets["normal"] = values.masked_fill(invalid, float("nan"))
        if "depth_zbuffer" in self.tasks:
            d = torch.from_numpy(read_npy(depth).astype(np.float32))
            targets["depth_zbuffer"] = d.masked_fill(d <= 3e-5, float("nan"))[None]
        return image, targets

    def check(self, item) -> str | None:
        img, seg, normal, depth = item
        for relative in item:
            if not (self.root / relative).is_file():
                return f"{relative} is missing"
        size = png_size(self.root / img)
        if size is None:
            return f"{img} is not a readable PNG"
        for relative, shape in ((seg, png_size(self.root / seg)), (normal, png_size(self.root / normal)),
                                (depth, (npy_shape(self.root / depth) or (None,))[-2:])):
            if shape is None or tuple(shape) != size:
                return f"{relative} is {_show(shape)} but {img} is {size[0]}x{size[1]}"
        labels = read_png(self.root / seg)
        out_of_range = labels[(labels >= NYU_CLASSES) & (labels != 255)]
        if out_of_range.size:
            return f"{seg} holds label {int(out_of_range[0])}, outside 0..{NYU_CLASSES - 1} and not 255 (ignore)"
        return None


class NYUv2MTAN(PairedDataset):
    def __init__(self, root, split: str, tasks, **options):
        self.split = split  # "train" or "val" folders
        super().__init__(root, tasks, **options)

    def index(self) -> list:
        folder = self.root / self.split / "image"
        if not folder.is_dir():
            raise DataError(f"data.root {self.root}: missing {self.split}/image/; expected the MTAN layout "
                            "<root>/{train,val}/{image,label,depth,normal}/<i>.npy")
        names = sorted(folder.glob("*.npy"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
        if not names:
            raise DataError(f"data.root {self.root}: {self.split}/image/ holds no .npy files")
        return [p.name for p in names]

    def _path(self, kind: str, name: str):
        return self.root / self.split / kind / name

    def load(self, name):
        image = torch.from_numpy(read_npy(self._path("image", name)).astype(np.float32))
        if image.shape[-1] == 3 and image.shape[0] != 3:  # stored HWC
            image = image.permute(2, 0, 1)
        targets = {}
        if "segment_semantic" in self.tasks:
            label = torch.from_numpy(read_npy(self._path("label", name))).long()
            targets["segment_semantic"] = label.masked_fill(label < 0, 255)
        if "depth_zbuffer" in self.tasks:
            depth = torch.from_numpy(read_npy(self._path("depth", name)).astype(np.float32))
            depth = depth[None] if depth.dim() == 2 else (depth.permute(2, 0, 1) if depth.shape[-1] == 1 else depth)
            targets["depth_zbuffer"] = depth.masked_fill(depth <= 0, float("nan"))
        if "normal" in self.tasks:
            normal = torch.from_numpy(read_npy(self._path("normal", name)).astype(np.float32))
            normal = normal.permute(2, 0, 1) if normal.shape[-1] == 3 and normal.shape[0] != 3 else normal
            targets["normal"] = normal.masked_fill((normal == 0).all(0), float("nan"))
        return image, targets

    def check(self, name) -> str | None:
        shapes = {}
        for kind in ("image", "label", "depth", "normal"):
            path = self._path(kind, name)
            if not path.is_file():
                return f"{self.split}/{kind}/{name} is missing"
            shapes[kind] = npy_shape(path)
            if shapes[kind] is None:
                return f"{self.split}/{kind}/{name} is not a readable .npy"
        image = shapes["image"]
        size = image[:2] if image[-1] == 3 and image[0] != 3 else image[-2:]
        label = shapes["label"][-2:]
        if tuple(label) != tuple(size):
            return f"{self.split}/label/{name} is {_show(label)} but the image is {size[0]}x{size[1]}"
        labels = read_npy(self._path("label", name))
        bad = labels[(labels >= MTAN_CLASSES) | (labels < -1)]
        if bad.size:
            return f"{self.split}/label/{name} holds label {int(bad[0])}, outside 0..{MTAN_CLASSES - 1} and not -1 (ignore)"
        return None


def _show(shape) -> str:
    return "unreadable" if shape is None or None in tuple(shape) else "x".join(str(s) for s in shape)
