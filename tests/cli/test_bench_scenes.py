"""The benchmark scenes (data.scenes = "bench"), the split cache (data.cache_dir) and data.seed."""

import math

import pytest
import torch
import torch.nn.functional as F

from adapmtl_cli.config import load_config
from adapmtl_cli.data.bench_scenes import BenchScenes, hit_cylinder, hit_panel
from adapmtl_cli.data.scene_cache import CachedScenes
from adapmtl_cli.data.synthetic import FOCAL, SyntheticScenes, build_synthetic_datasets

ALL = ["segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture"]


def test_shapes_ranges_and_determinism():
    data = BenchScenes(ALL, size=6, resolution=40, num_classes=9, seed=2)
    image, targets = data[1]
    assert image.shape == (3, 40, 40) and targets["segment_semantic"].dtype == torch.int64
    assert torch.isfinite(image).all() and all(torch.isfinite(t.float()).all() for t in targets.values())
    assert (targets["depth_zbuffer"] > 0).all()
    assert torch.allclose(targets["normal"].norm(dim=0), torch.ones(40, 40), atol=1e-5)
    again = BenchScenes(ALL, size=6, resolution=40, num_classes=9, seed=2)[1]
    assert torch.equal(image, again[0]) and all(torch.equal(targets[k], again[1][k]) for k in ALL)
    assert not torch.equal(image, BenchScenes(ALL, size=6, resolution=40, num_classes=9, seed=3)[1][0])


@pytest.mark.parametrize("num_classes", [6, 9])
def test_every_class_appears(num_classes):
    data = BenchScenes(["segment_semantic"], size=60, resolution=32, num_classes=num_classes)
    seen = set()
    for i in range(len(data)):
        seen |= set(data[i][1]["segment_semantic"].unique().tolist())
    assert seen == set(range(num_classes))


def test_normals_face_the_camera_and_agree_with_the_depth_map():
    """Normals recomputed from the depth map (back-projected through the pinhole x = u / f * z)
    match the given ones on pixels away from boundaries, and every normal faces the camera."""
    res = 96
    data = BenchScenes(["normal", "depth_zbuffer", "segment_semantic"], size=6, resolution=res)
    coords = ((torch.arange(res, dtype=torch.float64) + 0.5) / res - 0.5) / FOCAL
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    rays = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    errors = []
    for i in range(len(data)):
        _, t = data[i]
        given = t["normal"].double().permute(1, 2, 0)
        assert ((given * rays).sum(-1) < 1e-6).all()  # facing the camera: n . ray <= 0
        points = rays * t["depth_zbuffer"][0].double().unsqueeze(-1)
        du = points[1:-1, 2:] - points[1:-1, :-2]
        dv = points[2:, 1:-1] - points[:-2, 1:-1]
        normal = F.normalize(torch.cross(du, dv, dim=-1), dim=-1)
        inner = given[1:-1, 1:-1]
        normal = normal * torch.sign((normal * inner).sum(-1, keepdim=True))
        labels, depth = t["segment_semantic"], t["depth_zbuffer"][0]
        smooth = torch.ones(res - 2, res - 2, dtype=torch.bool)
        for dy in (-1, 0, 1):  # skip pixels next to a class boundary or a depth jump (occlusion)
            for dx in (-1, 0, 1):
                smooth &= labels[1 + dy:res - 1 + dy, 1 + dx:res - 1 + dx] == labels[1:-1, 1:-1]
                smooth &= (depth[1 + dy:res - 1 + dy, 1 + dx:res - 1 + dx] - depth[1:-1, 1:-1]).abs() < 0.05 * depth[1:-1, 1:-1]
        errors.append(torch.rad2deg(torch.acos((normal * inner).sum(-1).clamp(-1, 1)[smooth])))
    errors = torch.cat(errors)
    assert float(errors.median()) < 3.0
    assert float((errors < 10).double().mean()) > 0.9


def test_the_floor_normal_changes_from_scene_to_scene():
    """The camera is pitched and rolled: unlike the demo, no class has a fixed normal."""
    def floor_normals(scenes):
        out = []
        for i in range(len(scenes)):
            _, t = scenes[i]
            floor = t["segment_semantic"] == 0
            out.append(F.normalize(t["normal"][:, floor].mean(1), dim=0))
        return torch.stack(out)

    bench = floor_normals(BenchScenes(["segment_semantic", "normal"], size=12, resolution=32))
    demo = floor_normals(SyntheticScenes(["segment_semantic", "normal"], size=12, resolution=32))
    spread = torch.rad2deg(torch.acos((bench @ bench.T).clamp(-1, 1)))
    assert float(spread.max()) > 10.0
    assert torch.allclose(demo, demo[:1].expand_as(demo), atol=1e-5)  # the demo's floor: always straight up


