"""The per-case verdict: precision bug or numerical noise? (The verdicts themselves: `verdicts.py`.)

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
  (KL <= noise_kl and cosine >= noise_cosine), and the case's mean KL is
  at most noise_mean_kl (when set);
- `noise`: the argmax differs only where golden's margin over the test's choice
  is <= noise_margin (the replay's tie tolerance), and every step is close;
- `precision-suspect`: an argmax change with a clear golden margin (> noise
  margin), a step whose distributions are not close (drift), or a failed
  check (shape, NaN/inf);
- `incomplete`: a file is missing or unreadable and the others show no problem.
A verdict is truthy (passes) for identical, consistent, tie-flip and noise.
The noise tolerances come from a floor (`floor.py`): measured by `logitsdump calibrate`, or the
conservative default of the dumps' dtype. With the default alone (no reference for this model's
noise) a case the rules above would accuse is `unreferenced` unless it passes the gross bound
(`GrossBound`), which no healthy pair reaches: no reference, no accusation.
Cases covered by a control arm are judged against it instead (`control.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from logitsdump.compare.focus import choose_focus
from logitsdump.compare.records import ArgmaxChange, CaseRecord, PairMetrics, Step
from logitsdump.compare.stats import percentile_high, percentile_low
from logitsdump.compare.verdicts import (
    CONSISTENT,
    DIVERGENT,
    IDENTICAL,
    INCOMPLETE,
    NOISE,
    PRECISION_SUSPECT,
    TIE_FLIP,
    UNREFERENCED,
)

#: Default noise tolerances of replayed cases without a measured floor: `floor.default_tolerances("bf16")`,
#: scale-free and conservative (KL on probabilities, anchored on llama.cpp's bf16 noise of LLaMA-3-8B; the
#: margin 2 x sqrt(KL); cosine of logits is not scale-free and not used). A compare run takes them for the
#: dumps' own dtype (`floor.resolve_floor`); these are what a bare `Tolerances()` holds.
DEFAULT_NOISE_MARGIN = 0.0566
DEFAULT_NOISE_KL = 8e-4
DEFAULT_NOISE_COSINE = -1.0
#: Default tie tolerance of free runs, in logits: the noise margin (a compare run takes its floor's margin).
DEFAULT_TIE_TOLERANCE = DEFAULT_NOISE_MARGIN


@dataclass(frozen=True)
class Tolerances:
    """What separates noise from a precision problem.

    `tie` (free runs) and `noise_margin` (replayed cases): an argmax change is a
    near-tie (tie-flip; noise) when golden's top-1 logit leads the test's choice by
    at most this (logits). `noise_kl` and `noise_cosine`: a replayed step is close
    when KL <= noise_kl and cosine >= noise_cosine. `noise_mean_kl` (None: not used): a replayed case
    also drifts when the mean KL of its steps is above it (a mean over a case's steps separates a small
    systematic shift from noise better than its worst step does).
    """

    tie: float = DEFAULT_TIE_TOLERANCE
    noise_margin: float = DEFAULT_NOISE_MARGIN
    noise_kl: float = DEFAULT_NOISE_KL
    noise_cosine: float = DEFAULT_NOISE_COSINE
    noise_mean_kl: float | None = None
    #: The number of steps `noise_mean_kl` holds for (the calibration cases' median); a case with n steps
    #: gets `noise_mean_kl * sqrt(noise_mean_kl_steps / n)` (a mean over fewer steps spreads more), at most
    #: noise_kl.
    noise_mean_kl_steps: float = 1.0

    def mean_kl_tolerance(self, steps: int) -> float | None:
        """The case mean KL tolerance for a case of `steps` measured steps (None: the rule is off)."""
        if self.noise_mean_kl is None or steps < 1:
            return None
        return min(self.noise_kl, self.noise_mean_kl * math.sqrt(max(1.0, self.noise_mean_kl_steps / steps)))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class ReplayedCase:
    """What the judge needs to know of a replayed case: the mode, and how many steps the replay dumped."""

    mode: str
    #: The number of steps the replay dumped (the files its manifest lists); None: unknown.
    steps: int | None = None


@dataclass(frozen=True)
class GrossBound:
    """Deviations no healthy pair of the dtype reaches (`floor.gross_bound`): a step KL above `kl`, or an argmax
    change where golden's margin is above `margin` (logits). Used only without any reference."""

    kl: float
    margin: float
    dtype: str

    def exceeded_by(self, steps: Sequence[Step], changes: Sequence[ArgmaxChange]) -> str:
        """Why `steps`/`changes` pass the bound ('' when they do not)."""
        worst = max((s for s in steps if s.metrics is not None), key=lambda s: s.metrics.kl_divergence,  # type: ignore[union-attr]
                    default=None)
        if worst is not None and worst.metrics is not None and worst.metrics.kl_divergence > self.kl:
            return f"token {worst.token_id}: KL {worst.metrics.kl_divergence:.3g} > the gross bound {self.kl:g}"
        widest = max(changes, key=lambda c: c.flip_margin, default=None)
        if widest is not None and widest.flip_margin > self.margin:
            return (f"token {widest.token}: an argmax change of golden margin {widest.flip_margin:.4g} > the gross "
                    f"bound {self.margin:g}")
        return ""


