"""The sparsifier: soft-threshold weights of a model's named components, and their counts.

Every ``nn.Conv2d`` and ``nn.Linear`` weight W of a sparsified component (subclasses included,
e.g. ``nn.MultiheadAttention``'s ``out_proj``; STR sparsifies both kinds) is replaced, through
``torch.nn.utils.parametrize``, by its soft shrink (``engine/shrink.py``) by t = sigmoid(s), with
``s`` a learnable scalar shared by the whole component (``component`` granularity, AdapMTL's), by
one layer (``layer``, STR's) or by the whole model (``global``, the paper's ablation). Biases are
never thresholded. A weight that is a bare ``nn.Parameter`` of some other module
(``nn.MultiheadAttention.in_proj_weight``) is not a Linear layer's and is left dense and uncounted.

The model's forward pre-hook builds every group's W_eff before the forward, so a weight read by
attribute anywhere inside it (``nn.MultiheadAttention`` passes ``out_proj.weight`` to
``F.multi_head_attention_forward``) is W_eff; a layer used outside the model's forward
(``model.backbone(x)``, ``conv.weight``) shrinks its own weight. The sparsifier counts zeros on
the device (layer, component, overall) with no host sync, by the rule of ``adapmtl_cli.counting``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from adapmtl_cli.counting import sparsity_report, threshold_value
from adapmtl_cli.keys import plain_key
from adapmtl_cli.engine import shrink
from adapmtl_cli.engine.shrink import SoftShrinkGroup, count_at_most, threshold_tensor

Granularity = Literal["component", "layer", "global"]
# The layer types whose ``weight`` is sparsified (and counted), subclasses included. Every path of
# the shrink works on any contiguous weight; only the channels_last special cases are 4-d (conv) only.
SPARSIFIED_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


class SoftThreshold(nn.Module):
    """The parametrization of one layer weight (Conv2d or Linear): soft shrink by sigmoid of a
    shared scalar.

    The threshold parameter lives in the :class:`Sparsifier`; this module only points at it, so
    each threshold is stored once however many layers share it. Inside the model's forward it hands
    out the W_eff the sparsifier built for its whole group; elsewhere it shrinks its own weight. It
    also owns the layer's persistent W_eff buffer (CPU only, never saved): ``layer.weight`` returns a
    view of it, which the next forward overwrites once nobody holds it any more; clone it to keep it.
    """

    def __init__(self, sparsifier: Sparsifier, index: int, layer: int):
        super().__init__()
        # A plain attribute, not a submodule: registering it would make a cycle in the module tree.
        object.__setattr__(self, "_sparsifier", sparsifier)
        self.index = index  # of the threshold
        self.layer = layer  # of the weight in the sparsifier's layer list
        self._buffer: Tensor | None = None
        self._lent_to = None  # weak reference to the last W_eff handed out

    def forward(self, weight: Tensor) -> Tensor:
        prepared = self._sparsifier._prepared
        if prepared is not None:
            return prepared[self.layer]
        return SoftShrinkGroup.apply(self._sparsifier.thresholds[self.index], (self,), weight)[0]

    def lend_buffer(self, like: Tensor) -> Tensor | None:
        """The persistent buffer shaped like ``like``, or None while the last W_eff is still held."""
        if self._lent_to is not None and self._lent_to() is not None:
            return None
        buffer = self._buffer
        if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype or buffer.stride() != like.stride():
            buffer = self._buffer = torch.empty_like(like, memory_format=torch.preserve_format)
        return buffer

    def lent(self, alias: Tensor) -> Tensor:
        self._lent_to = weakref.ref(alias)
        return alias

    def __getstate__(self):
        # Buffers and weak references do not travel (deepcopy, pickling for DataLoader workers).
        state = self.__dict__.copy()
        state["_buffer"], state["_lent_to"] = None, None
        return state


def _submodule(model: nn.Module, component: str, module: nn.Module | str) -> nn.Module:
    if isinstance(module, nn.Module):
        return module
    try:
        return model.get_submodule(module)
    except AttributeError:
        raise ValueError(f"component {component!r}: the model has no submodule {module!r}") from None


@dataclass(frozen=True)
class SparseLayer:
    """One sparsified (or merely counted) Conv2d or Linear weight."""

    key: str  # state-dict key of the weight in the plain (unparametrized) model, e.g. "heads.normal.fc1.conv1.weight"
    component: str
    threshold: str | None  # name of its threshold; None when the layer is only counted (dense models)
    numel: int


class Sparsifier(nn.Module):
    """Owns the thresholds of a model and counts the sparsity of its layer weights: every
    ``nn.Conv2d`` and ``nn.Linear`` (``SPARSIFIED_LAYER_TYPES``, subclasses included) inside the
    components, never their biases.

    ``components`` maps a component name (``backbone``, ``head.<task>``, or any name) to the
    submodule that holds its layers, given as the module or as its dotted path in ``model``
    (``"encoder.layer3"``); layers outside every component stay dense. The sparsifier attaches
    itself as ``model.sparsifier``, so the thresholds are parameters of the model: an optimizer
    over ``model.parameters()`` trains them. With ``enabled=False`` no threshold is attached and
    the layers are only counted (exact zeros of the weights), so dense and pruned models report
    sparsity the same way.
    """

    def __init__(
        self,
        model: nn.Module,
        components: dict[str, nn.Module | str],
        *,
        enabled: bool = True,
        granularity: Granularity = "component",
        init: float = -15.0,
    ):
        super().__init__()
        components = {name: _submodule(model, name, module) for name, module in components.items()}
        self.enabled = enabled
        self.granularity = granularity
        self.threshold_names: list[str] = []
        self.thresholds = nn.ParameterList()
        self.layers: list[SparseLayer] = []
        self.component_names = list(components)
        # Plain list: the layers belong to the model, not to us.
        self._layer_modules: list[nn.Module] = []
        self._threshold_of_layer: list[int] = []
        self._owners: list[SoftThreshold] = []
        # Each parametrized layer's ParametrizationList, which holds the raw W as ``.original``:
        # reaching it through the layer costs 5 us a layer, per forward.
        self._holders: list[nn.Module] = []
        # Every layer's W_eff while the model's forward runs (built by one autograd node per
        # threshold in the pre-hook), None outside it.
        self._prepared: list[Tensor] | None = None
        prefixes = {id(module): name for name, module in model.named_modules()}
        for component, module in components.items():
            for layer in module.modules():
                if isinstance(layer, SPARSIFIED_LAYER_TYPES):
                    self._add_layer(prefixes[id(layer)], component, layer, init)
        if not self.layers:
            raise ValueError("no Conv2d or Linear layer found in the components to sparsify")
        self._register_index_buffers()
        self._groups = [[layer for layer, index in enumerate(self._threshold_of_layer) if index == threshold]
                        for threshold in range(len(self.threshold_names))]
        self._group_owners = [tuple(self._owners[layer] for layer in layers) for layers in self._groups]
        if self.enabled:
            model.register_forward_pre_hook(self._build_effective_weights)
            model.register_forward_hook(self._drop_effective_weights, always_call=True)
        model.sparsifier = self  # the thresholds become parameters of the model

    def forward(self, x):
        """Identity. The sparsifier is a child module of the model it sparsifies (so the thresholds
        are the model's parameters), and an ``nn.Sequential`` model calls every child in turn."""
        return x

    # -- construction ------------------------------------------------------------------------

    def _threshold_name(self, layer_name: str, component: str) -> str:
        if self.granularity == "component":
            return component
        if self.granularity == "layer":
            return layer_name
        return "global"

    @property
    def _convs(self) -> list[nn.Module]:
        """The old name of ``_layer_modules`` (from when only convs were sparsified)."""
        return self._layer_modules

    def _add_layer(self, layer_name: str, component: str, module: nn.Module, init: float) -> None:
        threshold = None
        index = -1
        if self.enabled:
            threshold = self._threshold_name(layer_name, component)
            if threshold not in self.threshold_names:
                self.threshold_names.append(threshold)
                self.thresholds.append(nn.Parameter(torch.tensor(float(init))))
            index = self.threshold_names.index(threshold)
            owner = SoftThreshold(self, index, len(self.layers))
            parametrize.register_parametrization(module, "weight", owner, unsafe=True)
            self._owners.append(owner)
            self._holders.append(module.parametrizations["weight"])
        self._layer_modules.append(module)
        self._threshold_of_layer.append(index)
        self.layers.append(SparseLayer(f"{layer_name}.weight", component, threshold, module.weight.numel()))

    def _register_index_buffers(self) -> None:
        # Non-persistent: derived from the model's structure, never saved.
        self.register_buffer("_layer_numel", torch.tensor([l.numel for l in self.layers], dtype=torch.float64), persistent=False)

    # -- the forward -------------------------------------------------------------------------

    def _build_effective_weights(self, module: nn.Module, args) -> None:
        prepared: list[Tensor | None] = [None] * len(self.layers)
        holders = self._holders
        for threshold, layers, owners in zip(self.thresholds, self._groups, self._group_owners):
            effective = SoftShrinkGroup.apply(threshold, owners, *[holders[layer].original for layer in layers])
            for layer, weight in zip(layers, effective):
                prepared[layer] = weight
        self._prepared = prepared

    def _drop_effective_weights(self, module: nn.Module, args, output) -> None:
        # Dropping our references lets the next forward reuse the buffers once backward is done.
        self._prepared = None

    # -- the numbers -------------------------------------------------------------------------

    def raw_weight(self, layer: int) -> Tensor:
        if self.enabled:
            return self._holders[layer].original
        module = self._layer_modules[layer]
        if parametrize.is_parametrized(module, "weight"):
            return module.parametrizations.weight.original
        return module.weight

    def threshold_values(self) -> Tensor:
        """t = sigmoid(s) of every threshold, float32, in ``threshold_names`` order, by the one
        rule of :mod:`adapmtl_cli.counting` (what the forward shrinks by and every count uses)."""
        if not self.enabled:
            return torch.zeros(0)
        s = torch.stack(list(self.thresholds)).detach()
        if shrink.on_host(s):
            return torch.tensor([threshold_value(v) for v in s.tolist()], dtype=torch.float32)
        return threshold_tensor(s)

    @torch.no_grad()
    def layer_zeros(self) -> Tensor:
        """Zeros of W_eff per layer, as float64 on the weights' device; no host synchronisation.

        W_eff is zero exactly where |W| <= sigmoid(s), so the effective weights are never built.
        The stop rule asks for this every step, so on the CPU it counts big layers in cache-sized
        chunks (``count_at_most``): a whole-tensor ``(|W| <= t).sum()`` writes two temporaries
        and widens the mask to int64, 6.6x slower on 47M weights (377 against 57 ms) than a
        chunked compare-and-count, which the present dot of signs beats by another 10-25%.
        """
        counts = []
        thresholds = self.threshold_values() if self.enabled else None
        if thresholds is not None and shrink.on_host(self.raw_weight(0)):
            thresholds = thresholds.tolist()  # on the CPU reading numbers costs nothing
        for layer, index in enumerate(self._threshold_of_layer):
            weight = self.raw_weight(layer).detach()
            if index < 0:
                counts.append(weight.numel() - torch.count_nonzero(weight))
            elif isinstance(thresholds, list):
                counts.append(count_at_most(weight, thresholds[index]))
            else:
                counts.append((weight.abs() <= thresholds[index].to(weight.dtype)).sum())
        return torch.stack(counts).to(torch.float64)

    @torch.no_grad()
    def overall_sparsity(self) -> Tensor:
        """Overall fraction of zero layer weights (Conv2d and Linear), a 0-d tensor on the device."""
        return self.layer_zeros().sum() / self._layer_numel.sum()

    @torch.no_grad()
    def stats(self) -> SparsityStats:
        """Layer, component and overall zero counts plus thresholds, copied to the host once."""
        zeros = self.layer_zeros()
        thresholds = self.threshold_values().detach().double().to(zeros.device)
        values = torch.cat([zeros, thresholds]).cpu().tolist()  # the one host copy
        n_layers = len(self.layers)
        return SparsityStats.from_counts(self.component_names, self.layers, [int(v) for v in values[:n_layers]],
                                         dict(zip(self.threshold_names, values[n_layers:])))

    def thresholds_of(self, names: list[str] | None) -> list[nn.Parameter]:
        """The threshold parameters of the given threshold names (all when ``names`` is empty)."""
        if not names:
            return list(self.thresholds)
        return [p for n, p in zip(self.threshold_names, self.thresholds) if n in names]


@dataclass
class SparsityStats:
    """Zero counts and the fractions made from them by the one rule of :mod:`adapmtl_cli.counting`."""

    overall: float
    components: dict[str, float]
    layers: dict[str, float]
    thresholds: dict[str, float]
    component_params: dict[str, int]
    component_zeros: dict[str, int]
    layer_zeros: dict[str, int]

    @classmethod
    def from_counts(cls, component_names: list[str], layers: list[SparseLayer], layer_zeros: list[int],
                    thresholds: dict[str, float]) -> SparsityStats:
        params = dict.fromkeys(component_names, 0)
        zeros = dict.fromkeys(component_names, 0)
        for layer, count in zip(layers, layer_zeros):
            params[layer.component] += layer.numel
            zeros[layer.component] += count
        report = sparsity_report(zeros, params)
        return cls(overall=report["overall"], components=report["components"],
                   layers={layer.key: count / layer.numel for layer, count in zip(layers, layer_zeros)},
                   thresholds=thresholds, component_params=params, component_zeros=zeros,
                   layer_zeros={layer.key: count for layer, count in zip(layers, layer_zeros)})

    @property
    def zeros(self) -> int:
        return sum(self.component_zeros.values())

    def __str__(self) -> str:
        """Per component, then per layer: sparsity %, zeros / weights, threshold."""
        lines = [f"overall {100 * self.overall:6.2f}% ({self.zeros} / {sum(self.component_params.values())} zeros)"]
        for name, value in self.components.items():
            threshold = self.thresholds.get(name)
            shown = "" if threshold is None else f", threshold {threshold:.3g}"
            lines.append(f"  {name}: {100 * value:6.2f}% ({self.component_zeros[name]} / {self.component_params[name]}{shown})")
        for key, value in self.layers.items():
            lines.append(f"    {key}: {100 * value:6.2f}%")
        return "\n".join(lines)

    def as_report(self) -> dict:
        """The ``sparsity`` and ``thresholds`` parts of the one report shape (docs/internals.md)."""
        return {"sparsity": sparsity_report(self.component_zeros, self.component_params),
                "thresholds": dict(self.thresholds)}


def effective_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state with every parametrized weight replaced by its effective value W_eff,
    under plain keys: what a deployed dense model loads."""
    state = plain_state_dict(model)
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            state[f"{name}.weight"] = module.weight.detach().clone()
    return state


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state under plain keys: ``layer.parametrizations.weight.original`` becomes
    ``layer.weight`` (the raw W), threshold parameters are left out (stored separately)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("sparsifier."):
            continue
        state[plain_key(key)] = value
    return state
