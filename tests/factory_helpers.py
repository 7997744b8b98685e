"""Factories for tests/test_factories.py: small networks and datasets, good and bad, named in
presets as "<this file>:<function>". Each good factory records the arguments it was called with."""

import torch
from torch import nn
from torch.utils.data import Dataset

CALLS: list = []


class TinyNet(nn.Module):
    """An encoder and one decoder per task, under names the default components do not know."""

    def __init__(self, out_channels, width=4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.decoders = nn.ModuleDict({task: nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                                           nn.Conv2d(width, channels, 1))
                                       for task, channels in out_channels.items()})
        self.norm = nn.Identity()  # no conv: never a component

    def forward(self, image):
        features = self.encoder(image)
        return {task: decoder(features) for task, decoder in self.decoders.items()}


def tiny(out_channels, width=4, **extra):
    CALLS.append(("tiny", dict(out_channels), {"width": width, **extra}))
    return TinyNet(out_channels, width)


class BackboneHeads(nn.Module):
    """The built-in layout: ``backbone`` and ``heads.<task>``."""

    def __init__(self, out_channels):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict({task: nn.Conv2d(4, channels, 1) for task, channels in out_channels.items()})

    def forward(self, image):
        features = self.backbone(image)
        return {task: head(features) for task, head in self.heads.items()}


def backbone_heads(out_channels):
    return BackboneHeads(out_channels)


not_callable = 3


def raises(out_channels):
    raise ValueError("width must be even\nsecond line of the message")


def returns_dict(out_channels):
    return {"model": "not a module"}


class TensorOut(TinyNet):
    def forward(self, image):
        return self.encoder(image)


def tensor_output(out_channels):
    return TensorOut(out_channels)


class MissingLast(TinyNet):
    def forward(self, image):
        outputs = super().forward(image)
        outputs.pop(list(outputs)[-1])
        return outputs


def missing_task(out_channels):
    return MissingLast(out_channels)


def wrong_channels(out_channels):
    return TinyNet({task: channels + 1 for task, channels in out_channels.items()})


class Broken(TinyNet):
    def forward(self, image):
        raise RuntimeError("shapes do not fit")


def forward_raises(out_channels):
    return Broken(out_channels)


# -- datasets ---------------------------------------------------------------------------------


class TinyScenes(Dataset):
    """Deterministic items in the documented conventions: a left half of class 1 and a right half
    of class 2, normals facing the camera, depth growing left to right."""

    def __init__(self, tasks, size, resolution, num_classes=6):
        self.tasks, self.size, self.resolution = list(tasks), size, resolution

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        r = self.resolution
        image = torch.linspace(-1, 1, 3 * r * r).reshape(3, r, r) * (1 + index % 3)
        seg = torch.ones(r, r, dtype=torch.int64)
        seg[:, r // 2:] = 2
        seg[0, 0] = 255
        normal = torch.zeros(3, r, r)
        normal[2] = 1.0
        depth = torch.linspace(1, 5, r).expand(1, r, r).clone()
        depth[0, 0, 0] = float("nan")
        targets = {"segment_semantic": seg, "normal": normal, "depth_zbuffer": depth,
                   "keypoints2d": torch.zeros(1, r, r), "edge_texture": torch.zeros(1, r, r)}
        return image, {task: targets[task] for task in self.tasks}


def tiny_data(tasks, size=4, resolution=16, **extra):
    CALLS.append(("tiny_data", list(tasks), {"size": size, "resolution": resolution, **extra}))
    return {split: TinyScenes(tasks, size, resolution) for split in ("train", "val", "test")}


def tiny_data_tuple(tasks, size=4, resolution=16):
    return tuple(TinyScenes(tasks, size, resolution) for _ in range(3))


def two_splits(tasks):
    return [TinyScenes(tasks, 4, 16), TinyScenes(tasks, 4, 16)]


class Altered(TinyScenes):
    def __init__(self, tasks, change):
        super().__init__(tasks, 4, 16)
        self.change = change

    def __getitem__(self, index):
        image, targets = super().__getitem__(index)
        return self.change(image, targets)


def _without_normal(image, targets):
    targets.pop("normal")
    return image, targets


def _float_labels(image, targets):
    targets["segment_semantic"] = targets["segment_semantic"].float()
    return image, targets


def _flat_depth(image, targets):
    targets["depth_zbuffer"] = targets["depth_zbuffer"][0]
    return image, targets


def _class_nine(image, targets):
    targets["segment_semantic"][3, 3] = 9
    return image, targets


def _raise(image, targets):
    raise OSError("image 0.png is truncated")


_CHANGES = {"missing_task": _without_normal, "float_labels": _float_labels, "flat_depth": _flat_depth,
            "class_nine": _class_nine, "raises": _raise}


def bad_data(tasks, fault, split="val"):
    """Good train/test splits, and ``split`` with one fault of _CHANGES."""
    good = TinyScenes(tasks, 4, 16)
    return {name: Altered(tasks, _CHANGES[fault]) if name == split else good for name in ("train", "val", "test")}