def ordered_steps(steps: Iterable[Step]) -> tuple[Step, ...]:
    """Steps in token order (file name breaks ties)."""
    return tuple(sorted(steps, key=lambda s: (s.token_id or 0, s.file_name)))


def judge_case(subject: str, key: int | str, steps: Iterable[Step], tolerances: float | Tolerances) -> CaseRecord:
    """Judge one free-run case from its steps (any order; sorted by token here)."""
    tie_tolerance = tolerances.tie if isinstance(tolerances, Tolerances) else float(tolerances)
    ordered = ordered_steps(steps)
    verdict, reason, end, flip, finding = "", "", len(ordered), None, ""
    all_identical = True
    for index, step in enumerate(ordered):
        token = step.token_id
        if step.metrics is None:
            if step.same_values:
                continue
            verdict, finding = (INCOMPLETE, "missing") if step.unavailable else (DIVERGENT, "failed-check")
            reason, end = f"token {token}: {step.reason}", index + 1
            break
        metrics = step.metrics
        all_identical = all_identical and metrics.identical
        if not metrics.top1_match:
            flip, end = step, index + 1
            change = f"token {token}: argmax {metrics.golden_top1} -> {metrics.my_top1}, golden margin"
            if metrics.flip_margin <= tie_tolerance:
                verdict, finding = TIE_FLIP, "near-tie-change"
                reason = f"{change} {metrics.flip_margin:.6g} <= {tie_tolerance:g}"
            else:
                verdict, finding = DIVERGENT, "clear-change"
                reason = f"{change} {metrics.flip_margin:.6g} > {tie_tolerance:g}"
            break
        if not metrics.passed:
            verdict, end, finding = DIVERGENT, index + 1, "threshold-fail"
            reason = f"token {token}: fails the thresholds before any argmax change"
            break
    if not verdict:
        verdict = IDENTICAL if all_identical else CONSISTENT
    judged = ordered[:end]
    return build_case_record(
        subject, key, verdict, reason, ordered, judged,
        measured=[s.metrics for s in judged if s.metrics is not None],
        tokens_compared=sum(1 for s in ordered if s.metrics is not None),
        changes=(ArgmaxChange.at(flip),) if flip is not None else (),
        first_diff_token=flip.token_id if flip is not None else None,
        findings=(finding,) if finding else (),
    )  # fmt: skip