def class_colour_separation(scenes) -> float:
    """How well an object's mean colour tells its class: the spread of the class means over the
    average spread of object colours within a class (0 = colour carries no class information)."""
    colours: dict[int, list[torch.Tensor]] = {}
    for i in range(len(scenes)):
        image, t = scenes[i]
        labels = t["segment_semantic"]
        for c in labels.unique().tolist():
            if c >= 2:
                colours.setdefault(c, []).append(image[:, labels == c].mean(1))
    means = torch.stack([torch.stack(v).mean(0) for v in colours.values()])
    within = torch.stack([torch.stack(v).std(0).norm() for v in colours.values()]).mean()
    return float(means.std(0).norm() / within)


def test_colour_does_not_give_the_class_away():
    bench = class_colour_separation(BenchScenes(["segment_semantic"], size=150, resolution=32))
    demo = class_colour_separation(SyntheticScenes(["segment_semantic"], size=150, resolution=32))
    assert bench < 0.3 < demo, (bench, demo)


def test_cylinder_and_panel_hits_by_hand():
    """One ray each, worked out on paper: straight ahead into a cylinder of radius 1 at z = 5 hits
    its side at z = 4 with normal -z; a ray straight down onto a cylinder's cap (top at y = 0.5)
    hits at t = 0.5 with normal -y; a panel facing the camera at z = 3 is hit at t = 3."""
    ahead = torch.tensor([[[0.0, 0.0, 1.0]]])
    t, n = hit_cylinder(ahead, torch.tensor([0.0, 0.0, 5.0]), radius=1.0, height=2.0)
    assert float(t) == pytest.approx(4.0) and torch.allclose(n, torch.tensor([0.0, 0.0, -1.0]))
    down = F.normalize(torch.tensor([[[0.0, 1.0, 1e-4]]]), dim=-1)
    t, n = hit_cylinder(down, torch.tensor([0.0, 0.0, 0.0]), radius=1.0, height=0.5)
    assert float(t) == pytest.approx(0.5, rel=1e-4) and torch.allclose(n, torch.tensor([0.0, -1.0, 0.0]))
    t, n = hit_panel(ahead, torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0.0, 0.0, 1.0]), 0.5, 0.5)
    assert float(t) == pytest.approx(3.0) and torch.allclose(n, torch.tensor([0.0, 0.0, -1.0]))
    t, _ = hit_panel(ahead, torch.tensor([0.8, 0.0, 3.0]), torch.tensor([0.0, 0.0, 1.0]), 0.5, 0.5)
    assert math.isinf(float(t))  # the ray passes beside the panel


def test_cached_items_are_the_generated_ones_and_are_read_back(tmp_path, monkeypatch):
    scenes = BenchScenes(ALL, size=5, resolution=24, num_classes=7, seed=4, split="val")
    first = CachedScenes(scenes, tmp_path)
    for i in range(5):
        a, b = scenes[i], first[i + 5]  # keys wrap like a sampler's (epoch * size + index)
        assert torch.equal(a[0], b[0])
        for key in ALL:
            assert b[1][key].dtype == a[1][key].dtype and torch.equal(a[1][key], b[1][key])
    monkeypatch.setattr(BenchScenes, "__getitem__", lambda self, i: pytest.fail("generated again"))
    again = CachedScenes(scenes, tmp_path)
    assert torch.equal(again[2][0], first[2][0])
    monkeypatch.undo()
    first.path.write_bytes(b"truncated")  # an unreadable cache is made again
    assert torch.equal(CachedScenes(scenes, tmp_path)[3][0], scenes[3][0])
    names = {CachedScenes(BenchScenes(["normal"], size=2, resolution=24, seed=s, split=p), tmp_path).path.name
             for s in (0, 1) for p in ("train", "test")}
    assert len(names) == 4


def test_data_seed_fixes_the_scenes_across_run_seeds(tmp_path):
    def first_image(*overrides):
        config = load_config("demo", ["data.train_size=4", "data.val_size=2", "data.test_size=2", "data.resolution=24", *overrides])
        return build_synthetic_datasets(config).train[0][0]

    assert torch.equal(first_image("seed=1", "data.seed=7"), first_image("seed=2", "data.seed=7"))
    assert not torch.equal(first_image("seed=1"), first_image("seed=2"))
    bench = build_synthetic_datasets(load_config("demo", ["data.scenes=bench", "data.train_size=4", "data.resolution=24",
                                                          f"data.cache_dir={tmp_path}"]))
    assert isinstance(bench.train, CachedScenes) and bench.train.path.name.startswith("BenchScenes-train-")
    assert torch.equal(bench.test[1][0], BenchScenes(["segment_semantic", "normal", "depth_zbuffer"], size=256, resolution=24,
                                                     num_classes=6, seed=0, split="test")[1][0])
