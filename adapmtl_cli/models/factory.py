"""Build the built-in multitask network from a config: a backbone and one head per task.

Nothing under ``adapmtl_cli.models`` imports the engine: the sparsifier is attached from outside
(``adapmtl_cli.builders``), the same way for these networks and for a user's ``model.factory``."""

from __future__ import annotations

from torch import nn

from adapmtl_cli.config import Config
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


def build_network(config: Config, out_channels: dict[str, int]) -> MultiTaskModel:
    """The built-in multitask network of ``config``: a backbone and one head per task, plain
    (no sparsifier: :func:`adapmtl_cli.builders.build_model` attaches it from outside).

    ``out_channels`` maps each task to its output channels (from the task registry), so this
    function needs no knowledge of tasks.
    """
    backbone = build_backbone_from_config(config)
    heads = {task: build_head(config, backbone.out_channels, out_channels[task]) for task in config.tasks}
    return MultiTaskModel(backbone, heads)
