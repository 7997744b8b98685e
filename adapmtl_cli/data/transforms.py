"""Joint image/label transforms of the paper datasets (REFERENCE.md 5), on tensors.

Conventions (docs/internals.md): images are float ``[3, H, W]`` before mean subtraction;
segmentation int64 ``[H, W]`` with 255 = ignore; every other target float ``[C, H, W]`` with NaN =
invalid. Labels are resized with nearest neighbours, which keeps 255 and NaN intact. All randomness
comes from the generator passed in, so a seeded run is repeatable in any worker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def resize(image: torch.Tensor, targets: dict, size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """Image bilinear, labels nearest."""
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return image, {name: _resize_label(value, size) for name, value in targets.items()}


def _resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if label.dim() == 2:  # segmentation
        return F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return F.interpolate(label[None], size=size, mode="nearest")[0]


def flip(image: torch.Tensor, targets: dict, mirror_normals: bool) -> tuple[torch.Tensor, dict]:
    """Horizontal flip; with ``mirror_normals`` the normals' x component changes sign, as a
    mirrored surface's normal does (the reference leaves it: QUIRK)."""
    flipped = {name: value.flip(-1) for name, value in targets.items()}
    if mirror_normals and "normal" in flipped:
        normal = flipped["normal"].clone()
        normal[0] = -normal[0]
        flipped["normal"] = normal
    return image.flip(-1), flipped


def pad_to(image: torch.Tensor, targets: dict, crop: int) -> tuple[torch.Tensor, dict]:
    """Pad (centred) to at least crop x crop: image 0 (before mean subtraction), segmentation 255,
    other targets NaN (invalid)."""
    h, w = image.shape[-2:]
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    if not pad_h and not pad_w:
        return image, targets
    padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    image = F.pad(image, padding, value=0.0)
    padded = {}
    for name, value in targets.items():
        if value.dim() == 2:
            padded[name] = F.pad(value, padding, value=IGNORE)
        else:
            padded[name] = F.pad(value, padding, value=float("nan"))
    return image, padded


def random_crop(image: torch.Tensor, targets: dict, crop: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    h, w = image.shape[-2:]
    top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
    window = (slice(top, top + crop), slice(left, left + crop))
    return image[..., window[0], window[1]], {k: v[..., window[0], window[1]] for k, v in targets.items()}


def train_transform(image, targets, crop: int, generator: torch.Generator, mirror_normals: bool, scale=(0.5, 1.5)):
    """Random scale in [0.5, 1.5), horizontal flip with p = 0.5, pad to the crop, random crop."""
    s = scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=generator))
    h, w = image.shape[-2:]
    image, targets = resize(image, targets, (int(h * s), int(w * s)))
    if float(torch.rand(1, generator=generator)) < 0.5:
        image, targets = flip(image, targets, mirror_normals)
    image, targets = pad_to(image, targets, crop)
    return random_crop(image, targets, crop, generator)


def test_transform(image, targets, crop: int, keep_aspect: bool):
    """Paper (QUIRK): the whole image resized to crop x crop, distorting its aspect ratio.
    Standard: the shorter side resized to the crop, the aspect ratio kept."""
    if not keep_aspect:
        return resize(image, targets, (crop, crop))
    h, w = image.shape[-2:]
    scale = crop / min(h, w)
    return resize(image, targets, (round(h * scale), round(w * scale)))


def sample_generator(seed: int, key: int) -> torch.Generator:
    """The augmentation generator of one sample draw: a pure function of the run's seed and the
    sample key (epoch * size + index, see engine/sampling.py), so resuming or changing the number
    of workers never changes an augmentation."""
    return torch.Generator().manual_seed((seed * 1_000_003 + key * 7919 + 12345) % (2**63 - 1))
