"""Build the train / val / test splits of an on-disk dataset from the config."""

from __future__ import annotations

from adapmtl_cli.config import Config
from adapmtl_cli.data import DataBundle
from adapmtl_cli.data.base import split_indices


def build_real_datasets(config: Config) -> DataBundle:
    """The splits of an on-disk source (``sources.DataSource.dataset``): train and val carved from
    its train split, test from its ``test_split``."""
    from adapmtl_cli.data.sources import source_of

    source = source_of(config)
    kind = source.dataset_class()
    options = dict(mode=config.mode, crop=config.data.crop, seed=config.seed)
    if source.classes is None:  # data.num_classes picks the labels: the loader, the task and the model agree
        options["num_classes"] = source.num_classes(config.data)
    full_train = kind(config.data.root, "train", config.tasks, augment=True, **options)
    # Standard mode selects on a validation split carved from train; paper mode selects on test
    # (train.select_on = "test"), and its val split is then unused.
    train_idx, val_idx = split_indices(len(full_train), config.data.val_fraction, config.seed)
    if config.train.select_on == "test":
        train_idx = list(range(len(full_train)))
    train = kind(config.data.root, "train", config.tasks, augment=True, indices=train_idx, **options)
    val = kind(config.data.root, "train", config.tasks, augment=False, indices=val_idx, **options)
    test = kind(config.data.root, source.test_split, config.tasks, augment=False, **options)
    return DataBundle(train=train, val=val, test=test, class_weights=getattr(train, "class_weights", None))
