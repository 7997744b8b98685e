"""Procedurally generated multitask scenes: the tool's built-in data, with nothing to download.

Each item is a small 3-D scene ray-cast on the pixel grid: a floor plane, a back wall, and a few
spheres and boxes. Every label comes from the same geometry, so the tasks agree with each other:

- depth_zbuffer: z of the nearest surface along each pixel's ray (the z-buffer);
- normal: the analytic normal of that surface in camera coordinates (x right, y down, z forward),
  consistent with the depth map;
- segment_semantic: floor, wall, and one class per object kind (shape and colour family);
- keypoints2d: Gaussian blobs at the visible objects' projected centres;
- edge_texture: occlusion and class boundaries.

The image is Lambertian shading of per-class albedos (with per-object variation, a floor texture and
noise) under a random light, so every task is learnable from it but not trivially. Items are
generated on the fly and are a pure function of (seed, split, index).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adapmtl_cli.data.scene_cache import source_digest
from adapmtl_cli.data.sources import data_source
from adapmtl_cli.errors import ConfigError

SOURCE_DIGEST = source_digest(__file__)  # names the cached splits (data/scene_cache.py)
SUPPORTED_TASKS = data_source("synthetic").tasks
FLOOR_Y = 1.0        # the floor plane y = 1 (y points down, the camera at the origin)
WALL_Z = 9.0         # the back wall z = 9
FOCAL = 1.1          # focal length in units of the image width


def _item_seed(seed: int, split: str, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _class_palette(num_classes: int) -> torch.Tensor:
    """A well-separated base colour per class (hues around the colour wheel)."""
    hues = torch.arange(num_classes, dtype=torch.float32) * (0.618034 * 2 * math.pi)
    base = torch.stack([torch.cos(hues), torch.cos(hues - 2.094), torch.cos(hues + 2.094)], dim=1)
    return 0.55 + 0.35 * base


class SyntheticScenes(Dataset):
    def __init__(self, tasks: list[str], size: int, resolution: int = 64, num_classes: int = 6, seed: int = 0, split: str = "train"):
        unknown = [t for t in tasks if t not in SUPPORTED_TASKS]
        if unknown:
            raise ConfigError(f"the synthetic data has no task {unknown[0]!r}; it offers {', '.join(SUPPORTED_TASKS)}")
        if num_classes < 2:
            raise ConfigError("data.num_classes must be at least 2 for the synthetic data")
        self.tasks = list(tasks)
        self.size = size
        self.resolution = resolution
        self.num_classes = num_classes
        self.seed = seed
        self.split = split
        self.palette = _class_palette(num_classes)
        self.rays = self._rays(resolution)

    def __len__(self) -> int:
        return self.size

    @staticmethod
    def _rays(resolution: int) -> torch.Tensor:
        """Unit ray directions of the pixel centres, [H, W, 3]."""
        coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution - 0.5
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        directions = torch.stack([x / FOCAL, y / FOCAL, torch.ones_like(x)], dim=-1)
        return F.normalize(directions, dim=-1)

    # -- the scene ---------------------------------------------------------------------------

    def _objects(self, g: torch.Generator) -> list[dict]:
        objects = []
        count = int(torch.randint(2, 8, (1,), generator=g))
        object_classes = list(range(2, self.num_classes)) or [0, 1]
        for _ in range(count):
            u = torch.rand(6, generator=g)
            kind = "sphere" if u[0] < 0.5 else "box"
            size = 0.35 + 0.5 * float(u[1])
            z = 3.0 + 4.5 * float(u[2])
            x = (float(u[3]) - 0.5) * 0.8 * z
            label = object_classes[int(torch.randint(len(object_classes), (1,), generator=g))]
            centre = torch.tensor([x, FLOOR_Y - size, z])  # resting on the floor
            objects.append({"kind": kind, "centre": centre, "size": size, "label": label,
                            "tint": 0.8 + 0.4 * torch.rand(3, generator=g)})
        return objects

    @staticmethod
    def _hit_sphere(rays: torch.Tensor, centre: torch.Tensor, radius: float):
        b = (rays * centre).sum(-1)
        disc = b * b - (centre * centre).sum() + radius * radius
        t = b - torch.sqrt(disc.clamp_min(0))
        t = torch.where((disc > 0) & (t > 0), t, torch.full_like(t, math.inf))
        normal = F.normalize(rays * t.unsqueeze(-1).nan_to_num(0, posinf=0) - centre, dim=-1)
        return t, normal

    @staticmethod
    def _hit_box(rays: torch.Tensor, centre: torch.Tensor, half: float):
        """Slab test of an axis-aligned cube; the normal is the axis of the entry face."""
        inv = 1.0 / torch.where(rays.abs() < 1e-9, torch.full_like(rays, 1e-9), rays)
        t1 = (centre - half) * inv
        t2 = (centre + half) * inv
        t_near = torch.minimum(t1, t2)
        t_far = torch.maximum(t1, t2)
        entry, axis = t_near.max(-1)
        exit_ = t_far.min(-1).values
        hit = (entry <= exit_) & (entry > 0)
        t = torch.where(hit, entry, torch.full_like(entry, math.inf))
        normal = F.one_hot(axis, 3).float() * -torch.sign(rays.gather(-1, axis.unsqueeze(-1)))
        return t, normal

    def _render(self, g: torch.Generator):
        rays = self.rays
        h, w, _ = rays.shape
        # Floor (y = FLOOR_Y, normal up = -y) and back wall (z = WALL_Z, normal -z).
        t_floor = torch.where(rays[..., 1] > 1e-6, FLOOR_Y / rays[..., 1].clamp_min(1e-6), torch.full((h, w), math.inf))
        t_wall = WALL_Z / rays[..., 2]
        candidates_t = [t_floor, t_wall]
        candidates_n = [torch.tensor([0.0, -1.0, 0.0]).expand(h, w, 3), torch.tensor([0.0, 0.0, -1.0]).expand(h, w, 3)]
        labels = [0, 1 % self.num_classes]
        tints = [torch.ones(3), torch.ones(3)]
        objects = self._objects(g)
        for obj in objects:
            hit = self._hit_sphere if obj["kind"] == "sphere" else self._hit_box
            t, n = hit(rays, obj["centre"], obj["size"])
            candidates_t.append(t)
            candidates_n.append(n)
            labels.append(obj["label"])
            tints.append(obj["tint"])
        t_all = torch.stack(candidates_t)                      # [K, H, W]
        nearest = t_all.argmin(0)                               # the z-buffer
        t = t_all.gather(0, nearest.unsqueeze(0))[0]
        normals = torch.stack(candidates_n).gather(0, nearest[None, ..., None].expand(1, h, w, 3))[0]
        depth = t * rays[..., 2]
        seg = torch.tensor(labels)[nearest]
        points = rays * (depth / rays[..., 2]).unsqueeze(-1)
        # What the image needs besides the generator: _image(g, *look).
        look = (depth, normals, seg, torch.stack(tints)[nearest], points)
        return objects, nearest, depth, normals, seg, look

    def _image(self, g, depth, normals, seg, tint, points) -> torch.Tensor:
        light = F.normalize(torch.tensor([float(torch.rand(1, generator=g)) - 0.5, -1.0, -0.6 - float(torch.rand(1, generator=g))]), dim=0)
        shade = 0.35 + 0.65 * (normals * -light).sum(-1).clamp_min(0)
        albedo = self.palette[seg] * tint
        # A checkerboard on the floor: texture that is not a class boundary.
        checker = ((points[..., 0].floor() + points[..., 2].floor()) % 2) * 0.25 + 0.75
        albedo = torch.where((seg == 0).unsqueeze(-1), albedo * checker.unsqueeze(-1), albedo)
        fog = torch.exp(-depth / 25.0).unsqueeze(-1)
        rgb = albedo * shade.unsqueeze(-1) * fog + 0.06 * torch.randn(depth.shape + (3,), generator=g)
        # Roughly zero mean, unit spread over the dataset (measured: mean 0.15, sd 0.08).
        return ((rgb.clamp(0, 1) - 0.15) / 0.08).permute(2, 0, 1).contiguous()

    def _keypoints(self, objects, visible_ids) -> torch.Tensor:
        res = self.resolution
        coords = torch.arange(res, dtype=torch.float32) + 0.5
        heat = torch.zeros(res, res)
        sigma = max(1.0, res / 40)
        for k, obj in enumerate(objects):
            if (k + 2) not in visible_ids:
                continue
            c = obj["centre"]
            u = (c[0] / c[2] * FOCAL + 0.5) * res
            v = (c[1] / c[2] * FOCAL + 0.5) * res
            blob = torch.exp(-((coords[None, :] - u) ** 2 + (coords[:, None] - v) ** 2) / (2 * sigma * sigma))
            heat = torch.maximum(heat, blob)
        return heat.unsqueeze(0)

    @staticmethod
    def _edges(nearest: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        boundary = torch.zeros_like(seg, dtype=torch.float32)
        for a in (nearest, seg):
            boundary[:, 1:] = torch.maximum(boundary[:, 1:], (a[:, 1:] != a[:, :-1]).float())
            boundary[1:, :] = torch.maximum(boundary[1:, :], (a[1:, :] != a[:-1, :]).float())
        kernel = torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]) / 4.0
        smooth = F.conv2d(boundary[None, None], kernel[None, None], padding=1)[0]
        return smooth[0].clamp(0, 1)

    def __getitem__(self, key: int):
        if key < 0:
            raise IndexError(key)
        index = key % self.size  # a sampler's key is epoch * size + index (engine/sampling.py)
        g = torch.Generator().manual_seed(_item_seed(self.seed, self.split, index))
        objects, nearest, depth, normals, seg, look = self._render(g)
        image = self._image(g, *look)
        targets = {}
        if "segment_semantic" in self.tasks:
            targets["segment_semantic"] = seg.long()
        if "normal" in self.tasks:
            targets["normal"] = normals.permute(2, 0, 1).contiguous().float()
        if "depth_zbuffer" in self.tasks:
            targets["depth_zbuffer"] = depth.unsqueeze(0).float()
        if "keypoints2d" in self.tasks:
            targets["keypoints2d"] = self._keypoints(objects, set(nearest.unique().tolist()))
        if "edge_texture" in self.tasks:
            targets["edge_texture"] = self._edges(nearest, seg).unsqueeze(0)
        return image, targets


def build_synthetic_datasets(config):
    """The train / val / test scenes of ``config`` (``data.source = "synthetic"``)."""
    from adapmtl_cli.data import DataBundle

    data = config.data
    if data.scenes == "bench":
        from adapmtl_cli.data.bench_scenes import BenchScenes as scenes_class
    else:
        scenes_class = SyntheticScenes
    seed = config.seed if data.seed is None else data.seed

    def split(name: str, size: int) -> Dataset:
        scenes = scenes_class(config.tasks, size=size, resolution=data.resolution, num_classes=data.num_classes, seed=seed, split=name)
        if not data.cache_dir:
            return scenes
        from adapmtl_cli.data.scene_cache import CachedScenes

        return CachedScenes(scenes, Path(data.cache_dir))

    return DataBundle(train=split("train", data.train_size), val=split("val", data.val_size), test=split("test", data.test_size))
