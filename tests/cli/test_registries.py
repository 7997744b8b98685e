"""One fact, one place (issue 18): a new data source or task kind needs one registration each, and
the facts the registries hold are written nowhere else."""

import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from adapmtl_cli.cli import main
from adapmtl_cli.config import load_config
from adapmtl_cli.data import DataBundle
from adapmtl_cli.data.sources import DataSource, data_source, register_source, source_names, unregister_source
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.tasks import register_task, task_kind, task_names, unregister_task
from adapmtl_cli.tasks.base import Metric, Task, resize_nearest, safe_ratio

PACKAGE = Path(__file__).resolve().parents[2] / "adapmtl_cli"


# -- a task kind of our own: its loss and one metric ---------------------------------------------


class BrightnessTask(Task):
    """Each pixel's mean brightness: squared error, scored by ``bright_rmse`` (lower is better)."""

    name = "toy_brightness"
    out_channels = 1
    higher_is_better = {"bright_rmse": False}
    primary_metric = "bright_rmse"

    def loss(self, pred, target):
        return (pred - resize_nearest(target, pred.shape[-2:])).pow(2).mean()

    def new_metric(self) -> Metric:
        return SquaredErrorMetric()


class SquaredErrorMetric(Metric):
    def _new_state(self, device):
        return {"sum": torch.zeros((), dtype=torch.float64, device=device),
                "pixels": torch.zeros((), dtype=torch.float64, device=device)}

    def update(self, pred, target):
        state = self.state(pred.device)
        pred = resize_nearest(pred.double(), target.shape[-2:])
        state["sum"] += (pred - target.double()).pow(2).sum()
        state["pixels"] += target.numel()

    def compute(self):
        state = self.state()
        return {"bright_rmse": float(safe_ratio(state["sum"], state["pixels"]).sqrt())}


# -- a data source of our own: a tiny in-memory dataset with segmentation and that task ----------


class ToyScenes(Dataset):
    """Noise images; 3 classes from the signs of two channels; the brightness target."""

    def __init__(self, tasks, size: int, resolution: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(size, 3, resolution, resolution, generator=generator)
        self.tasks = list(tasks)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        image = self.images[key % len(self.images)]
        targets = {"segment_semantic": (image[0] > 0).long() + (image[1] > 0).long(),
                   "toy_brightness": image.mean(0, keepdim=True)}
        return image, {task: targets[task] for task in self.tasks}


def toy_datasets(config) -> DataBundle:
    def split(index: int, size: int) -> ToyScenes:
        return ToyScenes(config.tasks, size, config.data.resolution, config.seed + index)

    return DataBundle(train=split(0, 8), val=split(1, 4), test=split(2, 4))


TOY = DataSource("toy", build=toy_datasets, classes=3, tasks=("segment_semantic", "toy_brightness"))


@pytest.fixture
def registered():
    register_task(BrightnessTask)
    register_source(TOY)
    try:
        yield
    finally:
        unregister_source("toy")
        unregister_task("toy_brightness")


TINY = ["data.source=toy", "tasks=['segment_semantic', 'toy_brightness']", "train.steps=1", "train.val_every=1",
        "train.batch_size=2", "data.resolution=16", "model.width=4", "train.device=cpu"]


def test_a_new_source_and_task_need_one_registration_each(registered, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "demo", "--out", str(out), "--quiet", "--json", *TINY]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 1
    assert set(summary["metrics"]) == {"segment_semantic", "toy_brightness"}
    assert list(summary["sparsity"]["components"]) == ["backbone", "head.segment_semantic", "head.toy_brightness"]

    # Evaluated from the checkpoint alone (its config names the source and the task), with Delta
    # against itself: the task's metric directions come from its kind.
    model = out / "model.safetensors"
    assert main(["eval", str(model), "--json", "--baseline", str(model), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"].startswith("toy")  # no data root needed: no fall-back to the synthetic scenes
    assert set(result["metrics"]["segment_semantic"]) == {"miou", "pixel_acc"}  # the source's style
    assert result["metrics"]["toy_brightness"]["bright_rmse"] >= 0
    assert result["delta"]["per_task"] == {"segment_semantic": 0.0, "toy_brightness": 0.0}


def test_registrations_are_read_when_a_config_is_validated(registered):
    config = load_config("demo", TINY)
    assert (config.data.source, config.tasks) == ("toy", ["segment_semantic", "toy_brightness"])
    with pytest.raises(ConfigError, match="tasks lists 'normal', which data.source = 'toy' does not have"):
        load_config("demo", ["data.source=toy"])
    with pytest.raises(ValueError, match="registered already"):
        register_source(TOY)
    with pytest.raises(ValueError, match="registered already"):
        register_task(BrightnessTask)


def test_unregistering_forgets_a_source_and_restores_a_builtin():
    register_source(DataSource("nyuv2", build=toy_datasets, classes=3), replace=True)
    unregister_source("nyuv2")
    assert data_source("nyuv2").classes == 40
    assert "toy" not in source_names() and "toy_brightness" not in task_names()
    with pytest.raises(ConfigError, match="Input should be 'synthetic', 'nyuv2', 'nyuv2-mtan', 'taskonomy' or 'cityscapes'"):
        load_config("demo", ["data.source=toy"])
    with pytest.raises(ConfigError, match="unknown task 'toy_brightness'"):
        load_config("demo", ["tasks=['toy_brightness']"])
    assert task_kind("normal").name == "normal"


# -- the facts are written once ---------------------------------------------------------------


def _sources(*patterns: str) -> dict[str, str]:
    paths = sorted({path for pattern in patterns for path in PACKAGE.glob(pattern)})
    return {str(path.relative_to(PACKAGE)): path.read_text(encoding="utf-8") for path in paths}


def test_builders_and_workflows_name_no_task():
    """Options and metric directions come from the task kinds, never from a branch on a name."""
    names = re.compile(r"\b(segment_semantic|normal|depth_zbuffer|keypoints2d|edge_texture)\b")
    for name, text in _sources("builders.py", "workflows.py", "workflows/*.py").items():
        code = [line for line in text.splitlines() if names.search(line.split("#")[0])]
        assert not code, (name, code)


def test_the_raw_weight_key_rewrite_is_written_once():
    holders = {name for name, text in _sources("**/*.py").items() if '".parametrizations.weight.original"' in text}
    assert holders == {"keys.py"}, holders


def test_sources_declare_the_channel_order_pictures_undo():
    """REFERENCE.md 5: the AdaShare NYUv2 and Taskonomy images are fed in BGR order; MTAN's NYUv2
    and Cityscapes arrays are RGB, like the synthetic scenes."""
    from adapmtl_cli.data.sources import data_source

    assert {name: data_source(name).bgr for name in ("synthetic", "nyuv2", "nyuv2-mtan", "taskonomy", "cityscapes")} == {
        "synthetic": False, "nyuv2": True, "nyuv2-mtan": False, "taskonomy": True, "cityscapes": False}
