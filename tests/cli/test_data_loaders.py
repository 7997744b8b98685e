"""The paper datasets' loaders: documented tensors, quirks as switches, validation before work."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from adapmtl_cli.cli import main
from adapmtl_cli.data import transforms
from adapmtl_cli.data.nyuv2 import NYUv2AdaShare, NYUv2MTAN
from adapmtl_cli.data.taskonomy import TaskonomyAdaShare
from adapmtl_cli.errors import DataError
from dataset_fixtures import write_nyuv2_adashare, write_nyuv2_mtan, write_taskonomy

NYU_TASKS = ["segment_semantic", "normal", "depth_zbuffer"]
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


@pytest.fixture
def nyu(tmp_path):
    return write_nyuv2_adashare(tmp_path / "nyu")


def test_nyuv2_known_pixels_in_standard_mode(nyu):
    # crop = the short side: the standard test transform keeps the 16x24 image as it is.
    image, targets = NYUv2AdaShare(nyu, "train", NYU_TASKS, crop=16)[0]
    assert image.shape == (3, 16, 24)
    # RGB (10, 20, 30) used as BGR (30, 20, 10), minus the BGR mean, no scaling.
    assert image[:, 0, 0].tolist() == pytest.approx([30 - MEAN_BGR[0], 20 - MEAN_BGR[1], 10 - MEAN_BGR[2]], abs=1e-4)
    assert int(targets["segment_semantic"][0, 1]) == 255
    assert torch.isnan(targets["normal"][:, 1, 0]).all()
    # BGR as read: (50, 200, 127) -> b / 255 * 2 - 1, normalised.
    raw = torch.tensor([50, 200, 127]) / 255 * 2 - 1
    assert targets["normal"][:, 0, 0].tolist() == pytest.approx((raw / raw.norm()).tolist(), abs=1e-5)
    assert math.isnan(float(targets["depth_zbuffer"][0, 1, 1]))


def test_nyuv2_paper_mode_keeps_raw_normal_bytes_and_squashes_to_the_crop(nyu):
    image, targets = NYUv2AdaShare(nyu, "test", NYU_TASKS, mode="paper", crop=20)[0]
    assert image.shape == (3, 20, 20)  # QUIRK: aspect ratio distorted
    valid = targets["normal"][~torch.isnan(targets["normal"])]
    assert float(valid.max()) > 1.5  # raw 0..254 values, not unit vectors


def test_padding_values_when_the_crop_exceeds_the_scaled_image(nyu):
    data = NYUv2AdaShare(nyu, "train", NYU_TASKS, crop=64, augment=True, seed=3)
    image, targets = data[5]
    assert image.shape == (3, 64, 64)
    corner = (slice(None), 0, 0)  # a 16x24 image scaled by < 1.5 leaves the corner padded
    assert image[corner].tolist() == pytest.approx([-m for m in MEAN_BGR], abs=1e-4)  # 0 before the mean
    assert int(targets["segment_semantic"][0, 0]) == 255
    assert torch.isnan(targets["normal"][:, 0, 0]).all() and torch.isnan(targets["depth_zbuffer"][:, 0, 0]).all()


def test_flip_mirrors_normals_only_when_asked():
    normal = torch.tensor([0.6, 0.0, 0.8]).view(3, 1, 1).expand(3, 2, 2).clone()
    image = torch.arange(12.0).view(3, 2, 2)
    _, mirrored = transforms.flip(image, {"normal": normal}, mirror_normals=True)
    _, kept = transforms.flip(image, {"normal": normal}, mirror_normals=False)
    assert mirrored["normal"][:, 0, 0].tolist() == pytest.approx([-0.6, 0.0, 0.8])
    assert kept["normal"][:, 0, 0].tolist() == pytest.approx([0.6, 0.0, 0.8])


def test_augmentation_is_a_pure_function_of_seed_and_key(nyu):
    a = NYUv2AdaShare(nyu, "train", NYU_TASKS, crop=12, augment=True, seed=1)
    b = NYUv2AdaShare(nyu, "train", NYU_TASKS, crop=12, augment=True, seed=1)
    assert torch.equal(a[6][0], b[6][0])
    assert not torch.equal(a[2][0], a[6][0])  # the same item (index 2) in another epoch differs


def test_mtan_layout(tmp_path):
    root = write_nyuv2_mtan(tmp_path / "mtan")
    image, targets = NYUv2MTAN(root, "val", NYU_TASKS, crop=12)[0]
    assert image.shape == (3, 12, 16)
    assert int(targets["segment_semantic"][0, 0]) == 255  # -1 = ignore
    assert math.isnan(float(targets["depth_zbuffer"][0, 0, 1]))
    assert torch.isnan(targets["normal"][:, 1, 0]).all()


def test_taskonomy_label_transforms(tmp_path):
    root = write_taskonomy(tmp_path / "tk")
    tasks = ["segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture"]
    data = TaskonomyAdaShare(root, "test", tasks, crop=256)
    _, t = data[0]
    assert data.class_weights.shape == (17,)
    # label 0 -> 1 -> 0; label 5 -> 4.
    assert int(t["segment_semantic"][0, 0]) == 0 and int(t["segment_semantic"][0, 1]) == 4
    assert float(t["depth_zbuffer"][0, 0, 0]) == pytest.approx(math.log(1001) / math.log(2**16), rel=1e-5)
    assert math.isnan(float(t["depth_zbuffer"][0, 0, 1]))  # 65000 >= 64500
    assert float(t["keypoints2d"][0, 0, 0]) == pytest.approx(131 / 65535 / 0.005 * 2 - 1, rel=1e-4)
    assert float(t["edge_texture"][0, 0, 0]) == pytest.approx(min(6553 / 65535, 0.08) / 0.08 * 2 - 1, rel=1e-4)


def test_validation_names_the_first_bad_file_and_counts(nyu):
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(nyu / "seg" / "0001.png")  # wrong size
    Image.fromarray(np.full((16, 24), 77, dtype=np.uint8)).save(nyu / "seg" / "0002.png")  # label 77
    (nyu / "depth" / "0003.npy").unlink()
    with pytest.raises(DataError) as info:
        NYUv2AdaShare(nyu, "train", NYU_TASKS).validate()
    message = str(info.value)
    assert "3 of 4" in message and "seg/0001.png is 8x8 but img/0001.png is 16x24" in message


def test_validation_reports_labels_out_of_range(nyu):
    Image.fromarray(np.full((16, 24), 77, dtype=np.uint8)).save(nyu / "seg" / "0002.png")
    with pytest.raises(DataError, match=r"1 of 4 .*seg/0002.png holds label 77"):
        NYUv2AdaShare(nyu, "train", NYU_TASKS).validate()


def test_bad_roots_stop_training_before_any_step_with_exit_3(nyu, tmp_path, capsys):
    common = ["--preset", "nyuv2-mnv2", "--quiet", "model.head_hidden=8", "data.workers=0"]
    assert main(["train", "--out", str(tmp_path / "a"), *common, "--data-root", str(tmp_path / "nowhere")]) == 3
    assert "does not exist" in capsys.readouterr().err
    (nyu / "nyu_v2_3task.json").unlink()
    assert main(["train", "--out", str(tmp_path / "b"), *common, "--data-root", str(nyu)]) == 3
    assert "missing nyu_v2_3task.json" in capsys.readouterr().err


def test_a_paper_preset_trains_on_the_tiny_nyuv2(nyu, tmp_path):
    assert main(["train", "--preset", "nyuv2-resnet34", "--data-root", str(nyu), "--out", str(tmp_path / "run"), "--quiet",
                 "model.head_hidden=8", "data.crop=16", "train.steps=2", "train.val_every=2", "train.batch_size=2",
                 "data.workers=0", "train.select_after=0"]) == 0
