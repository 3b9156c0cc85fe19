"""Per-row results and the per-case verdict: precision bug or numerical noise?

A case is the files of one (subject, key), one per generated token.

A free run (both sides chose their own tokens): the tokens are judged in order
up to and including the first token where the argmax differs; later tokens are
reported, not judged (the two runs were fed different prefixes from then on).
- `identical`: every judged token is bitwise equal;
- `consistent`: every token passes the thresholds and the argmax never differs;
- `tie-flip`: the tokens before the first argmax change pass, and at the change
  golden's own logits had the test's choice within `tie_tolerance` of its top-1
  (`g[golden_top1] - g[my_top1] <= tie_tolerance`, in logits);
- `divergent`: a token fails before the first change, or the change is not a tie;
- `incomplete`: a file is missing or unreadable at or before the judged end.

A replayed case (the test side was fed golden's tokens, `dump --replay`: its
manifest has `extra.replay`): step t of both sides follows the same prefix for
every t, so every step is judged, against the noise tolerances (`Tolerances`):
- `identical`: every step is bitwise equal;
- `consistent`: the argmax never differs and every step is close
  (KL <= noise_kl and cosine >= noise_cosine);
- `noise`: the argmax differs only where golden's margin over the test's choice
  is <= noise_margin (the replay's tie tolerance), and every step is close;
- `precision-suspect`: an argmax change with a clear golden margin (> noise
  margin), a step whose distributions are not close (drift), or a failed
  check (shape, NaN/inf);
- `incomplete`: a file is missing or unreadable and the others show no problem.
A verdict is truthy (passes) for identical, consistent, tie-flip and noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from logitsdump.compare.metrics import PairMetrics
from logitsdump.compare.pairing import ONLY_IN_GOLDEN, FilePair

IDENTICAL = "identical"
CONSISTENT = "consistent"
TIE_FLIP = "tie-flip"
DIVERGENT = "divergent"
INCOMPLETE = "incomplete"
NOISE = "noise"
PRECISION_SUSPECT = "precision-suspect"
#: Every verdict, best first.
VERDICTS = (IDENTICAL, CONSISTENT, NOISE, TIE_FLIP, DIVERGENT, PRECISION_SUSPECT, INCOMPLETE)
#: The verdicts of a free run (both devices chose their own tokens).
FREE_RUN_VERDICTS = (IDENTICAL, CONSISTENT, TIE_FLIP, DIVERGENT, INCOMPLETE)
#: The verdicts of a replayed case (`dump --replay`).
REPLAY_VERDICTS = (IDENTICAL, CONSISTENT, NOISE, PRECISION_SUSPECT, INCOMPLETE)
PASSING = frozenset({IDENTICAL, CONSISTENT, TIE_FLIP, NOISE})
#: Default tie tolerance, in logits.
DEFAULT_TIE_TOLERANCE = 0.1
#: Default noise tolerances of replayed cases: what `compare --calibrate` (2 x the 0.99 quantile) suggests
#: for the embedded tiny model, fp32 golden vs bf16 replayed, 135 cases of 8 tasks (docs/compare.md).
DEFAULT_NOISE_MARGIN = 1.0
DEFAULT_NOISE_KL = 0.13
DEFAULT_NOISE_COSINE = 0.989
#: The replay modes of `dump --replay-mode`.
REPLAY_MODES = ("step", "prefill")


@dataclass(frozen=True)
class Tolerances:
    """What separates noise from a precision problem.

    `tie` (free runs) and `noise_margin` (replayed cases): an argmax change is a
    near-tie (tie-flip; noise) when golden's top-1 logit leads the test's choice by
    at most this (logits). `noise_kl` and `noise_cosine`: a replayed step is close
    when KL <= noise_kl and cosine >= noise_cosine.
    """

    tie: float = DEFAULT_TIE_TOLERANCE
    noise_margin: float = DEFAULT_NOISE_MARGIN
    noise_kl: float = DEFAULT_NOISE_KL
    noise_cosine: float = DEFAULT_NOISE_COSINE

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Replay:
    """What a replayed dump's manifest says about one case (`extra.replay`)."""

    mode: str
    golden_dir: str
    #: The test device's own argmax at each forced step.
    own_tokens: tuple[int, ...] = ()
    #: The number of steps the replay dumped (the files its manifest lists); None: unknown.
    steps: int | None = None

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None, files: int | None = None) -> Replay | None:
        """The replay record of a manifest's `extra`, or None when the case was not replayed."""
        data = extra.get("replay") if isinstance(extra, Mapping) else None
        if not isinstance(data, Mapping) or data.get("mode") not in REPLAY_MODES:
            return None
        own = data.get("own_tokens")
        own_tokens = tuple(t for t in own if isinstance(t, int)) if isinstance(own, list) else ()
        return cls(str(data["mode"]), str(data.get("golden_dir") or ""), own_tokens, files)


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
class ArgmaxChange:
    """A step where the two devices' argmax differs, and how sure each side was."""

    token: int
    golden_token: int
    my_token: int
    #: g[golden_token] - g[my_token]: how far golden put the test's choice behind its own (logits).
    golden_margin: float
    #: m[my_token] - m[golden_token]: how far the test put golden's choice behind its own (logits).
    my_margin: float
    #: Rank (1 = top) of the test's choice in golden's logits.
    my_rank_in_golden: int
    #: Rank of golden's choice in the test's logits.
    golden_rank_in_mine: int

    @classmethod
    def from_row(cls, row: RowResult) -> ArgmaxChange:
        m = row.metrics
        assert m is not None
        return cls(row.pair.token_id or 0, m.golden_top1, m.my_top1, m.flip_margin, m.my_flip_margin,
                   m.my_top1_rank_in_golden, m.golden_top1_rank_in_mine)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    #: "step" or "prefill" for a replayed case (`dump --replay`), None for a free run.
    replay_mode: str | None = None
    #: The judged steps where the argmax differs (a free run: at most the first).
    changes: tuple[ArgmaxChange, ...] = ()
    #: Over the judged steps with metrics (p95: nearest rank; for cosine the low tail: 95% are >= it).
    mean_kl: float | None = None
    p95_kl: float | None = None
    mean_cosine: float | None = None
    p95_cosine: float | None = None

    def __bool__(self) -> bool:
        return self.verdict in PASSING

    @property
    def replayed(self) -> bool:
        return self.replay_mode is not None

    @property
    def changed_steps(self) -> tuple[int, ...]:
        return tuple(c.token for c in self.changes)

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
            "replay_mode": self.replay_mode,
            "changed_steps": list(self.changed_steps),
            "changes": [c.to_dict() for c in self.changes],
            "mean_kl": self.mean_kl,
            "p95_kl": self.p95_kl,
            "mean_cosine": self.mean_cosine,
            "p95_cosine": self.p95_cosine,
        }
        if with_rows:
            data["steps"] = [row.to_dict() for row in self.rows]
        return data


