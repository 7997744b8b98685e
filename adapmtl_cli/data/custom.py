"""A user's datasets from ``data.factory``: called with the task list and ``data.factory_args``,
it returns the train, val and test splits, as a dict ``{"train", "val", "test"}`` or a 3-tuple.

Before any step, the first item of each split is checked against the conventions of
docs/internals.md: ``(image float32 [3, H, W], {task: target})`` with segmentation int64
``[H, W]`` (classes ``0..num_classes-1``, 255 = ignore) and every other target float32
``[C, H, W]`` (NaN = invalid). A wrong return is a ConfigError (exit 2), a wrong item a DataError
(exit 3), each one line naming data.factory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from adapmtl_cli.config import Config
from adapmtl_cli.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
IGNORE = 255


def build_factory_datasets(config: Config):
    from adapmtl_cli.builders import build_tasks
    from adapmtl_cli.data import DataBundle
    from adapmtl_cli.plugins import call_factory, describe_exception, load_factory

    spec = config.data.factory
    label = f"data.factory = {spec!r}"
    function = load_factory(spec, "data.factory")
    returned = call_factory(function, spec, "data.factory", list(config.tasks), **config.data.factory_args)
    splits = _splits_of(returned, label)
    channels = {name: task.out_channels for name, task in build_tasks(config).items()}
    for split, dataset in zip(SPLITS, splits):
        try:
            item = dataset[0]
        except Exception as exc:  # noqa: BLE001 - a user's dataset may raise anything
            raise DataError(f"{label}: reading {split} item 0 raised {describe_exception(exc)}") from None
        check_item(item, channels, config.data.num_classes, f"{label}: {split} item 0")
    return DataBundle(train=splits[0], val=splits[1], test=splits[2])


def _splits_of(returned, label: str) -> list:
    if isinstance(returned, Mapping):
        missing = [split for split in SPLITS if split not in returned]
        if missing:
            raise ConfigError(f"{label} returned a dict without {missing[0]!r}; return {{'train': ..., 'val': ..., 'test': ...}}")
        splits = [returned[split] for split in SPLITS]
    elif isinstance(returned, Sequence) and not isinstance(returned, (str, bytes)) and len(returned) == 3:
        splits = list(returned)
    else:
        what = f"a {len(returned)}-item {type(returned).__name__}" if isinstance(returned, (tuple, list)) else f"a {type(returned).__name__}"
        raise ConfigError(f"{label} returned {what}; return the train, val and test datasets as a 3-tuple or a dict "
                          "with keys train, val, test")
    for split, dataset in zip(SPLITS, splits):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")) or isinstance(dataset, torch.Tensor):
            raise ConfigError(f"{label} returned a {type(dataset).__name__} as the {split} split; return a dataset with "
                              "__len__ and __getitem__ (a torch.utils.data.Dataset)")
        try:
            size = len(dataset)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{label}: len() of the {split} split raised {type(exc).__name__}") from None
        if size < 1:
            raise ConfigError(f"{label} returned an empty {split} split; every split needs at least one item")
    return splits


def check_item(item, channels: Mapping[str, int], num_classes: int, where: str) -> None:
    """One dataset item against the documented conventions; a fault is a one-line DataError."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"{where} is a {type(item).__name__}; an item is a pair (image, {{task: target}})")
    image, targets = item
    if not isinstance(image, torch.Tensor) or image.dtype != torch.float32 or image.dim() != 3 or image.shape[0] != 3:
        raise DataError(f"{where}: the image is {_describe(image)}; expected float32 [3, H, W]")
    height, width = image.shape[1:]
    if not isinstance(targets, Mapping):
        raise DataError(f"{where}: the targets are a {type(targets).__name__}; expected a dict {{task: target}}")
    for task, count in channels.items():
        if task not in targets:
            given = ", ".join(map(str, targets)) or "none"
            raise DataError(f"{where}: no target for task {task!r} (targets: {given}); give one per task of `tasks`")
        target = targets[task]
        if task == "segment_semantic":
            if not isinstance(target, torch.Tensor) or target.dtype != torch.int64 or tuple(target.shape) != (height, width):
                raise DataError(f"{where}: target {task!r} is {_describe(target)}; expected int64 [{height}, {width}] "
                                f"(classes 0..{num_classes - 1}, {IGNORE} = ignore)")
            bad = target[(target != IGNORE) & ((target < 0) | (target >= num_classes))]
            if bad.numel():
                raise DataError(f"{where}: target {task!r} holds class {int(bad[0])}, outside 0..{num_classes - 1} and not "
                                f"{IGNORE} (ignore); set data.num_classes or fix the labels")
        elif (not isinstance(target, torch.Tensor) or target.dtype != torch.float32
              or tuple(target.shape) != (count, height, width)):
            raise DataError(f"{where}: target {task!r} is {_describe(target)}; expected float32 [{count}, {height}, {width}] "
                            "(NaN = invalid pixel)")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    return f"a {type(value).__name__}"
