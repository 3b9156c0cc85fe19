"""`logitsdump compare` (msit `logitscmp`): per-token metrics and per-case verdicts for two logits folders."""

from logitsdump.compare.run import CompareOptions, CompareSummary, run_compare

__all__ = ["CompareOptions", "CompareSummary", "run_compare"]
