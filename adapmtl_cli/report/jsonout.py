"""Strict JSON for every document adapmtl writes for users (``--json`` output, ``summary.json``,
``metrics.jsonl``, checkpoint metadata): valid for any parser (jq, JavaScript), so never a ``NaN``
or ``Infinity`` literal.

A number that is not finite is an undefined metric (e.g. paper-mode mIoU when no class has a true
positive: the reference's 0/0) and becomes ``null``. Tables show such a value as ``n/a``
(``report.console.format_metric``); readers (``compare``, ``eval --baseline``, the Delta scores)
skip it with a reason.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

# What the human tables print for an undefined (null or non-finite) metric.
UNDEFINED = "n/a"


def is_undefined(value: Any) -> bool:
    """True for ``None`` and for a number that is not finite (NaN, +-inf)."""
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def to_strict(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts: non-finite floats
    become ``None``; numpy and torch scalars (0-d arrays and tensors included) become Python
    numbers; tuples become lists. Containers are walked recursively; other values are kept."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, dict):
        return {key: to_strict(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_strict(value) for value in obj]
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "ndim", None) == 0:  # numpy / torch scalar or 0-d array
        return to_strict(item())
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return to_strict(float(obj))
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """``json.dumps`` of ``to_strict(obj)``, refusing any NaN or Infinity that got through."""
    return json.dumps(to_strict(obj), allow_nan=False, **kwargs)
