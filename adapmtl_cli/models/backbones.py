"""The paper's backbones, exactly as REFERENCE.md 4 describes them, with the reference
checkpoint's module names so that its state dicts map onto these by name.

- Deeplab-ResNet34: output stride 8, 512 channels (a 321x321 input gives 41x41).
- MobileNetV2 (width 1.0): output stride 32, 1280 channels (321x321 gives 11x11).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

BACKBONES = ("resnet34", "mobilenetv2")


class BasicBlock(nn.Module):
    """conv3x3 - BN - ReLU - conv3x3 - BN; the residual (and the final ReLU) is added by the
    backbone, which owns the downsample convs (``ds``), as in the reference."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class DeeplabResNet34(nn.Module):
    out_channels = 512
    output_stride = 8

    def __init__(self, blocks=(3, 4, 6, 3), planes=(64, 128, 256, 512), strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.blocks = nn.ModuleList()
        self.ds = nn.ModuleDict()  # keys "1".."3": the first block of stages 2-4 changes shape
        inplanes = 64
        for stage, (count, width, stride, dilation) in enumerate(zip(blocks, planes, strides, dilations)):
            if stride != 1 or inplanes != width:
                self.ds[str(stage)] = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
            layers = [BasicBlock(inplanes, width, stride, dilation)]
            layers += [BasicBlock(width, width, 1, dilation) for _ in range(count - 1)]
            self.blocks.append(nn.ModuleList(layers))
            inplanes = width
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage, layers in enumerate(self.blocks):
            for index, block in enumerate(layers):
                residual = self.ds[str(stage)](x) if index == 0 and str(stage) in self.ds else x
                x = self.relu(block(x) + residual)
        return x


def _conv_bn_relu6(inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(inp, out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expansion: int):
        super().__init__()
        hidden = inp * expansion
        self.use_residual = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += _conv_bn_relu6(inp, hidden, 1)                      # conv.0, conv.1
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, hidden)       # depthwise
        layers += [nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]  # linear bottleneck
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    out_channels = 1280
    output_stride = 32
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self):
        super().__init__()
        features: list[nn.Module] = [nn.Sequential(*_conv_bn_relu6(3, 32, 3, stride=2))]
        inp = 32
        for expansion, channels, count, stride in self.SETTINGS:
            for index in range(count):
                features.append(InvertedResidual(inp, channels, stride if index == 0 else 1, expansion))
                inp = channels
        self.features = nn.Sequential(*features)
        self.conv = nn.Sequential(*_conv_bn_relu6(inp, self.out_channels, 1))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                n = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.features(x))


def build_backbone(name: str) -> nn.Module:
    if name == "resnet34":
        return DeeplabResNet34()
    if name == "mobilenetv2":
        return MobileNetV2()
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
