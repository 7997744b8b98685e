"""Data sources by name: what each one declares and how its train / val / test splits are built.

An entry says how many segmentation classes the source has (or that ``data.num_classes`` gives
them), the metric style of its tasks, which tasks it can provide, which on-disk split is its test
split, and its loader. ``builders`` (class count, style, image size), ``data.build_datasets``,
``data/real.py`` and the config's validation (the names of ``data.source``, the tasks, the class
counts) read it, so a source of your own needs one call::

    register_source(DataSource("toy", build=my_datasets, tasks=("segment_semantic", "toy_level")))

``build(config)`` returns a ``DataBundle``; a name registered before a config is validated is a
valid ``data.source``. ``data.factory`` is the entry ``FACTORY``, used whenever that key is set.

This module imports neither torch nor the config (config.py reads it while validating): a loader
is a callable or a ``"module:attribute"`` string imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapmtl_cli.errors import ConfigError


@dataclass(frozen=True)
class DataSource:
    name: str
    # config -> DataBundle (train, val, test), or "module:function".
    build: Callable[[Any], Any] | str
    # Segmentation classes; None: data.num_classes gives them (and an on-disk loader is told).
    classes: int | None = None
    # The data.num_classes values the source has labels for (empty: any), and why, for the error.
    class_choices: tuple[int, ...] = ()
    class_choices_reason: str = ""
    # Metric style of its tasks (tasks.base.STYLES): "nyuv2" or "taskonomy".
    style: str = "nyuv2"
    # The tasks it can provide; None: whatever `tasks` lists (a data.factory's datasets).
    tasks: tuple[str, ...] | None = None
    # An on-disk source: its dataset class (data/real.py builds the splits from it), the split of
    # its layout used as test, and that it reads data.root.
    dataset: type | str | None = None
    test_split: str = "test"
    needs_root: bool = False
    # The data key that gives the side of the (square) images the model sees: "resolution" or "crop".
    image_size: str = "resolution"
    # The images are in BGR channel order (the AdaShare formats): pictures flip them for display.
    bgr: bool = False

    def num_classes(self, data) -> int:
        """The class count of this source under ``data`` (a config's ``data`` table)."""
        return data.num_classes if self.classes is None else self.classes

    def build_datasets(self, config):
        return _imported(self.build)(config)

    def dataset_class(self) -> type:
        return _imported(self.dataset)


_REAL = "adapmtl_cli.data.real:build_real_datasets"
_BUILTIN = {source.name: source for source in (
    DataSource("synthetic", build="adapmtl_cli.data.synthetic:build_synthetic_datasets",
               tasks=("segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")),
    DataSource("nyuv2", build=_REAL, dataset="adapmtl_cli.data.nyuv2:NYUv2AdaShare", classes=40,
               tasks=("segment_semantic", "normal", "depth_zbuffer"), needs_root=True, image_size="crop", bgr=True),
    # The MTAN layouts have train/ and val/ only: val is the test split (as MTAN and LibMTL use it).
    DataSource("nyuv2-mtan", build=_REAL, dataset="adapmtl_cli.data.nyuv2:NYUv2MTAN", classes=13,
               tasks=("segment_semantic", "normal", "depth_zbuffer"), test_split="val", needs_root=True,
               image_size="crop"),
    # The task order is the column order of taskonomy.json (after the image).
    DataSource("taskonomy", build=_REAL, dataset="adapmtl_cli.data.taskonomy:TaskonomyAdaShare", classes=17,
               style="taskonomy", tasks=("segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture"),
               needs_root=True, image_size="crop", bgr=True),
    # Semantic labels and (inverse) depth only, in label_7/ or label_19/ (data.num_classes).
    DataSource("cityscapes", build=_REAL, dataset="adapmtl_cli.data.cityscapes:CityscapesMTAN",
               class_choices=(7, 19), class_choices_reason="it reads the labels from label_7/ or label_19/",
               tasks=("segment_semantic", "depth_zbuffer"), test_split="val", needs_root=True, image_size="crop"),
)}
_SOURCES: dict[str, DataSource] = dict(_BUILTIN)

# A user's datasets from data.factory (called with the tasks and data.factory_args).
FACTORY = DataSource("data.factory", build="adapmtl_cli.data.custom:build_factory_datasets")


def source_names() -> tuple[str, ...]:
    """The valid values of ``data.source``: every registered source, built-in ones first."""
    return tuple(_SOURCES)


def register_source(source: DataSource, *, replace: bool = False) -> DataSource:
    """Make ``source.name`` a valid ``data.source``; ``replace=True`` lets it take the place of a
    source of the same name. Returns the entry."""
    if not isinstance(source, DataSource):
        raise TypeError(f"register_source takes a DataSource, got {type(source).__name__}")
    if source.name in _SOURCES and not replace:
        raise ValueError(f"a data source named {source.name!r} is registered already; pass replace=True to replace it")
    _SOURCES[source.name] = source
    return source


def unregister_source(name: str) -> None:
    """Remove a registered source; a built-in one comes back as it was."""
    if name in _BUILTIN:
        _SOURCES[name] = _BUILTIN[name]
    else:
        _SOURCES.pop(name, None)


def data_source(name: str) -> DataSource:
    """The entry of ``data.source = name``."""
    source = _SOURCES.get(name)
    if source is None:
        raise ConfigError(f"unknown data.source {name!r}; valid sources: {', '.join(_SOURCES)}")
    return source


def source_of(config) -> DataSource:
    """The source a config's data comes from: ``FACTORY`` when ``data.factory`` is set."""
    return FACTORY if config.data.factory else data_source(config.data.source)


def _imported(target):
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
