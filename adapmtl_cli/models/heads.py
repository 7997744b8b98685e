"""The DeepLab-v2 ASPP-L head of the paper (REFERENCE.md 4): four branches at dilations 6, 12,
18 and 24 whose outputs are summed. Module names follow the reference checkpoint
(``fc1..fc4`` with ``conv1..conv3``). PyTorch's default initialisation."""

from __future__ import annotations

from torch import Tensor, nn


class ASPPBranch(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, rate: int, hidden: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=rate, dilation=rate)
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.conv3 = nn.Conv2d(hidden, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.relu(self.conv1(x)))
        x = self.dropout(self.relu(self.conv2(x)))
        return self.conv3(x)


class ASPPHead(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, hidden: int = 1024, rates=(6, 12, 18, 24), dropout: float = 0.5):
        super().__init__()
        for index, rate in enumerate(rates, start=1):
            self.add_module(f"fc{index}", ASPPBranch(in_channels, out_channels, rate, hidden, dropout))
        self.branches = len(rates)

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc1(x)
        for index in range(2, self.branches + 1):
            out = out + getattr(self, f"fc{index}")(x)
        return out
