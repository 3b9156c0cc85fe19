"""Lenient readers of the records' JSON fields: a missing or mistyped value becomes None.

A hand-edited or older file still loads: each reader takes any JSON value and returns the typed value or None.
"""

from __future__ import annotations

import math
from typing import Any


def read_typed(value: Any, kind: type) -> Any:
    """`value` read as `kind` (bool, int or float)."""
    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind is int:
        return read_int(value)
    return finite_float(value)


def finite_float(value: Any) -> float | None:
    """`value` as a finite float, else None (None, booleans, text that is no number, NaN, infinities)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float's range
        return None
    return number if math.isfinite(number) else None


def read_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None


def read_ints(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(number for number in (read_int(v) for v in value) if number is not None)


def read_key(value: Any) -> int | str | None:
    if isinstance(value, bool) or value is None:
        return None
    return value if isinstance(value, (int, str)) else str(value)


def read_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