def judge_replay_case(
    subject: str, key: int | str, steps: Iterable[Step], tolerances: Tolerances, replay: ReplayedCase
) -> CaseRecord:
    """Judge one replayed case: every step (all were fed the same prefix on both sides).

    Steps only in golden beyond the replay's last step (`replay.steps`: golden
    dumped more tokens than the replay) are reported, not judged.
    """
    ordered = ordered_steps(steps)
    judged = tuple(s for s in ordered if not beyond_replay(s, replay))
    measured_steps = [s for s in judged if s.metrics is not None]
    measured = [s.metrics for s in measured_steps if s.metrics is not None]
    changes = tuple(ArgmaxChange.at(s) for s in measured_steps if s.changed)
    clear = [c for c in changes if c.flip_margin > tolerances.noise_margin]
    far = [s for s in measured_steps if not _close(s.metrics, tolerances)]  # type: ignore[arg-type]
    failed = [s for s in judged if s.metrics is None and not s.same_values and not s.unavailable]
    missing = [s for s in judged if s.metrics is None and not s.same_values and s.unavailable]
    problems: list[str] = []
    findings: list[str] = []
    for step in failed:
        problems.append(f"token {step.token_id}: {step.reason}")
    if failed:
        findings.append("failed-check")
    if clear:
        worst = max(clear, key=lambda c: c.flip_margin)
        problems.append(
            f"{len(clear)} argmax change(s) with a clear golden margin, the largest at token {worst.token}: "
            f"{worst.golden_token} -> {worst.my_token}, golden margin {worst.flip_margin:.6g} > "
            f"{tolerances.noise_margin:g} (test's choice ranked {worst.my_rank_in_golden} by golden)"
        )
        findings.append("clear-change")
    if far:
        worst_step = max(far, key=lambda s: _excess(s.metrics, tolerances))  # type: ignore[arg-type]
        m = worst_step.metrics
        assert m is not None
        problems.append(
            f"{len(far)} of {len(measured)} steps drift apart, the worst at token {worst_step.token_id}: "
            f"KL {m.kl_divergence:.3g} (tolerance {tolerances.noise_kl:g}), "
            f"cosine {m.cosine_similarity:.6f}"
            + (f" (tolerance {tolerances.noise_cosine:g})" if tolerances.noise_cosine > -1.0 else "")
        )
        findings.append("drift")
    mean_kl = math.fsum(m.kl_divergence for m in measured) / len(measured) if measured else None
    mean_tolerance = tolerances.mean_kl_tolerance(len(measured))
    if mean_tolerance is not None and mean_kl is not None and mean_kl > mean_tolerance:
        problems.append(f"the mean KL of its {len(measured)} steps, {mean_kl:.3g}, is above the floor's "
                        f"{mean_tolerance:.3g} for {len(measured)} steps")
        if "drift" not in findings:
            findings.append("drift")
    if problems:
        verdict, reason = PRECISION_SUSPECT, "; ".join(problems)
    elif missing:
        verdict = INCOMPLETE
        findings.append("missing")
        reason = "; ".join(f"token {s.token_id}: {s.reason}" for s in missing[:3])
        if len(missing) > 3:
            reason += f"; and {len(missing) - 3} more"
    elif all(s.metrics.identical if s.metrics is not None else s.same_values for s in judged):
        verdict, reason = IDENTICAL, ""
    elif changes:
        verdict = NOISE
        findings.append("near-tie-change")
        widest = max(c.flip_margin for c in changes)
        reason = (f"argmax changes at token(s) {', '.join(str(c.token) for c in changes)}, all near-ties "
                  f"(largest golden margin {widest:.6g} <= {tolerances.noise_margin:g}); every step within the "
                  "noise tolerances")
    else:
        verdict, reason = CONSISTENT, ""
    return build_case_record(
        subject, key, verdict, reason, ordered, judged, measured=measured, tokens_compared=len(measured),
        changes=changes, first_diff_token=changes[0].token if changes else None, replay_mode=replay.mode,
        findings=tuple(findings),
    )  # fmt: skip


