"""Reading compare's case JSON of schema version 1 (logitsdump before the records) as version 2.

Version 1 named the change margins `golden_margin`/`my_margin` (now `flip_margin`/`my_flip_margin`), had
no `unavailable` flag on steps, and said what the judge found and which step to look at only in the
words of `reason`, whose wording it fixed: those are derived here from the verdict and those phrases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from logitsdump.compare.focus import choose_focus
from logitsdump.compare.records import ONLY_IN_GOLDEN, ONLY_IN_MY, CaseRecord
from logitsdump.compare.verdicts import DIVERGENT, INCOMPLETE, NOISE, PRECISION_SUSPECT, TIE_FLIP


def upgrade_document(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Compare's case JSON as `CompareDocument.from_dict` reads it: a version-1 document with its cases
    upgraded (`upgrade_case`) and marked version 2; any other returned as it is."""
    if data.get("schema_version") != 1 or not isinstance(data.get("cases"), list):
        return data
    cases = [upgrade_case(c) for c in data["cases"] if isinstance(c, Mapping)]
    return {**data, "schema_version": 2, "cases": cases}


def upgrade_case(case: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 case as version 2: renamed change margins, `unavailable` steps, and the findings and
    focus that version 1 only said in words (its `reason`, whose wording version 1 fixed)."""
    data = dict(case)
    changes = []
    for change in data.get("changes") or []:
        if isinstance(change, Mapping):
            change = dict(change)
            change["flip_margin"] = change.pop("golden_margin", None)
            change["my_flip_margin"] = change.pop("my_margin", None)
            changes.append(change)
    data["changes"] = changes
    steps = []
    for step in data.get("steps") or []:
        if isinstance(step, Mapping):
            step = dict(step)
            step.setdefault("unavailable", _v1_unavailable(str(step.get("reason") or "")))
            steps.append(step)
    data["steps"] = steps
    record = CaseRecord.from_dict(data)
    findings = _v1_findings(record)
    step, why = choose_focus(replace(record, findings=findings))
    data["findings"], data["focus_step"], data["focus_why"] = list(findings), step, why
    return data


def _v1_unavailable(reason: str) -> bool:
    """Version 1's reasons for a file missing or unreadable (the pairing's and the loader's words)."""
    return reason in (ONLY_IN_GOLDEN, ONLY_IN_MY) or "unreadable" in reason


def _v1_findings(case: CaseRecord) -> tuple[str, ...]:
    """What version 1's judge found, from its verdict and its reason's fixed phrases, in the judge's order."""
    reason, verdict = case.reason, case.verdict
    if verdict == INCOMPLETE:
        return ("missing",)
    if verdict in (NOISE, TIE_FLIP):
        return ("near-tie-change",)
    if verdict == DIVERGENT:
        if "fails the thresholds" in reason:
            return ("threshold-fail",)
        return ("clear-change",) if "argmax" in reason else ("failed-check",)
    if verdict != PRECISION_SUSPECT:
        return ()
    found = []
    if any(part.startswith("token ") for part in reason.split("; ")):  # "token N: <the check that failed>"
        found.append("failed-check")
    if "with a clear golden margin" in reason:
        found.append("clear-change")
    if "drift apart" in reason:
        found.append("drift")
    return tuple(found)
