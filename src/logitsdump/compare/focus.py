"""The step of a case that the report centres on, and why (`CaseRecord.focus_step`, `focus_why`)."""

from __future__ import annotations

from logitsdump.compare.records import CaseRecord
from logitsdump.compare.verdicts import DIVERGENT, INCOMPLETE, PRECISION_SUSPECT


def choose_focus(case: CaseRecord) -> tuple[int | None, str | None]:
    """The step the report centres on, and why.

    A free run: the first argmax change; else, for a divergent or incomplete case,
    the last judged token (the one that failed); else the worst cosine.
    A replayed case: the argmax change where golden was surest (largest flip
    margin), unless the case is precision-suspect without a clear change (drift or
    a failed check): then, as without changes, the step with the largest KL.
    """
    steps = case.steps
    if not steps:
        return None, None
    if case.replayed:
        by_token = {s.token_id: s for s in steps}
        drift_only = case.verdict == PRECISION_SUSPECT and "clear-change" not in case.findings
        changes = [c for c in case.changes if c.token in by_token]
        if changes and not drift_only:
            return max(changes, key=lambda c: c.flip_margin).token, "surest-change"
        measured = [s for s in steps if s.metrics is not None]
        if measured:
            return max(measured, key=lambda s: s.metrics.kl_divergence).token_id, "largest-kl"  # type: ignore[union-attr]
        return steps[0].token_id, "first-step"
    if case.first_diff_token is not None and any(s.token_id == case.first_diff_token for s in steps):
        return case.first_diff_token, "first-change"
    if case.verdict in (DIVERGENT, INCOMPLETE) and 0 < case.tokens_judged <= len(steps):
        return steps[case.tokens_judged - 1].token_id, "failing-step"
    measured = [s for s in steps if s.metrics is not None]
    if measured:
        return min(measured, key=lambda s: s.metrics.cosine_similarity).token_id, "lowest-cosine"  # type: ignore[union-attr]
    return steps[0].token_id, "first-step"
