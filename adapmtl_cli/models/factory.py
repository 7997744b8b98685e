"""Build a multitask model from a config: backbone, one head per task, and the sparsifier."""

from __future__ import annotations

from torch import nn

from adapmtl_cli.config import Config
from adapmtl_cli.engine.sparsity import Sparsifier
from adapmtl_cli.models.multitask import MultiTaskModel


def build_backbone_from_config(config: Config) -> nn.Module:
    if config.model.backbone == "demo":
        from adapmtl_cli.models.demo import DemoBackbone

        return DemoBackbone(config.model.width)
    from adapmtl_cli.models.backbones import build_backbone

    return build_backbone(config.model.backbone)


def build_head(config: Config, in_channels: int, out_channels: int) -> nn.Module:
    if config.model.head == "demo":
        from adapmtl_cli.models.demo import DemoHead

        return DemoHead(in_channels, out_channels, hidden=2 * config.model.width)
    from adapmtl_cli.models.heads import ASPPHead

    return ASPPHead(in_channels, out_channels, hidden=config.model.head_hidden, dropout=config.model.dropout)


def build_model(config: Config, out_channels: dict[str, int], *, sparse: bool | None = None) -> MultiTaskModel:
    """The multitask model of ``config`` with ``model.sparsifier`` attached.

    ``out_channels`` maps each task to its output channels (from the task registry), so this
    function needs no knowledge of tasks. ``sparse`` overrides ``config.sparsity.enabled``.
    """
    backbone = build_backbone_from_config(config)
    heads = {task: build_head(config, backbone.out_channels, out_channels[task]) for task in config.tasks}
    model = MultiTaskModel(backbone, heads)
    enabled = config.sparsity.enabled if sparse is None else sparse
    model.sparsifier = Sparsifier(
        model,
        model.components(),
        enabled=enabled,
        granularity=config.sparsity.granularity,
        init=config.sparsity.init,
    )
    return model
