"""The one rule for counting zeros, shared by every reader (the engine, ``inspect``, ``eval``,
``export``, TensorBoard and ``summary.json``). Torch-free, so that ``inspect`` uses it as is.

A sparsified weight is zero exactly where ``|W| <= t``, with ``t`` the threshold value of its
parameter ``s``: ``t = sigmoid(s)`` evaluated in float64 and rounded once to float32 (the dtype
the weights are compared in). Rounding a float64 value is reproducible everywhere (numpy, torch,
plain Python), where a float32 sigmoid is not: its last bit depends on the library's ``exp``, and
two readers one ulp apart disagree on every weight that lies between their two thresholds.

Fractions are always computed from the integer counts here, so two readers that agree on the
counts print bit-identical fractions.
"""

from __future__ import annotations

import math
import struct

# Below this s, sigmoid(s) is under half the smallest float32 subnormal: t is exactly 0 (and
# math.exp(-s) would overflow long before it matters).
_UNDERFLOW_S = -200.0


def threshold_value(s: float) -> float:
    """t = sigmoid(s) rounded to the nearest float32 (returned as a Python float holding that
    float32 value exactly). 0 for very negative s, 1 for s above about 17; NaN stays NaN."""
    s = float(s)
    if s < _UNDERFLOW_S:
        return 0.0
    return to_float32(1.0 / (1.0 + math.exp(-s)))


def to_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even), as a Python float."""
    if math.isnan(value):
        return value
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # beyond float32's range
        return math.copysign(math.inf, value)


def fraction(zeros: int, params: int) -> float:
    """zeros / params as a fraction (0 for an empty set of weights)."""
    return zeros / params if params else 0.0


def sparsity_report(zeros: dict[str, int], params: dict[str, int]) -> dict:
    """The ``sparsity`` part of the one report shape from per-component integer counts:
    ``{"overall": f, "components": {name: f}, "zeros": {name: n}, "params": {name: n}}``."""
    total_zeros, total_params = sum(zeros.values()), sum(params.values())
    return {
        "overall": fraction(total_zeros, total_params),
        "components": {name: fraction(zeros[name], params[name]) for name in params},
        "zeros": {name: int(zeros[name]) for name in params},
        "params": {name: int(params[name]) for name in params},
    }
