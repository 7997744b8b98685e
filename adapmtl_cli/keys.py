"""State-dict keys of a sparsified model under the names the plain model uses.

A sparsified layer's raw weight W lives at ``<module>.parametrizations.weight.original`` (a
``torch.nn.utils.parametrize`` parametrization, docs/internals.md); checkpoints, exports and
``rewind`` name it ``<module>.weight``, as an ordinary Conv2d or Linear does. No imports: io/ and
engine/ both use it.
"""

PARAMETRIZED_WEIGHT = ".parametrizations.weight.original"


def plain_key(key: str) -> str:
    """``layer.parametrizations.weight.original`` -> ``layer.weight``; any other key unchanged."""
    return key.replace(PARAMETRIZED_WEIGHT, ".weight")
