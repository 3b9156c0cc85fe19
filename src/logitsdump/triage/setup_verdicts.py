"""compare's hook: run the preflight on the two dump folders, and give the cases whose set-ups differ
the `setup-differs` verdict instead of a numerics one (their numerics verdict stays in the reason)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from logitsdump.compare.records import CaseRecord
from logitsdump.compare.verdicts import SETUP_DIFFERS
from logitsdump.errors import DataError
from logitsdump.logs import get_logger
from logitsdump.triage.preflight import Preflight, preflight
from logitsdump.triage.sides import Side, load_dump

_log = get_logger("compare")
#: The finding code of a set-up verdict, and the prefix of its causes' codes (`CaseRecord.findings`).
SETUP_FINDING = "setup-differs"
CAUSE_PREFIX = "setup:"


def mark_setup_cases(cases: Sequence[CaseRecord], golden_dir: Path, my_dir: Path) -> tuple[list[CaseRecord],
                                                                                             dict[str, Any]]:
    """The cases (those whose set-ups differ re-judged as `setup-differs`) and the preflight as a dict."""
    golden, test = _side(golden_dir), _side(my_dir)
    result = preflight(golden, test)
    marked = [_marked(case, result, golden, test) for case in cases]
    return marked, result.to_dict()


def _marked(case: CaseRecord, result: Preflight, golden: Side, test: Side) -> CaseRecord:
    key = _key_of(case, golden) or _key_of(case, test)
    causes = result.case_causes.get(key) if key is not None else None
    if not causes:
        return case
    reason = result.case_reasons.get(key, "")
    return replace(
        case, verdict=SETUP_DIFFERS,
        reason=f"set-up differs: {reason}. Numerics alone would say {case.verdict} ({case.reason})",
        findings=(SETUP_FINDING, *(CAUSE_PREFIX + c for c in causes), *case.findings),
    )


def _key_of(case: CaseRecord, side: Side) -> str | None:
    for step in case.steps:
        key = side.file_keys.get(step.file_name)
        if key is not None:
            return key
    return None


def _side(folder: Path) -> Side:
    """The dump folder as a preflight side; a provenance file that cannot be read is a warning (compare goes
    on with its numbers, the preflight says "not recorded")."""
    try:
        return load_dump(folder)
    except DataError as err:
        _log.warning("preflight: %s: comparing without that side's provenance", err)
        return Side(folder, "dump", None, not_recorded=(str(err),))
