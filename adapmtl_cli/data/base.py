"""What the on-disk datasets share: sample keys, augmentation, normalisation, and validation
before any training step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from adapmtl_cli.data import transforms
from adapmtl_cli.errors import DataError


class PairedDataset(Dataset):
    """Items are (image, targets) loaded by ``load(index)`` as (image float [3, H, W] before mean
    subtraction, targets), then augmented (train) or resized (test), then normalised."""

    mean: torch.Tensor = torch.zeros(3)
    scale: float = 1.0
    # The reference mirrors the normals' x on a flip for Taskonomy but not for NYUv2 (QUIRK).
    paper_mirrors_normals: bool = False

    def __init__(self, root: str | Path, tasks: list[str], *, mode: str = "standard", crop: int = 321,
                 augment: bool = False, seed: int = 0, indices: list[int] | None = None):
        self.root = Path(root)
        self.tasks = list(tasks)
        self.mode = mode
        self.crop = crop
        self.augment = augment
        self.seed = seed
        self.items = self.index()
        if indices is not None:
            self.items = [self.items[i] for i in indices]

    # -- to implement ---------------------------------------------------------------------------

    def index(self) -> list:
        raise NotImplementedError

    def load(self, item) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def check(self, item) -> str | None:
        """Why an item is bad (a one-line reason naming its file), or None."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int):
        index = key % len(self.items)
        image, targets = self.load(self.items[index])
        if self.augment:
            generator = transforms.sample_generator(self.seed, key)
            image, targets = transforms.train_transform(image, targets, self.crop, generator,
                                                        mirror_normals=self.mode == "standard" or self.paper_mirrors_normals)
        else:
            image, targets = transforms.test_transform(image, targets, self.crop, keep_aspect=self.mode == "standard")
        image = (image - self.mean.view(3, 1, 1)) / self.scale
        return image.contiguous(), {name: targets[name].contiguous() for name in self.tasks}

    def validate(self) -> None:
        """Check every item before any work: one DataError naming the first bad file and the
        count of bad items."""
        bad = [reason for reason in (self.check(item) for item in self.items) if reason]
        if bad:
            raise DataError(f"data.root {self.root}: {len(bad)} of {len(self.items)} items are bad; first: {bad[0]}")


def require_file(root: Path, relative: str) -> Path:
    path = root / relative
    if not path.is_file():
        raise DataError(f"data.root {root}: missing {relative}; check the dataset layout (README, Datasets)")
    return path


def png_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the PNG header alone, or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except (OSError, ValueError):
        return None


def npy_shape(path: Path) -> tuple[int, ...] | None:
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (OSError, ValueError):
        return None


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image)


def read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A validation split carved from train, deterministic from the seed."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7)).tolist()
    n_val = max(1, round(n * val_fraction))
    return sorted(order[n_val:]), sorted(order[:n_val])
