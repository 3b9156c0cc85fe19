"""Per-row results and the per-case verdict: precision bug or numerical noise?

A case is the files of one (subject, key), one per generated token. Its
tokens are judged in order up to and including the first token where the
argmax differs; later tokens are reported, not judged (the two runs were fed
different prefixes from then on).

Verdicts (see docs/compare.md):
- `identical`: every judged token is bitwise equal;
- `consistent`: every token passes the thresholds and the argmax never differs;
- `tie-flip`: the tokens before the first argmax change pass, and at the change
  golden's own logits had the test's choice within `tie_tolerance` of its top-1
  (`g[golden_top1] - g[my_top1] <= tie_tolerance`, in logits);
- `divergent`: a token fails before the first change, or the change is not a tie;
- `incomplete`: a file is missing or unreadable at or before the judged end.
A verdict is truthy (passes) for identical, consistent and tie-flip.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from logitsdump.compare.metrics import PairMetrics
from logitsdump.compare.pairing import FilePair

IDENTICAL = "identical"
CONSISTENT = "consistent"
TIE_FLIP = "tie-flip"
DIVERGENT = "divergent"
INCOMPLETE = "incomplete"
#: Every verdict, best first.
VERDICTS = (IDENTICAL, CONSISTENT, TIE_FLIP, DIVERGENT, INCOMPLETE)
PASSING = frozenset({IDENTICAL, CONSISTENT, TIE_FLIP})
#: Default tie tolerance, in logits.
DEFAULT_TIE_TOLERANCE = 0.1


@dataclass(frozen=True)
class RowResult:
    """One row of the CSV: a file pair and its metrics, or the reason there are none."""

    pair: FilePair
    metrics: PairMetrics | None
    #: msit's cmp_fail_reason ('' when the metrics exist).
    reason: str = ""
    #: A file of the pair is missing or cannot be read (as opposed to a failed check).
    unavailable: bool = False
    #: The two tensors are bitwise equal (also for rows msit writes as NA, e.g. equal -inf).
    same_values: bool = False

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "file_name": self.pair.file_name,
            "key": self.pair.key,
            "token_id": self.pair.token_id,
            "reason": self.reason,
            "same_values": self.same_values,
        }
        data.update(self.metrics.to_dict() if self.metrics is not None else {"passed": None})
        return data


@dataclass(frozen=True)
class CaseVerdict:
    """The verdict of one case, with the numbers behind it. Truthy when it passes."""

    subject: str
    key: int | str
    verdict: str
    reason: str
    tokens_total: int
    tokens_compared: int
    tokens_judged: int
    first_diff_token: int | None
    worst_cosine: float | None
    worst_kl: float | None
    #: g[golden_top1] - g[my_top1] at the first argmax change (logits).
    flip_margin: float | None
    golden_token: int | None
    my_token: int | None
    rows: tuple[RowResult, ...]

    def __bool__(self) -> bool:
        return self.verdict in PASSING

    def to_dict(self, *, with_rows: bool = True) -> dict[str, Any]:
        data = {
            "subject": self.subject,
            "key": self.key,
            "verdict": self.verdict,
            "passed": bool(self),
            "reason": self.reason,
            "tokens_total": self.tokens_total,
            "tokens_compared": self.tokens_compared,
            "tokens_judged": self.tokens_judged,
            "first_diff_token": self.first_diff_token,
            "worst_cosine": self.worst_cosine,
            "worst_kl": self.worst_kl,
            "flip_margin": self.flip_margin,
            "golden_token": self.golden_token,
            "my_token": self.my_token,
        }
        if with_rows:
            data["steps"] = [row.to_dict() for row in self.rows]
        return data


def judge_case(subject: str, key: int | str, rows: Iterable[RowResult], tie_tolerance: float) -> CaseVerdict:
    """Judge one case from its rows (any order; sorted by token here)."""
    ordered = tuple(sorted(rows, key=lambda r: (r.pair.token_id or 0, r.pair.file_name)))
    verdict, reason, end, flip = "", "", len(ordered), None
    all_identical = True
    for index, row in enumerate(ordered):
        token = row.pair.token_id
        if row.metrics is None:
            if row.same_values:
                continue
            verdict = INCOMPLETE if row.unavailable else DIVERGENT
            reason, end = f"token {token}: {row.reason}", index + 1
            break
        metrics = row.metrics
        all_identical = all_identical and metrics.identical
        if not metrics.top1_match:
            flip, end = row, index + 1
            if metrics.flip_margin <= tie_tolerance:
                verdict = TIE_FLIP
                reason = (f"token {token}: argmax {metrics.golden_top1} -> {metrics.my_top1}, "
                          f"golden margin {metrics.flip_margin:.6g} <= {tie_tolerance:g}")
            else:
                verdict = DIVERGENT
                reason = (f"token {token}: argmax {metrics.golden_top1} -> {metrics.my_top1}, "
                          f"golden margin {metrics.flip_margin:.6g} > {tie_tolerance:g}")
            break
        if not metrics.passed:
            verdict, end = DIVERGENT, index + 1
            reason = f"token {token}: fails the thresholds before any argmax change"
            break
    if not verdict:
        verdict = IDENTICAL if all_identical else CONSISTENT
    judged = ordered[:end]
    measured = [r.metrics for r in judged if r.metrics is not None]
    flip_metrics = flip.metrics if flip is not None else None
    return CaseVerdict(
        subject=subject,
        key=key,
        verdict=verdict,
        reason=reason,
        tokens_total=len(ordered),
        tokens_compared=sum(1 for r in ordered if r.metrics is not None),
        tokens_judged=len(judged),
        first_diff_token=flip.pair.token_id if flip is not None else None,
        worst_cosine=min((m.cosine_similarity for m in measured), default=None),
        worst_kl=max((m.kl_divergence for m in measured), default=None),
        flip_margin=flip_metrics.flip_margin if flip_metrics is not None else None,
        golden_token=flip_metrics.golden_top1 if flip_metrics is not None else None,
        my_token=flip_metrics.my_top1 if flip_metrics is not None else None,
        rows=ordered,
    )


def judge_cases(rows: Iterable[RowResult], tie_tolerance: float) -> list[CaseVerdict]:
    """Group rows by (subject, key) and judge each case; rows without a key (parse errors) are skipped."""
    groups: dict[tuple[str, int | str], list[RowResult]] = {}
    for row in rows:
        if row.pair.key is None:
            continue
        groups.setdefault((row.pair.subject or "", row.pair.key), []).append(row)
    cases = [judge_case(subject, key, group, tie_tolerance) for (subject, key), group in groups.items()]
    return sorted(cases, key=_case_order)


def _case_order(case: CaseVerdict) -> tuple:
    """Cases in msit's key order: int keys, then lang/num keys; subject breaks ties."""
    if isinstance(case.key, int):
        return (0, case.key, "", 0, case.subject)
    lang, _, num = str(case.key).partition("/")
    return (1, 0, lang, int(num) if num.isdigit() else 0, case.subject)
