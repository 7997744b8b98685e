"""The demo network: a small conv backbone and one small head per task, sized to train in minutes
on a laptop CPU while keeping the paper's shape (a shared trunk at reduced resolution, heads that
hold most of the weights)."""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DemoBackbone(nn.Module):
    """Output stride 4: two strided 3x3 stages, then dilated 3x3 convs for context."""

    output_stride = 4

    def __init__(self, width: int = 32):
        super().__init__()
        layers = (
            _conv_bn_relu(3, width, stride=2)
            + _conv_bn_relu(width, width)
            + _conv_bn_relu(width, 2 * width, stride=2)
            + _conv_bn_relu(2 * width, 2 * width, dilation=2)
            + _conv_bn_relu(2 * width, 2 * width, dilation=4)
        )
        self.features = nn.Sequential(*layers)
        self.out_channels = 2 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class DemoHead(nn.Module):
    """Two 3x3 convs (one dilated) and a 1x1 classifier, all with bias, no normalisation (like the
    ASPP head)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2)
        self.conv3 = nn.Conv2d(hidden, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))
