"""Datasets: the built-in synthetic scenes, the paper's on-disk formats, and a user's from data.factory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from adapmtl_cli.config import Config
from adapmtl_cli.errors import ConfigError


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset
    class_weights: torch.Tensor | None = None


def build_datasets(config: Config) -> DataBundle:
    if config.data.factory:
        from adapmtl_cli.data.custom import build_factory_datasets

        return build_factory_datasets(config)
    source = config.data.source
    if source == "synthetic":
        return _synthetic(config)
    if not config.data.root:
        raise ConfigError(f"data.source = {source!r} needs data.root (or --data-root DIR) pointing at the dataset")
    from adapmtl_cli.data.real import build_real_datasets

    return build_real_datasets(config)


def _synthetic(config: Config) -> DataBundle:
    from adapmtl_cli.data.synthetic import SyntheticScenes

    data = config.data

    def split(name: str, size: int) -> SyntheticScenes:
        return SyntheticScenes(config.tasks, size=size, resolution=data.resolution, num_classes=data.num_classes, seed=config.seed, split=name)

    return DataBundle(train=split("train", data.train_size), val=split("val", data.val_size), test=split("test", data.test_size))