def build_case_record(
    subject: str,
    key: int | str,
    verdict: str,
    reason: str,
    ordered: tuple[Step, ...],
    judged: Sequence[Step],
    *,
    measured: Sequence[PairMetrics],
    tokens_compared: int,
    changes: tuple[ArgmaxChange, ...],
    first_diff_token: int | None,
    findings: tuple[str, ...],
    replay_mode: str | None = None,
) -> CaseRecord:
    """The verdict record: worst and spread over `measured`, the flip fields from the first change, the focus."""
    first = changes[0] if changes else None
    record = CaseRecord(
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
        flip_margin=first.flip_margin if first is not None else None,
        golden_token=first.golden_token if first is not None else None,
        my_token=first.my_token if first is not None else None,
        steps=ordered,
        replay_mode=replay_mode,
        changes=changes,
        findings=findings,
        **_spread(measured),
    )
    focus_step, focus_why = choose_focus(record)
    return replace(record, focus_step=focus_step, focus_why=focus_why)


def beyond_replay(step: Step, replay: ReplayedCase) -> bool:
    """A golden-only file past the last step the replay dumped: golden simply dumped more tokens."""
    return (
        replay.steps is not None
        and step.only_in_golden
        and step.token_id is not None
        and step.token_id >= replay.steps
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
    steps: Iterable[Step],
    tolerances: float | Tolerances,
    replays: Mapping[tuple[str, int | str], ReplayedCase] | None = None,
    *,
    gross: GrossBound | None = None,
) -> list[CaseRecord]:
    """Group steps by (subject, key) and judge each case; steps without a key (parse errors) are skipped.

    `tolerances`: a `Tolerances`, or a tie tolerance alone (the rest default).
    `replays`: (subject, key) -> the replay record of the cases dumped with `--replay`.
    `gross`: there is no reference for the model's noise (the dtype's default alone): a case the rules accuse
    below this bound is `unreferenced` instead.
    """
    tol = tolerances if isinstance(tolerances, Tolerances) else Tolerances(tie=float(tolerances))
    groups: dict[tuple[str, int | str], list[Step]] = {}
    for step in steps:
        if step.key is None:
            continue
        groups.setdefault((step.subject, step.key), []).append(step)
    replays = replays or {}
    cases = []
    for (subject, key), group in groups.items():
        replay = replays.get((subject, key))
        if replay is not None:
            cases.append(judge_replay_case(subject, key, group, tol, replay))
        else:
            cases.append(judge_case(subject, key, group, tol))
    if gross is not None:
        cases = [unreferenced(case, gross) for case in cases]
    return sorted(cases, key=case_order)


def unreferenced(case: CaseRecord, gross: GrossBound) -> CaseRecord:
    """`case` as `unreferenced` when the rules accused it on a deviation below the gross bound (no reference
    to tell noise from a bug), with the reason kept; else unchanged. A failed check (NaN, inf, shape) is
    never noise and stays accused."""
    if case.verdict not in (PRECISION_SUSPECT, DIVERGENT) or "failed-check" in case.findings:
        return case
    beyond = gross.exceeded_by(case.judged_steps, case.changes)
    if beyond:
        return replace(case, reason=f"{case.reason}; beyond any healthy pair ({beyond})")
    reason = (f"{case.reason}; but with no reference for this model's noise (no control arm, no measured floor) "
              f"and below the gross bound of {gross.dtype} (step KL {gross.kl:g}, margin {gross.margin:g} logits), "
              "this cannot be told from noise: dump a control (dump --control) and compare again")
    kept = tuple(f for f in case.findings if f not in ("drift", "clear-change", "threshold-fail"))
    return replace(case, verdict=UNREFERENCED, reason=reason, findings=(*kept, "unreferenced"))


def case_order(case: CaseRecord) -> tuple:
    """Cases in msit's key order: int keys, then lang/num keys; subject breaks ties."""
    if isinstance(case.key, int):
        return (0, case.key, "", 0, case.subject)
    lang, _, num = str(case.key).partition("/")
    return (1, 0, lang, int(num) if num.isdigit() else 0, case.subject)
