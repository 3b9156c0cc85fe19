"""What `bcanalyze` takes and gives: its options, its result and McNemar's test of the flips.

In a module of their own so that both analyses, the result CSVs' (`badcase.py`) and lm-eval samples'
(`lmeval/badcases.py`), build them without importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from logitsdump.compare.stats import mcnemar_exact

#: msit's output folder for bcanalyze, relative to the current directory.
DEFAULT_ANALYZER_DIR = os.path.join("msit_bad_case", "analyzer")
#: msit's output file prefix; the name is `<prefix><YYYYmmddHHMMSS>.csv`.
RESULT_PREFIX = "msit_bad_case_result_"
#: How many keys a warning names before "...".
SHOWN_KEYS = 5


@dataclass(frozen=True)
class BcanalyzeOptions:
    """Inputs of `analyze`: golden and test result CSVs, and the output folder."""

    golden_path: str
    test_path: str
    output_dir: str = DEFAULT_ANALYZER_DIR
    #: lm-eval samples only: the per-doc metric that decides pass/fail (None: the first pass/fail one)
    metric: str | None = None
    #: lm-eval samples only: the filter whose lines are compared (None: the first one logged)
    lm_eval_filter: str | None = None


@dataclass(frozen=True)
class Flips:
    """McNemar's test of the pass/fail flips between two accuracy runs over the same cases.

    Noise flips cases both ways about equally often; a real defect of the test side makes
    `pass_to_fail` outnumber `fail_to_pass`. `p_value` is the exact two-sided test (a binomial with p = 1/2
    over the flipped cases): small means the flips lean one way by more than chance would.
    """

    #: Cases passed and failed on each side (of those judged on both).
    golden_passed: int = 0
    test_passed: int = 0
    judged: int = 0
    #: Golden passed, test failed (McNemar's b).
    pass_to_fail: int = 0
    #: Golden failed, test passed (McNemar's c).
    fail_to_pass: int = 0

    @cached_property
    def p_value(self) -> float:
        """Computed once (the summary line is logged and printed)."""
        return mcnemar_exact(self.pass_to_fail, self.fail_to_pass)

    def describe(self) -> str:
        """One line: both accuracies, the flips each way and the p-value."""
        return (f"golden passed {self.golden_passed}/{self.judged}, test {self.test_passed}/{self.judged}; "
                f"flips pass->fail {self.pass_to_fail}, fail->pass {self.fail_to_pass}, "
                f"McNemar exact p = {self.p_value:.3g}")


@dataclass(frozen=True)
class BcanalyzeResult:
    """What `analyze` found. `output_path` is None when there was no difference."""

    output_path: Path | None
    bad_cases: int
    compared: int
    warnings: tuple[str, ...]
    #: The pass/fail flips of the cases judged on both sides, and McNemar's p-value.
    flips: Flips = Flips()
    #: The parity preflight of the two debug CSVs (`triage.preflight.Preflight`; None for lm-eval samples or
    #: when a provenance file could not be read).
    preflight: Any = None



def first_keys(items) -> str:
    """The first few of `items`, comma-separated, with "..." when there are more (for warnings)."""
    items = list(items)
    shown = ", ".join(items[:SHOWN_KEYS])
    return shown + (", ..." if len(items) > SHOWN_KEYS else "")
