"""Datasets: the built-in synthetic scenes, the paper's on-disk formats, and a user's from data.factory.

Each comes from a data source (``data/sources.py``); importing this package imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapmtl_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from adapmtl_cli.config import Config


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset
    class_weights: torch.Tensor | None = None


def build_datasets(config: Config) -> DataBundle:
    """The train / val / test splits of ``config``'s data source (``sources.source_of``)."""
    from adapmtl_cli.data.sources import source_of

    source = source_of(config)
    if source.needs_root and not config.data.root:
        raise ConfigError(f"data.source = {source.name!r} needs data.root (or --data-root DIR) pointing at the dataset")
    return source.build_datasets(config)