def _ordered(rows: Iterable[RowResult]) -> tuple[RowResult, ...]:
    return tuple(sorted(rows, key=lambda r: (r.pair.token_id or 0, r.pair.file_name)))


def judge_case(
    subject: str, key: int | str, rows: Iterable[RowResult], tolerances: float | Tolerances
) -> CaseVerdict:
    """Judge one free-run case from its rows (any order; sorted by token here)."""
    tie_tolerance = tolerances.tie if isinstance(tolerances, Tolerances) else float(tolerances)
    ordered = _ordered(rows)
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
    return _case_verdict(
        subject, key, verdict, reason, ordered, judged,
        measured=[r.metrics for r in judged if r.metrics is not None],
        tokens_compared=sum(1 for r in ordered if r.metrics is not None),
        changes=(ArgmaxChange.from_row(flip),) if flip is not None else (),
        first_diff_token=flip.pair.token_id if flip is not None else None,
    )  # fmt: skip


def judge_replay_case(
    subject: str, key: int | str, rows: Iterable[RowResult], tolerances: Tolerances, replay: Replay
) -> CaseVerdict:
    """Judge one replayed case: every step (all were fed the same prefix on both sides).

    Steps only in golden beyond the replay's last step (`replay.steps`: golden
    dumped more tokens than the replay) are reported, not judged.
    """
    ordered = _ordered(rows)
    judged = tuple(r for r in ordered if not _beyond_replay(r, replay))
    measured_rows = [r for r in judged if r.metrics is not None]
    measured = [r.metrics for r in measured_rows if r.metrics is not None]
    changes = tuple(ArgmaxChange.from_row(r) for r in measured_rows if not r.metrics.top1_match)  # type: ignore[union-attr]
    clear = [c for c in changes if c.golden_margin > tolerances.noise_margin]
    far = [r for r in measured_rows if not _close(r.metrics, tolerances)]  # type: ignore[arg-type]
    failed = [r for r in judged if r.metrics is None and not r.same_values and not r.unavailable]
    missing = [r for r in judged if r.metrics is None and not r.same_values and r.unavailable]
    problems: list[str] = []
    for row in failed:
        problems.append(f"token {row.pair.token_id}: {row.reason}")
    if clear:
        worst = max(clear, key=lambda c: c.golden_margin)
        problems.append(
            f"{len(clear)} argmax change(s) with a clear golden margin, the largest at token {worst.token}: "
            f"{worst.golden_token} -> {worst.my_token}, golden margin {worst.golden_margin:.6g} > "
            f"{tolerances.noise_margin:g} (test's choice ranked {worst.my_rank_in_golden} by golden)"
        )
    if far:
        worst_row = max(far, key=lambda r: _excess(r.metrics, tolerances))  # type: ignore[arg-type]
        m = worst_row.metrics
        assert m is not None
        problems.append(
            f"{len(far)} of {len(measured)} steps drift apart, the worst at token {worst_row.pair.token_id}: "
            f"KL {m.kl_divergence:.3g} (tolerance {tolerances.noise_kl:g}), "
            f"cosine {m.cosine_similarity:.6f} (tolerance {tolerances.noise_cosine:g})"
        )
    if problems:
        verdict, reason = PRECISION_SUSPECT, "; ".join(problems)
    elif missing:
        verdict = INCOMPLETE
        reason = "; ".join(f"token {r.pair.token_id}: {r.reason}" for r in missing[:3])
        if len(missing) > 3:
            reason += f"; and {len(missing) - 3} more"
    elif all(r.metrics.identical if r.metrics is not None else r.same_values for r in judged):
        verdict, reason = IDENTICAL, ""
    elif changes:
        verdict = NOISE
        widest = max(c.golden_margin for c in changes)
        reason = (f"argmax changes at token(s) {', '.join(str(c.token) for c in changes)}, all near-ties "
                  f"(largest golden margin {widest:.6g} <= {tolerances.noise_margin:g}); every step within the "
                  "noise tolerances")
    else:
        verdict, reason = CONSISTENT, ""
    return _case_verdict(
        subject, key, verdict, reason, ordered, judged, measured=measured, tokens_compared=len(measured),
        changes=changes, first_diff_token=changes[0].token if changes else None, replay_mode=replay.mode,
    )  # fmt: skip


