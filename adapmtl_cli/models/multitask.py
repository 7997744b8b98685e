"""A hard-shared multitask network: one backbone, one head per task, heads at backbone resolution.

Its components (``backbone`` and ``head.<task>``) are what AdapMTL gives a threshold each. Nothing
here knows task names: they come from the config.
"""

from __future__ import annotations

from torch import Tensor, nn


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def components(self) -> dict[str, nn.Module]:
        """Component name -> module, in a fixed order: the backbone, then the heads in task order."""
        return {"backbone": self.backbone, **{f"head.{task}": head for task, head in self.heads.items()}}

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        features = self.backbone(image)
        return {task: head(features) for task, head in self.heads.items()}
