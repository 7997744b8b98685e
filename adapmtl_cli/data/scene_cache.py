"""Generated synthetic splits kept on disk (``data.cache_dir``), so a sweep generates them once.

A bench scene costs about 15 ms to ray-cast on one CPU core, as much as a training step of the small
benchmark model spends on a whole batch; the runs of a sweep share their scenes (``data.seed``), so
the first run writes each split and the others read it back in a second. A file is named by what
determines its items (the scene class, tasks, size, resolution, classes, seed, split) and by the
generator's source code, so a change to the generator never reads stale scenes. Items read back are
the generated tensors, bit for bit; labels are stored as uint8 (classes are at most 255).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

LABEL_TASK = "segment_semantic"


def source_digest(path: str) -> str:
    """A digest of a generator module's source, taken when the module is imported (a module-level
    ``SOURCE_DIGEST``), so that an edit made while a run is going never names the old scenes."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def _fingerprint(scenes) -> str:
    modules = [sys.modules[cls.__module__] for cls in type(scenes).__mro__]
    digests = [module.SOURCE_DIGEST for module in modules if hasattr(module, "SOURCE_DIGEST")]
    key = json.dumps({"class": type(scenes).__name__, "tasks": sorted(scenes.tasks), "size": scenes.size,
                      "resolution": scenes.resolution, "num_classes": scenes.num_classes, "seed": scenes.seed,
                      "split": scenes.split, "source": digests}, sort_keys=True)
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class CachedScenes(Dataset):
    """``scenes`` with every item generated once and kept in ``folder`` (and in memory)."""

    def __init__(self, scenes, folder: Path):
        self.tasks = list(scenes.tasks)
        self.size = len(scenes)
        self.path = Path(folder) / f"{type(scenes).__name__}-{scenes.split}-{_fingerprint(scenes)}.safetensors"
        self.tensors = self._read() or self._write(scenes)

    def _read(self) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        if not self.path.is_file():
            return None
        try:
            tensors = load_file(self.path)
        except Exception:  # a cache that cannot be read (truncated, foreign) is made again
            return None
        if set(tensors) != {"image", *self.tasks} or any(t.shape[0] != self.size for t in tensors.values()):
            return None
        return tensors

    def _write(self, scenes) -> dict[str, torch.Tensor]:
        from safetensors.torch import save_file

        items = [scenes[i] for i in range(self.size)]
        tensors = {"image": torch.stack([image for image, _ in items])}
        for task in self.tasks:
            stacked = torch.stack([targets[task] for _, targets in items])
            tensors[task] = stacked.to(torch.uint8) if task == LABEL_TASK else stacked
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        save_file({k: v.contiguous() for k, v in tensors.items()}, partial)
        os.replace(partial, self.path)  # two runs writing at once leave one whole, identical file
        return tensors

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int):
        if key < 0:
            raise IndexError(key)
        index = key % self.size  # a sampler's key is epoch * size + index (engine/sampling.py)
        targets = {task: self.tensors[task][index].clone() for task in self.tasks}
        if LABEL_TASK in targets:
            targets[LABEL_TASK] = targets[LABEL_TASK].long()
        return self.tensors["image"][index].clone(), targets
