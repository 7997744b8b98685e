"""The one-shot pruning methods and scopes, by name (REFERENCE.md 10): the one list that
``engine.pruning.compute_masks`` dispatches on, the workflows check and the CLI's ``--method`` and
``--scope`` offer. Torch-free, so the CLI can read it without making ``adapmtl --help`` slow.

Each method names the ``engine.pruning`` function that computes its masks. A method scored from the
weights alone (``needs_data=False``) takes ``(weights, components, ratio, scope)``; one scored
through the model's forward (saliency, ``needs_data=True``) takes ``(model, batches, loss_fn,
ratio, scope)``. Optional keywords (``generator``, ``match_overall``) reach the functions whose
signatures name them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PruneMethod:
    name: str
    function: str  # the engine.pruning function that computes the masks
    needs_data: bool  # scored from a few batches and a loss through the model (SNIP, DiSparse)


METHODS: dict[str, PruneMethod] = {method.name: method for method in (
    PruneMethod("magnitude", "magnitude_masks", needs_data=False),
    PruneMethod("snip", "snip_masks", needs_data=True),
    PruneMethod("disparse", "disparse_masks", needs_data=True),
    PruneMethod("random", "random_masks", needs_data=False),
)}
# What a group is, within which the ratio applies: every layer together, each component, each layer.
SCOPES = ("global", "component", "layer")


def spoken_list(names) -> str:
    """``a, b, c or d``: names as a sentence lists them."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
