"""adapmtl: compress multitask dense-prediction networks with AdapMTL.

The public Python API, for a training loop of your own (README, "Use it in your own loop"):

- :class:`Sparsifier` attaches a learnable soft threshold to each named component of a model
  (Conv2d and Linear weights) and counts sparsity (``stats()``);
- :class:`ScheduleController` lands the overall sparsity on a target along a cubic plan;
  :class:`FreezeController` is the reference's stop rule;
- :class:`AdaptiveWeighting` (AdapMTL's task weights) and :class:`EqualWeighting`;
- :func:`save_checkpoint` / :func:`load_checkpoint`: files that ``adapmtl inspect``, ``export``
  and ``prune`` read like a CLI run's.

Everything else is internal and may change. Importing this package imports nothing heavy: the
names are resolved on first use, so ``adapmtl --help`` and ``adapmtl inspect`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["Sparsifier", "ScheduleController", "FreezeController", "AdaptiveWeighting", "EqualWeighting",
           "save_checkpoint", "load_checkpoint"]

_LOCATIONS = {
    "Sparsifier": "adapmtl_cli.engine.sparsifier",
    "ScheduleController": "adapmtl_cli.engine.controllers",
    "FreezeController": "adapmtl_cli.engine.controllers",
    "AdaptiveWeighting": "adapmtl_cli.engine.weighting",
    "EqualWeighting": "adapmtl_cli.engine.weighting",
    "save_checkpoint": "adapmtl_cli.api",
    "load_checkpoint": "adapmtl_cli.api",
}


def __getattr__(name: str):
    if name in _LOCATIONS:
        import importlib

        value = getattr(importlib.import_module(_LOCATIONS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adapmtl_cli' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
