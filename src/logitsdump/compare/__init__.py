"""`logitsdump compare` (msit `logitscmp`): per-token metrics and per-case verdicts for two logits folders.

The names below are imported on first use, so that `logitsdump.compare.verdicts` (the CLI's help
text) can be imported without numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from logitsdump.compare.options import CompareOptions
    from logitsdump.compare.run import CompareSummary, run_compare

__all__ = ["CompareOptions", "CompareSummary", "run_compare"]


def __getattr__(name: str) -> Any:
    if name == "CompareOptions":
        from logitsdump.compare.options import CompareOptions

        return CompareOptions
    if name in ("CompareSummary", "run_compare"):
        from logitsdump.compare import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
