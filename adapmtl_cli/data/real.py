"""Build the train / val / test splits of an on-disk dataset from the config."""

from __future__ import annotations

from adapmtl_cli.config import Config
from adapmtl_cli.data import DataBundle
from adapmtl_cli.data.base import split_indices


def build_real_datasets(config: Config) -> DataBundle:
    from adapmtl_cli.builders import num_classes
    from adapmtl_cli.data.cityscapes import CityscapesMTAN
    from adapmtl_cli.data.nyuv2 import NYUv2AdaShare, NYUv2MTAN
    from adapmtl_cli.data.taskonomy import TaskonomyAdaShare

    source = config.data.source
    kind = {"nyuv2": NYUv2AdaShare, "nyuv2-mtan": NYUv2MTAN, "taskonomy": TaskonomyAdaShare, "cityscapes": CityscapesMTAN}[source]
    # The MTAN layouts have train/ and val/ only: val is the test split (as MTAN and LibMTL use it).
    test_split = "val" if source in ("nyuv2-mtan", "cityscapes") else "test"
    options = dict(mode=config.mode, crop=config.data.crop, seed=config.seed)
    if source == "cityscapes":
        options["num_classes"] = num_classes(config)  # the label folder, the task and the model agree
    full_train = kind(config.data.root, "train", config.tasks, augment=True, **options)
    # Standard mode selects on a validation split carved from train; paper mode selects on test
    # (train.select_on = "test"), and its val split is then unused.
    train_idx, val_idx = split_indices(len(full_train), config.data.val_fraction, config.seed)
    if config.train.select_on == "test":
        train_idx = list(range(len(full_train)))
    train = kind(config.data.root, "train", config.tasks, augment=True, indices=train_idx, **options)
    val = kind(config.data.root, "train", config.tasks, augment=False, indices=val_idx, **options)
    test = kind(config.data.root, test_split, config.tasks, augment=False, **options)
    return DataBundle(train=train, val=val, test=test, class_weights=getattr(train, "class_weights", None))
