"""Order statistics over measured values (nearest rank, no interpolation)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile_high(values: Sequence[float], q: float = 0.95) -> float | None:
    """Nearest-rank q-quantile (the smallest value with at least q of the values at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def percentile_low(values: Sequence[float], q: float = 0.95) -> float | None:
    """The mirror of `percentile_high`: the largest value with at least q of the values at or above it."""
    if not values:
        return None
    ordered = sorted(values, reverse=True)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
