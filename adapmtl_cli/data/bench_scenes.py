"""The benchmark scenes (``data.scenes = "bench"``): synthetic scenes hard enough to tell methods apart.

The demo's scenes are nearly saturated after a few hundred steps (axis-aligned boxes, a level floor,
one albedo per class, fog that gives depth away), so a relative change of a 1-degree normal error
swings Delta_T by tens of points. These scenes keep the demo's exact, consistent ground truth (one
ray cast gives every label) and make each task need real inference:

- the camera is pitched and rolled, and the back wall is turned, so no surface has a fixed normal;
- objects are spheres, vertical cylinders (side and cap), boxes turned about the vertical, and
  slanted panels; several of them overlap, so occlusion is common;
- the class is the object's shape (and its size band when there are more than six classes), never
  its colour: every surface gets a random solid texture (stripes, checks or smooth blotches) of two
  random colours, so colour carries no class information;
- Lambertian and specular shading under a random light, a random exposure and gamma, and sensor
  noise; no fog, so brightness does not encode depth.

Labels: segment_semantic (0 floor, 1 wall, 2.. object classes), normal (unit, camera coordinates,
facing the camera), depth_zbuffer (z of the nearest surface), keypoints2d (visible object centres),
edge_texture (occlusion and class boundaries). Items are a pure function of (seed, split, index).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adapmtl_cli.data.scene_cache import source_digest
from adapmtl_cli.data.synthetic import FLOOR_Y, SyntheticScenes

SOURCE_DIGEST = source_digest(__file__)  # names the cached splits (data/scene_cache.py)

KINDS = ("sphere", "cylinder", "box", "panel")
PATTERNS = ("stripes", "checks", "blotches")


def _rotation(pitch: float, roll: float) -> torch.Tensor:
    """Camera-to-world rotation: roll about the optical axis, then pitch about x."""
    cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    rz = torch.tensor([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return rx @ rz


def _yaw(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _miss(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, math.inf)


def _facing(normal: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
    """The normal turned towards the camera (a ray sees the side it hits)."""
    sign = torch.where((normal * rays).sum(-1, keepdim=True) > 0, -1.0, 1.0)
    return normal * sign


def hit_plane(rays: torch.Tensor, point: torch.Tensor, normal: torch.Tensor):
    """An infinite plane through ``point`` with unit ``normal``; hits in front of the camera only."""
    denom = (rays * normal).sum(-1)
    t = (point * normal).sum() / torch.where(denom.abs() < 1e-9, torch.full_like(denom, 1e-9), denom)
    t = torch.where(t > 1e-6, t, _miss(t))
    return t, _facing(normal.expand_as(rays), rays)


def hit_sphere(rays: torch.Tensor, centre: torch.Tensor, radius: float):
    b = (rays * centre).sum(-1)
    disc = b * b - (centre * centre).sum() + radius * radius
    t = b - torch.sqrt(disc.clamp_min(0))
    t = torch.where((disc > 0) & (t > 1e-6), t, _miss(t))
    normal = F.normalize(rays * t.unsqueeze(-1).nan_to_num(0, posinf=0) - centre, dim=-1)
    return t, normal


def hit_cylinder(rays: torch.Tensor, centre: torch.Tensor, radius: float, height: float):
    """A vertical cylinder standing on the floor under ``centre`` (x, z); its top at y = FLOOR_Y - height."""
    top = FLOOR_Y - height
    dx, dy, dz = rays.unbind(-1)
    cx, cz = float(centre[0]), float(centre[2])
    a = (dx * dx + dz * dz).clamp_min(1e-12)
    b = dx * cx + dz * cz
    disc = b * b - a * (cx * cx + cz * cz - radius * radius)
    t_side = (b - torch.sqrt(disc.clamp_min(0))) / a
    y = t_side * dy
    t_side = torch.where((disc > 0) & (t_side > 1e-6) & (y >= top) & (y <= FLOOR_Y), t_side, _miss(t_side))
    t_cap = top / torch.where(dy.abs() < 1e-9, torch.full_like(dy, 1e-9), dy)
    in_cap = (t_cap * dx - cx) ** 2 + (t_cap * dz - cz) ** 2 <= radius * radius
    t_cap = torch.where(in_cap & (t_cap > 1e-6), t_cap, _miss(t_cap))
    side_normal = torch.stack([t_side * dx - cx, torch.zeros_like(dx), t_side * dz - cz], -1).nan_to_num(0, posinf=0)
    side_normal = F.normalize(side_normal, dim=-1)
    cap_normal = _facing(torch.tensor([0.0, 1.0, 0.0]).expand_as(rays), rays)
    use_cap = t_cap < t_side
    return torch.where(use_cap, t_cap, t_side), torch.where(use_cap.unsqueeze(-1), cap_normal, side_normal)


def hit_box(rays: torch.Tensor, centre: torch.Tensor, half: torch.Tensor, yaw: torch.Tensor):
    """A box with half extents ``half``, turned about the vertical by the rotation ``yaw``."""
    local_rays = rays @ yaw          # rows: yaw^T applied to each ray
    local_centre = yaw.T @ centre
    inv = 1.0 / torch.where(local_rays.abs() < 1e-9, torch.full_like(local_rays, 1e-9), local_rays)
    t1 = (local_centre - half) * inv
    t2 = (local_centre + half) * inv
    entry, axis = torch.minimum(t1, t2).max(-1)
    exit_ = torch.maximum(t1, t2).min(-1).values
    t = torch.where((entry <= exit_) & (entry > 1e-6), entry, _miss(entry))
    local_normal = F.one_hot(axis, 3).float() * -torch.sign(local_rays.gather(-1, axis.unsqueeze(-1)))
    return t, local_normal @ yaw.T


def hit_panel(rays: torch.Tensor, centre: torch.Tensor, normal: torch.Tensor, half_u: float, half_v: float):
    """A flat rectangle: a slanted board, seen from either side."""
    u = F.normalize(torch.linalg.cross(normal, torch.tensor([0.0, 1.0, 0.0])), dim=0)
    v = torch.linalg.cross(normal, u)
    t, n = hit_plane(rays, centre, normal)
    local = rays * t.unsqueeze(-1).nan_to_num(0, posinf=0) - centre
    inside = ((local @ u).abs() <= half_u) & ((local @ v).abs() <= half_v)
    return torch.where(inside, t, _miss(t)), n


class BenchScenes(SyntheticScenes):
    """Harder scenes of the same kind and with the same targets as :class:`SyntheticScenes`."""

    def _objects(self, g: torch.Generator) -> list[dict]:
        object_classes = list(range(2, self.num_classes)) or [0, 1]
        bands = max(1, math.ceil(len(object_classes) / len(KINDS)))
        objects = []
        for _ in range(int(torch.randint(3, 9, (1,), generator=g))):
            label = object_classes[int(torch.randint(len(object_classes), (1,), generator=g))]
            kind = KINDS[(label - 2) % len(KINDS)] if label >= 2 else KINDS[label]
            band = (label - 2) // len(KINDS) if label >= 2 else 0
            u = torch.rand(8, generator=g)
            size = (0.3 + 0.5 * float(u[0])) * (1 + band) / bands + 0.15
            z = 2.5 + 5.0 * float(u[1])
            x = (float(u[2]) - 0.5) * 0.9 * z
            obj = {"kind": kind, "label": label, "size": size, "texture": self._texture(g)}
            if kind == "sphere":
                obj["centre"] = torch.tensor([x, FLOOR_Y - size * (0.6 + 0.8 * float(u[3])), z])
            elif kind == "cylinder":
                obj["height"] = size * (1.0 + 2.0 * float(u[3]))
                obj["centre"] = torch.tensor([x, FLOOR_Y - obj["height"] / 2, z])
            elif kind == "box":
                obj["half"] = size * (0.6 + 0.8 * torch.rand(3, generator=g))
                obj["yaw"] = _yaw(float(u[4]) * math.pi)
                obj["centre"] = torch.tensor([x, FLOOR_Y - float(obj["half"][1]), z])
            else:  # a board leaning at a random angle
                normal = torch.tensor([0.0, 0.0, -1.0]) @ _rotation(0.9 * (float(u[4]) - 0.5) * 2, 0.0).T
                obj["normal"] = F.normalize(normal @ _yaw(1.2 * (float(u[5]) - 0.5) * 2).T, dim=0)
                obj["half_uv"] = (size * (0.8 + 0.8 * float(u[6])), size * (0.8 + 0.8 * float(u[7])))
                obj["centre"] = torch.tensor([x, FLOOR_Y - obj["half_uv"][1] * 0.9, z])
            objects.append(obj)
        return objects

    @staticmethod
    def _texture(g: torch.Generator) -> dict:
        """Two random colours mixed by a random solid pattern: colour says nothing about the class."""
        u = torch.rand(3, generator=g)
        return {"pattern": PATTERNS[int(u[0] * len(PATTERNS))], "colours": 0.15 + 0.8 * torch.rand(2, 3, generator=g),
                "direction": F.normalize(torch.randn(3, generator=g), dim=0), "frequency": 1.5 + 5.0 * float(u[1]),
                "phases": 2 * math.pi * torch.rand(3, generator=g), "directions": F.normalize(torch.randn(3, 3, generator=g), dim=1)}

    @staticmethod
    def _pattern(texture: dict, points: torch.Tensor) -> torch.Tensor:
        """The mixing weight in [0, 1] of the texture's second colour at world ``points``."""
        f = texture["frequency"]
        if texture["pattern"] == "stripes":
            return 0.5 + 0.5 * torch.sin(f * (points @ texture["direction"]) + texture["phases"][0])
        if texture["pattern"] == "checks":
            cells = torch.floor(points * (f / 3.0)).sum(-1)
            return (cells % 2).float()
        waves = torch.sin(f * 0.5 * (points @ texture["directions"].T) + texture["phases"])
        return (0.5 + waves.sum(-1) / 3.0).clamp(0, 1)

    def _render(self, g: torch.Generator):
        u = torch.rand(4, generator=g)
        rotation = _rotation(math.radians(-14 + 22 * float(u[0])), math.radians(-10 + 20 * float(u[1])))
        rays = self.rays @ rotation.T                                     # world directions
        wall_normal = torch.tensor([0.0, 0.0, -1.0]) @ _yaw(math.radians(-30 + 60 * float(u[2]))).T
        wall_point = torch.tensor([0.0, 0.0, 7.5 + 4.0 * float(u[3])])
        hits = [hit_plane(rays, torch.tensor([0.0, FLOOR_Y, 0.0]), torch.tensor([0.0, -1.0, 0.0])),
                hit_plane(rays, wall_point, wall_normal)]
        labels = [0, 1 % self.num_classes]
        textures = [self._texture(g), self._texture(g)]
        objects = self._objects(g)
        for obj in objects:
            if obj["kind"] == "sphere":
                hits.append(hit_sphere(rays, obj["centre"], obj["size"]))
            elif obj["kind"] == "cylinder":
                hits.append(hit_cylinder(rays, obj["centre"], obj["size"], obj["height"]))
            elif obj["kind"] == "box":
                hits.append(hit_box(rays, obj["centre"], obj["half"], obj["yaw"]))
            else:
                hits.append(hit_panel(rays, obj["centre"], obj["normal"], *obj["half_uv"]))
            labels.append(obj["label"])
            textures.append(obj["texture"])
        t_all = torch.stack([t for t, _ in hits])
        h, w = t_all.shape[1:]
        # The wall is turned by at most 30 degrees and the rays stay within 50 degrees of the axis,
        # so every ray meets the wall in front of the camera: depth is finite everywhere.
        nearest = t_all.argmin(0)
        t = t_all.gather(0, nearest.unsqueeze(0))[0]
        world_normals = torch.stack([n.expand(h, w, 3) for _, n in hits]).gather(0, nearest[None, ..., None].expand(1, h, w, 3))[0]
        world_normals = _facing(world_normals, rays)
        normals = world_normals @ rotation                                 # back to camera coordinates
        depth = t * self.rays[..., 2]
        seg = torch.tensor(labels)[nearest]
        points = rays * t.unsqueeze(-1)
        albedo = torch.zeros(h, w, 3)
        for k, texture in enumerate(textures):
            mask = nearest == k
            if mask.any():
                mix = self._pattern(texture, points[mask]).unsqueeze(-1)
                albedo[mask] = texture["colours"][0] * (1 - mix) + texture["colours"][1] * mix
        for obj in objects:  # keypoints2d projects the centres in camera coordinates
            obj["centre"] = rotation.T @ obj["centre"]
        return objects, nearest, depth, normals, seg, (world_normals, rays, albedo)

    def _image(self, g, world_normals, rays, albedo) -> torch.Tensor:
        # The direction the light travels: down (+y) and away from the camera (+z), from either side.
        light = F.normalize(torch.tensor([2 * float(torch.rand(1, generator=g)) - 1, 1.0 + float(torch.rand(1, generator=g)),
                                          0.2 + float(torch.rand(1, generator=g))]), dim=0)
        lambert = (world_normals * -light).sum(-1).clamp_min(0)
        reflected = -light - 2 * (world_normals * -light).sum(-1, keepdim=True) * world_normals
        specular = (reflected * -rays).sum(-1).clamp_min(0) ** 20
        u = torch.rand(3, generator=g)
        ambient, exposure, gamma = 0.15 + 0.2 * float(u[0]), 0.7 + 0.6 * float(u[1]), 0.8 + 0.4 * float(u[2])
        rgb = exposure * (albedo * (ambient + (1 - ambient) * lambert).unsqueeze(-1) + 0.3 * specular.unsqueeze(-1))
        rgb = rgb.clamp(0, 1) ** gamma + 0.05 * torch.randn(rgb.shape, generator=g)
        # Roughly zero mean, unit spread over the dataset (measured: mean 0.34, sd 0.20).
        return ((rgb.clamp(0, 1) - 0.34) / 0.20).permute(2, 0, 1).contiguous()
