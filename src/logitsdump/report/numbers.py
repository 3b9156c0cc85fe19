"""How the HTML page and the terminal summary print a number (each with its own dash for "none")."""

from __future__ import annotations


def general(value: float | None, digits: int, missing: str) -> str:
    """`value` to `digits` significant digits, or `missing` when there is none."""
    return missing if value is None else f"{value:.{digits}g}"


def cosine(value: float | None, missing: str) -> str:
    """A cosine similarity to 6 decimals (they differ in the last places), or `missing`."""
    return missing if value is None else f"{value:.6f}"


def percent(value: float | None, missing: str, digits: int | None = None) -> str:
    """A fraction in percent: to `digits` decimals (rates), or to 3 significant digits when None (Δp,
    often far below 1 %), or `missing`."""
    if value is None:
        return missing
    return f"{value * 100:.{digits}f}%" if digits is not None else f"{value * 100:.3g}%"
