"""Factories that build every part of a run from its Config (timm-style): tasks, data, model,
optimizer, scheduler, weighting and the sparsity controller. The training loop only wires them."""

from __future__ import annotations

import torch

from adapmtl_cli.config import Config
from adapmtl_cli.data.sources import source_of
from adapmtl_cli.errors import ConfigError


def num_classes(config: Config) -> int:
    """The segmentation classes of ``config``'s data source (``data/sources.py``)."""
    return source_of(config).num_classes(config.data)


def input_resolution(config: Config) -> int:
    """The side of the square images the model sees, from the key its data source names:
    data.resolution for the synthetic scenes and a data.factory's datasets, the training crop for
    the on-disk datasets."""
    return getattr(config.data, source_of(config).image_size)


def build_tasks(config: Config, class_weights: torch.Tensor | None = None) -> dict:
    """The tasks of ``config``, each kind given the options its constructor names
    (``tasks.task_options``) out of: quirks, num_classes, class_weights and the source's style."""
    from adapmtl_cli.tasks import MetricQuirks, build_task, task_options

    quirks = MetricQuirks(
        miou_tp_only=config.eval.miou_tp_only,
        batch_weighted_means=config.eval.batch_weighted_means,
        depth_unclamped=config.eval.depth_unclamped,
    )
    available = {"quirks": quirks, "num_classes": num_classes(config), "class_weights": class_weights,
                 "style": source_of(config).style}
    tasks = {}
    for name in config.tasks:
        wanted = task_options(name)
        tasks[name] = build_task(name, **{key: value for key, value in available.items() if key in wanted})
    return tasks


def build_network(config: Config, out_channels: dict[str, int]) -> torch.nn.Module:
    """The plain network (no sparsifier): the built-in one of ``config.model``, or the user's
    from ``model.factory``, called with ``out_channels`` ({task: channels}) and
    ``model.factory_args``. A factory's network is checked by one forward of a zero image."""
    if not config.model.factory:
        from adapmtl_cli.models.factory import build_network as build_builtin

        return build_builtin(config, out_channels)
    from adapmtl_cli.models.components import check_outputs
    from adapmtl_cli.plugins import call_factory, load_factory

    spec = config.model.factory
    function = load_factory(spec, "model.factory")
    network = call_factory(function, spec, "model.factory", dict(out_channels), **config.model.factory_args)
    if not isinstance(network, torch.nn.Module):
        raise ConfigError(f"model.factory = {spec!r} returned a {type(network).__name__}, not a torch.nn.Module; "
                          "return the network")
    check_outputs(network, out_channels, input_resolution(config), f"model.factory = {spec!r}")
    return network


def build_model(config: Config, out_channels: dict[str, int], *, sparse: bool | None = None) -> torch.nn.Module:
    """The network of ``config`` with ``model.sparsifier`` attached over its components
    (``model.components``, or ``backbone`` + ``head.<task>``). ``sparse`` overrides
    ``config.sparsity.enabled``; a disabled sparsifier only counts the components' zeros."""
    from adapmtl_cli.engine.sparsifier import Sparsifier
    from adapmtl_cli.models.components import resolve_components

    network = build_network(config, out_channels)
    origin = f"the model of model.factory = {config.model.factory!r}" if config.model.factory else "the built-in model"
    components = resolve_components(network, config.model.components, list(config.tasks), origin)
    enabled = config.sparsity.enabled if sparse is None else sparse
    network.sparsifier = Sparsifier(network, components, enabled=enabled, granularity=config.sparsity.granularity,
                                    init=config.sparsity.init)
    return network


def build_model_and_tasks(config: Config, class_weights: torch.Tensor | None = None):
    """The tasks of ``config`` and its model, sparsifier attached: every command that rebuilds a
    model (train, a checkpoint's load, the dense copies of prune and export) comes through here."""
    tasks = build_tasks(config, class_weights)
    model = build_model(config, {name: task.out_channels for name, task in tasks.items()})
    return model, tasks


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """One parameter group over every parameter, thresholds, BN and biases included (the paper):
    coupled L2 on a negative s pushes it up, which is what makes the threshold grow."""
    params = [p for p in model.parameters() if p.requires_grad]
    optim = config.optim
    # None, not False: PyTorch then picks its default implementation for the device.
    fused = True if optim.fused else None
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay, fused=fused)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, fused=fused)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.optim.lr_step, gamma=config.optim.lr_gamma)


def build_weighting(config: Config):
    from adapmtl_cli.engine.weighting import build_weighting as build

    num_tasks = len(config.tasks)
    if config.weighting.method == "equal":
        return build("equal", num_tasks)
    normalise_to = 3.0 if config.weighting.quirk_normalise_to_three else None
    # Paper mode weighs each step's losses with weights that include that step's change, as the
    # reference does (one host read per step); standard mode uses the earlier steps' (no sync).
    return build("adaptive", num_tasks, begin=config.weighting.begin, window=config.weighting.window, normalise_to=normalise_to,
                 current_step=config.mode == "paper")


def task_priorities(config: Config) -> torch.Tensor:
    return torch.tensor([config.weighting.priorities.get(t, 1.0) for t in config.tasks], dtype=torch.float64)


def build_controller(config: Config, sparsifier):
    from adapmtl_cli.engine.controllers import FreezeController, ScheduleController

    sparsity = config.sparsity
    unknown = [n for n in sparsity.freeze_only if n not in sparsifier.threshold_names]
    if unknown and sparsifier.enabled:
        raise ConfigError(
            f"sparsity.freeze_only names {unknown[0]!r}, which is no threshold of this model; "
            f"valid: {', '.join(sparsifier.threshold_names)}"
        )
    if sparsity.control == "schedule":
        return ScheduleController(sparsifier, sparsity.target, config.train.steps, sparsity.schedule_start,
                                  sparsity.schedule_end, sparsity.schedule_every, seed=config.seed,
                                  report_every=config.train.log_every)
    return FreezeController(sparsifier, sparsity.target, sparsity.check_every, sparsity.freeze_only, counts_itself=False)


def loader_workers(config: Config) -> int:
    """data.workers, but never more worker processes than this machine has cores: the paper
    presets ask for 4, which would only thrash a 2-core laptop or CI machine."""
    import os

    return min(config.data.workers, os.cpu_count() or 1)


def resolve_device(config: Config) -> torch.device:
    wanted = config.train.device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(wanted)


def place_model(config: Config, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model on its device and in its memory layout; SyncBatchNorm under multi-GPU DDP."""
    from adapmtl_cli.engine import distributed as dist_utils

    model.to(device)
    if dist_utils.is_distributed() and device.type == "cuda":
        # Batch statistics over the global batch, as one process would compute them (gloo on the
        # CPU has no SyncBatchNorm: there each process normalises its own share).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def wrap_distributed(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module the forward goes through: a DistributedDataParallel wrapper under torchrun."""
    from adapmtl_cli.engine import distributed as dist_utils

    if not dist_utils.is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
