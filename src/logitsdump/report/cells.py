"""Short texts for the page's cells: numbers ('–' or '?' for a value a case does not have) and the two
sides' names."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from logitsdump.compare.lenient import finite_float
from logitsdump.report import numbers

if TYPE_CHECKING:
    from logitsdump.report.load import CompareResult


def fmt(value: float | None) -> str:
    return numbers.general(value, 4, "–")


def fmt_cos(value: float | None) -> str:
    return numbers.cosine(value, "–")


def fmt_number(value: Any) -> str:
    number = finite_float(value)
    return escape(f"{number:g}") if number is not None else "?"


def fmt_int(value: Any) -> str:
    return escape(str(value)) if isinstance(value, int) else "?"


def fmt_pct(p: float) -> str:
    if p >= 0.001:
        return f"{p * 100:.2f}%"
    return f"{p:.2e}"


def golden_name(result: CompareResult) -> str:
    return device_name(result, golden=True)


def test_name(result: CompareResult) -> str:
    return device_name(result, golden=False)


def device_name(result: CompareResult, *, golden: bool) -> str:
    """`fp32 · cpu` from the first manifest that says, else `golden` / `test`."""
    name = result.index.golden_device if golden else result.index.test_device
    return name or ("golden" if golden else "test")
