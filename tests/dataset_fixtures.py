"""Writers of tiny datasets in the real on-disk layouts, with known pixel values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_nyuv2_adashare(root: Path, n_train: int = 4, n_test: int = 2, h: int = 16, w: int = 24) -> Path:
    """Images whose pixel (0, 0) is RGB (10, 20, 30); seg classes 0..39 with 255 at (0, 1);
    normals invalid (255) at (1, 0); depth invalid (0) at (1, 1)."""
    rng = _rng()
    for folder in ("img", "seg", "normal_mask", "depth"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    index = {"train": [], "test": []}
    for i in range(n_train + n_test):
        name = f"{i:04d}"
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[0, 0] = (10, 20, 30)
        seg = rng.integers(0, 40, (h, w), dtype=np.uint8)
        seg[0, 1] = 255
        normal = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        normal[0, 0] = (127, 200, 50)
        normal[1, 0] = (255, 10, 10)
        depth = rng.uniform(0.5, 5.0, (h, w)).astype(np.float32)
        depth[1, 1] = 0.0
        Image.fromarray(img).save(root / "img" / f"{name}.png")
        Image.fromarray(seg).save(root / "seg" / f"{name}.png")
        Image.fromarray(normal).save(root / "normal_mask" / f"{name}.png")
        np.save(root / "depth" / f"{name}.npy", depth)
        entry = [f"img/{name}.png", f"seg/{name}.png", f"normal_mask/{name}.png", f"depth/{name}.npy"]
        index["train" if i < n_train else "test"].append(entry)
    (root / "nyu_v2_3task.json").write_text(json.dumps(index))
    return root


def write_nyuv2_mtan(root: Path, n_train: int = 4, n_val: int = 2, h: int = 12, w: int = 16) -> Path:
    """Label -1 at (0, 0); depth 0 at (0, 1); a zero normal at (1, 0)."""
    rng = _rng(1)
    for split, count in (("train", n_train), ("val", n_val)):
        for kind in ("image", "label", "depth", "normal"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
            label = rng.integers(0, 13, (h, w)).astype(np.float32)
            label[0, 0] = -1
            depth = rng.uniform(0.5, 5, (h, w, 1)).astype(np.float32)
            depth[0, 1] = 0
            normal = rng.normal(size=(h, w, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            normal[1, 0] = 0
            for kind, array in (("image", image), ("label", label), ("depth", depth), ("normal", normal)):
                np.save(root / split / kind / f"{i}.npy", array)
    return root


def write_taskonomy(root: Path, n_train: int = 3, n_test: int = 2, size: int = 256) -> Path:
    """seg 0 at (0, 0) and 5 at (0, 1); depth 1000 at (0, 0) and 65000 (invalid) at (0, 1);
    keypoints 131 (0.002 of 65535) at (0, 0); edges 6553 (about 0.1) at (0, 0)."""
    rng = _rng(2)
    prior = np.linspace(0.5, 2.0, 17).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "semseg_prior_factor.npy", prior)
    index = {"train": [], "test": []}
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        folder = root / split
        folder.mkdir(exist_ok=True)
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        seg = rng.integers(0, 18, (size, size), dtype=np.uint8)
        seg[0, 0], seg[0, 1] = 0, 5
        normal = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        depth = rng.integers(0, 60000, (size, size)).astype(np.uint16)
        depth[0, 0], depth[0, 1] = 1000, 65000
        keypoints = rng.integers(0, 400, (size, size)).astype(np.uint16)
        keypoints[0, 0] = 131
        edges = rng.integers(0, 8000, (size, size)).astype(np.uint16)
        edges[0, 0] = 6553
        files = []
        for kind, array in (("rgb", img), ("seg", seg), ("normal", normal), ("depth", depth), ("keypoints", keypoints), ("edge", edges)):
            name = f"{i}_{kind}.png"
            Image.fromarray(array).save(folder / name)
            files.append(name)
        index[split].append(files)
    (root / "taskonomy.json").write_text(json.dumps(index))
    return root


def write_cityscapes(root: Path, n_train: int = 4, n_val: int = 2, h: int = 16, w: int = 32, stripes: bool = False) -> Path:
    """The MTAN/LibMTL Cityscapes layout, ``{train,val}/{image,label_7,label_19,depth}/<i>.npy``:
    image float32 HxWx3 in [0, 1] with RGB (0.1, 0.2, 0.3) at (0, 0); labels float32 HxW with -1
    (ignore) at (0, 0) and the top class (6, 18) at (0, 2); depth float32 HxWx1 in [0.01, 0.3]
    with 0 (invalid) at (0, 1).

    ``stripes``: instead, vertical stripes 16 pixels wide, class k = column // 16 (k <= 6) in both
    label sets, image (k, k, k) / 10 and depth (k + 1) / 10, so that image and labels can be
    compared after any augmentation; the stripes rise from left to right, which tells a flip."""
    rng = _rng(3)
    for split, count in (("train", n_train), ("val", n_val)):
        for kind in ("image", "label_7", "label_19", "depth"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            if stripes:
                k = np.broadcast_to(np.minimum(np.arange(w) // 16, 6), (h, w)).astype(np.float32)
                image = np.repeat(k[..., None] / 10, 3, axis=-1).astype(np.float32)
                label_7 = label_19 = k
                depth = ((k + 1) / 10)[..., None].astype(np.float32)
            else:
                image = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
                image[0, 0] = (0.1, 0.2, 0.3)
                label_7 = rng.integers(0, 7, (h, w)).astype(np.float32)
                label_19 = rng.integers(0, 19, (h, w)).astype(np.float32)
                label_7[0, 0] = label_19[0, 0] = -1
                label_7[0, 2], label_19[0, 2] = 6, 18
                depth = rng.uniform(0.01, 0.3, (h, w, 1)).astype(np.float32)
                depth[0, 1] = 0
            for kind, array in (("image", image), ("label_7", label_7), ("label_19", label_19), ("depth", depth)):
                np.save(root / split / kind / f"{i}.npy", array)
    return root
