"""Cityscapes in the MTAN/LibMTL layout: the documented tensors, the joint flip, the splits, one-line
errors for bad files and configs, and a tiny train + eval from the command line."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from adapmtl_cli.cli import main
from adapmtl_cli.config import load_config
from adapmtl_cli.data import build_datasets
from adapmtl_cli.data.cityscapes import CityscapesMTAN
from adapmtl_cli.errors import DataError
from dataset_fixtures import write_cityscapes

TASKS = ["segment_semantic", "depth_zbuffer"]
# The preset with a tiny model: fast on the CPU, the data path untouched.
TINY = ["--quiet", "model.backbone=demo", "model.head=demo", "model.width=4", "data.crop=16", "train.steps=3",
        "train.val_every=3", "train.batch_size=2", "data.workers=0"]


@pytest.fixture
def city(tmp_path):
    return write_cityscapes(tmp_path / "city")


@pytest.mark.parametrize("classes", [7, 19])
def test_val_items_are_the_stored_arrays_with_ignore_255_and_invalid_depth_nan(city, classes):
    # crop 16 = the shorter side of the 16x32 items: the test transform leaves them untouched.
    image, targets = CityscapesMTAN(city, "val", TASKS, crop=16, num_classes=classes)[1]
    stored_image = np.load(city / "val" / "image" / "1.npy")
    stored_label = np.load(city / "val" / f"label_{classes}" / "1.npy")
    stored_depth = np.load(city / "val" / "depth" / "1.npy")
    assert image.dtype == torch.float32 and image.shape == (3, 16, 32)
    assert image[:, 0, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])  # RGB as stored, no mean subtracted
    assert torch.equal(image, torch.from_numpy(stored_image.transpose(2, 0, 1)))
    seg = targets["segment_semantic"]
    assert seg.dtype == torch.int64 and seg.shape == (16, 32)
    assert int(seg[0, 0]) == 255  # -1 = ignore
    assert int(seg[0, 2]) == classes - 1  # the top class of the folder read
    expected = np.where(stored_label < 0, 255, stored_label).astype(np.int64)
    assert torch.equal(seg, torch.from_numpy(expected))
    depth = targets["depth_zbuffer"]
    assert depth.dtype == torch.float32 and depth.shape == (1, 16, 32)
    assert math.isnan(float(depth[0, 0, 1]))  # 0 = invalid
    assert int(torch.isnan(depth).sum()) == 1
    valid = stored_depth[..., 0] > 0
    assert np.array_equal(depth[0].numpy()[valid], stored_depth[..., 0][valid])


def test_augmentation_moves_image_and_labels_together(tmp_path):
    # Stripes: class k (= column // 16) has image k/10 and depth (k+1)/10; they rise left to right.
    root = write_cityscapes(tmp_path / "stripes", n_train=2, w=64, stripes=True)
    data = CityscapesMTAN(root, "train", TASKS, crop=16, augment=True, seed=5)
    directions, compared = set(), 0
    for key in range(16):
        image, targets = data[key]
        seg, depth = targets["segment_semantic"], targets["depth_zbuffer"][0]
        assert image.shape == (3, 16, 16) and seg.shape == (16, 16) and depth.shape == (16, 16)
        labelled = seg != 255
        # Labels and depth are both resized nearest: they agree at every pixel.
        assert torch.allclose(depth[labelled], (seg[labelled].float() + 1) / 10)
        assert torch.isnan(depth[~labelled]).all() and (image[:, ~labelled] == 0).all()  # padding
        # The image is bilinear: inside a stripe (2 pixels from its edges) it is the stripe's value.
        inside = labelled.clone()
        for shift in (-2, -1, 1, 2):
            inside &= seg == torch.roll(seg, shift, dims=1)
        inside[:, :2] = inside[:, -2:] = False
        compared += int(inside.sum())
        assert torch.allclose(image[0][inside], seg[inside].float() / 10, atol=1e-6)
        for row in range(16):
            values = seg[row][labelled[row]]
            steps = values[1:] - values[:-1]
            if (steps != 0).any():
                assert (steps >= 0).all() or (steps <= 0).all()
                directions.add("rising" if (steps >= 0).all() else "falling")
    assert compared > 500
    assert directions == {"rising", "falling"}  # some draws flipped (image and labels alike), some not


def test_test_split_is_val_and_validation_is_carved_from_train(city):
    config = load_config("cityscapes-resnet34", [f"data.root='{city}'", "data.val_fraction=0.25"])
    data = build_datasets(config)
    assert (data.test.split, len(data.test)) == ("val", 2)
    assert data.train.split == data.val.split == "train"
    assert sorted(data.train.items + data.val.items) == ["0.npy", "1.npy", "2.npy", "3.npy"]
    assert len(data.val) == 1 and not data.val.augment and data.train.augment


def test_validation_counts_bad_items_and_names_the_first(city):
    np.save(city / "train" / "label_7" / "1.npy", np.full((16, 32), 7, dtype=np.float32))
    np.save(city / "train" / "depth" / "3.npy", np.full((16, 32, 1), np.nan, dtype=np.float32))
    with pytest.raises(DataError) as info:
        CityscapesMTAN(city, "train", TASKS).validate()
    message = str(info.value)
    assert "2 of 4 items are bad" in message
    assert "first: train/label_7/1.npy holds label 7, not a class 0..6 or -1 (ignore)" in message


def test_a_depth_only_run_needs_no_label_folder(city):
    for split in ("train", "val"):
        shutil.rmtree(city / split / "label_7")
    data = CityscapesMTAN(city, "train", ["depth_zbuffer"])
    data.validate()
    assert list(data[0][1]) == ["depth_zbuffer"]


def _save(relative, array):
    def change(root):
        np.save(root / relative, np.asarray(array))
    return change


def _image_bytes(root):
    np.save(root / "train/image/0.npy", np.load(root / "train/image/0.npy") * 255)


def _image_chw(root):
    np.save(root / "train/image/0.npy", np.load(root / "train/image/0.npy").transpose(2, 0, 1))


def _label_folder_as_libmtl(root):
    (root / "train" / "label_7").rename(root / "train" / "label")


def _with(relative, row, col, value):
    def change(root):
        array = np.load(root / relative)
        array[row, col] = value
        np.save(root / relative, array)
    return change


# (id, change to the fixture, substring of the one-line message)
BAD_FILES = [
    ("missing folder", lambda root: shutil.rmtree(root / "train" / "depth"), "missing train/depth/; expected the MTAN layout"),
    ("LibMTL label folder", _label_folder_as_libmtl, "rename it label_7/"),
    ("empty split", lambda root: [p.unlink() for p in (root / "val" / "image").glob("*.npy")], "val/image/ holds no .npy files"),
    ("missing label file", lambda root: (root / "train/label_7/2.npy").unlink(), "train/label_7/2.npy is missing"),
    ("unreadable label", lambda root: (root / "train/label_7/2.npy").write_bytes(b"not numpy"), "train/label_7/2.npy is not a readable .npy"),
    ("label size", _save("train/label_7/1.npy", np.zeros((8, 8), np.float32)), "train/label_7/1.npy is 8x8 but the image is 16x32"),
    ("label out of range", _with("train/label_7/0.npy", 3, 3, 7), "train/label_7/0.npy holds label 7, not a class 0..6 or -1"),
    ("label -2", _with("train/label_7/0.npy", 3, 3, -2), "holds label -2, not a class"),
    ("fractional label", _with("train/label_7/0.npy", 3, 3, 2.5), "holds label 2.5, not a class"),
    ("depth size", _save("train/depth/0.npy", np.ones((16, 16, 1), np.float32)), "train/depth/0.npy is 16x16x1 but the image is 16x32"),
    ("depth nan", _with("train/depth/0.npy", 2, 2, np.nan), "train/depth/0.npy holds non-finite depth (nan)"),
    ("depth inf", _with("train/depth/0.npy", 2, 2, np.inf), "train/depth/0.npy holds non-finite depth (inf)"),
    ("negative depth", _with("train/depth/0.npy", 2, 2, -1), "train/depth/0.npy holds negative depth -1"),
    ("image channels first", _image_chw, "train/image/0.npy is 3x16x32; expected HxWx3"),
    ("image in bytes", _image_bytes, "expected RGB in [0, 1]"),
    ("image nan", _with("train/image/0.npy", 1, 1, np.nan), "train/image/0.npy holds non-finite values"),
]


@pytest.mark.parametrize("change,needle", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_files_stop_training_with_one_line_and_exit_3(city, tmp_path, change, needle, capsys):
    change(city)
    code = main(["train", "--preset", "cityscapes-resnet34", "--data-root", str(city), "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == 3, err
    assert needle in err and str(city) in err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_missing_root_is_exit_3(tmp_path, capsys):
    assert main(["train", "--preset", "cityscapes-resnet34", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), *TINY]) == 3
    err = capsys.readouterr().err
    assert "nowhere does not exist" in err and err.strip().count("\n") == 0


@pytest.mark.parametrize("override,needle", [
    ("tasks=['segment_semantic','normal']", "tasks lists 'normal', which data.source = 'cityscapes' does not have"),
    ("data.num_classes=13", "data.num_classes = 13 with data.source = 'cityscapes': set 7 or 19"),
])
def test_configs_cityscapes_cannot_serve_are_exit_2(city, tmp_path, override, needle, capsys):
    code = main(["train", "--preset", "cityscapes-resnet34", "--data-root", str(city), "--out", str(tmp_path / "run"), *TINY, override])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and f"override {override!r}" in err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err


def test_a_demo_config_switched_to_cityscapes_blames_the_switch(capsys):
    assert main(["train", "--preset", "demo", "data.source=cityscapes"]) == 2
    assert "override 'data.source=cityscapes': config: tasks lists 'normal'" in capsys.readouterr().err


def test_train_then_eval_on_the_tiny_cityscapes(city, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "cityscapes-resnet34", "--data-root", str(city), "--out", str(run), *TINY,
                 "data.num_classes=19"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run / "model.safetensors"), "--data-root", str(city), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"] == f"cityscapes at {city}"
    assert set(result["metrics"]) == set(TASKS)
    assert 0 <= result["metrics"]["segment_semantic"]["miou"] <= 1
    assert math.isfinite(result["metrics"]["depth_zbuffer"]["abs_err"])
    # The 19 classes of label_19/ reached the segmentation head.
    from adapmtl_cli.io.checkpoint import load_model_from_checkpoint

    model, _, _ = load_model_from_checkpoint(run / "model.safetensors")
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, 16, 32))
    assert out["segment_semantic"].shape[1] == 19 and out["depth_zbuffer"].shape[1] == 1


def test_the_preset_is_the_paper_network_in_standard_mode_on_two_tasks():
    config = load_config("cityscapes-resnet34")
    assert (config.mode, config.tasks) == ("standard", TASKS)
    assert (config.model.backbone, config.model.head, config.model.head_hidden) == ("resnet34", "aspp", 1024)
    assert (config.data.source, config.data.num_classes, config.data.crop) == ("cityscapes", 7, 128)  # MTAN: 128x256
    assert (config.optim.lr, config.optim.betas, config.optim.lr_step, config.optim.lr_gamma) == (1e-3, (0.5, 0.999), 4000, 0.5)
    assert (config.sparsity.target, config.sparsity.init, config.sparsity.control) == (0.9, -15.0, "schedule")
    assert config.train.select_on == "val" and not config.weighting.quirk_normalise_to_three
    assert not (config.eval.miou_tp_only or config.eval.batch_weighted_means or config.eval.depth_unclamped)
