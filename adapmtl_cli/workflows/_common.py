"""What several commands share: the data a checkpoint is evaluated (``eval``, ``compare``) or
scored (``prune`` with SNIP / DiSparse) on."""

from __future__ import annotations

from adapmtl_cli.config import Config


def _evaluation_data_config(config: Config, data_root: str | None) -> tuple[Config, str]:
    config = config.model_copy(deep=True)
    if config.data.factory:
        return config, f"data.factory = {config.data.factory!r}"
    if data_root is not None:
        config.data.root = data_root
    from adapmtl_cli.data.sources import data_source

    if data_source(config.data.source).needs_root and not config.data.root:
        from adapmtl_cli.builders import num_classes

        config.data.num_classes = num_classes(config)  # the model's classes, before the source changes
        config.data.source = "synthetic"
        config.data.workers = 0  # generated in-process faster than worker processes start
        return config, "synthetic scenes (no data root given; pass --data-root for the real dataset)"
    if config.data.source == "synthetic":
        return config, f"synthetic scenes (seed {config.seed}, {config.data.resolution}px)"
    return config, f"{config.data.source} at {config.data.root}"
