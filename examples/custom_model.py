"""Your own network under adapmtl: a torchvision ResNet-18 trunk shared by one small conv decoder
per task. ``examples/custom-model.toml`` trains it with AdapMTL on the synthetic scenes:

    adapmtl train --preset examples/custom-model.toml

The preset names this function (``model.factory = "custom_model.py:build"``, a path relative to
the preset's folder) and the submodules that get a threshold each (``model.components``). adapmtl
calls ``build(out_channels, **model.factory_args)`` with ``out_channels`` = {task: channels}
(e.g. {"segment_semantic": 6, "normal": 3, "depth_zbuffer": 1}); the forward returns
{task: [B, C, h, w]}. Nothing here imports adapmtl: the dense export loads straight into
``build(...)`` with ``load_state_dict``.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn
from torch.nn import functional as F


class Decoder(nn.Module):
    """conv3x3-BN-ReLU, a 2x bilinear upsampling, conv3x3-ReLU and a 1x1 classifier."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.refine = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.classify = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.classify(self.refine(x))


class ResNetMultiTask(nn.Module):
    """ResNet-18 up to layer3 (output stride 16, 256 channels), randomly initialised (no download),
    then 8x upsampled decoders: a 64x64 image gives 8x8 outputs."""

    def __init__(self, out_channels: dict[str, int], hidden: int = 64):
        super().__init__()
        trunk = torchvision.models.resnet18(weights=None)
        self.encoder = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2, trunk.layer3)
        self.decoders = nn.ModuleDict({task: Decoder(256, channels, hidden) for task, channels in out_channels.items()})

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        features = self.encoder(image)
        return {task: decoder(features) for task, decoder in self.decoders.items()}


def build(out_channels: dict[str, int], hidden: int = 64) -> nn.Module:
    """The factory adapmtl calls (after seeding torch with the preset's seed); ``hidden`` comes
    from ``[model.factory_args]``."""
    return ResNetMultiTask(out_channels, hidden=hidden)