def _case_verdict(
    subject: str,
    key: int | str,
    verdict: str,
    reason: str,
    ordered: tuple[RowResult, ...],
    judged: Sequence[RowResult],
    *,
    measured: Sequence[PairMetrics],
    tokens_compared: int,
    changes: tuple[ArgmaxChange, ...],
    first_diff_token: int | None,
    replay_mode: str | None = None,
) -> CaseVerdict:
    """The verdict record: worst and spread over `measured`, the flip fields from the first change."""
    first = changes[0] if changes else None
    return CaseVerdict(
        subject=subject,
        key=key,
        verdict=verdict,
        reason=reason,
        tokens_total=len(ordered),
        tokens_compared=tokens_compared,
        tokens_judged=len(judged),
        first_diff_token=first_diff_token,
        worst_cosine=min((m.cosine_similarity for m in measured), default=None),
        worst_kl=max((m.kl_divergence for m in measured), default=None),
        flip_margin=first.golden_margin if first is not None else None,
        golden_token=first.golden_token if first is not None else None,
        my_token=first.my_token if first is not None else None,
        rows=ordered,
        replay_mode=replay_mode,
        changes=changes,
        **_spread(measured),
    )


def _beyond_replay(row: RowResult, replay: Replay) -> bool:
    """A golden-only file past the last step the replay dumped: golden simply dumped more tokens."""
    return (
        replay.steps is not None
        and row.pair.problem == ONLY_IN_GOLDEN
        and row.pair.token_id is not None
        and row.pair.token_id >= replay.steps
    )


def _close(metrics: PairMetrics, tolerances: Tolerances) -> bool:
    return (metrics.identical or (metrics.kl_divergence <= tolerances.noise_kl
                                  and metrics.cosine_similarity >= tolerances.noise_cosine))


def _excess(metrics: PairMetrics, tolerances: Tolerances) -> float:
    """How far a step is beyond the noise tolerances (for picking the worst step to name)."""
    kl = metrics.kl_divergence / tolerances.noise_kl if tolerances.noise_kl > 0 else math.inf
    gap = 1.0 - tolerances.noise_cosine
    cos = (1.0 - metrics.cosine_similarity) / gap if gap > 0 else math.inf
    return max(kl, cos)


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


def _spread(measured: Sequence[PairMetrics]) -> dict[str, float | None]:
    kls = [m.kl_divergence for m in measured]
    coss = [m.cosine_similarity for m in measured]
    return {
        "mean_kl": math.fsum(kls) / len(kls) if kls else None,
        "p95_kl": percentile_high(kls),
        "mean_cosine": math.fsum(coss) / len(coss) if coss else None,
        "p95_cosine": percentile_low(coss),
    }


def judge_cases(
    rows: Iterable[RowResult],
    tolerances: float | Tolerances,
    replays: Mapping[tuple[str, int | str], Replay] | None = None,
) -> list[CaseVerdict]:
    """Group rows by (subject, key) and judge each case; rows without a key (parse errors) are skipped.

    `tolerances`: a `Tolerances`, or a tie tolerance alone (the rest default).
    `replays`: (subject, key) -> the replay record of the cases dumped with `--replay`.
    """
    tol = tolerances if isinstance(tolerances, Tolerances) else Tolerances(tie=float(tolerances))
    groups: dict[tuple[str, int | str], list[RowResult]] = {}
    for row in rows:
        if row.pair.key is None:
            continue
        groups.setdefault((row.pair.subject or "", row.pair.key), []).append(row)
    replays = replays or {}
    cases = []
    for (subject, key), group in groups.items():
        replay = replays.get((subject, key))
        if replay is not None:
            cases.append(judge_replay_case(subject, key, group, tol, replay))
        else:
            cases.append(judge_case(subject, key, group, tol))
    return sorted(cases, key=_case_order)


def _case_order(case: CaseVerdict) -> tuple:
    """Cases in msit's key order: int keys, then lang/num keys; subject breaks ties."""
    if isinstance(case.key, int):
        return (0, case.key, "", 0, case.subject)
    lang, _, num = str(case.key).partition("/")
    return (1, 0, lang, int(num) if num.isdigit() else 0, case.subject)
