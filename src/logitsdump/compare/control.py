"""Judging the test side against a control arm: the noise of the same cases, measured on the golden side.

A control arm is a second known-healthy configuration of the golden side, dumped on the same cases
(replayed on golden's tokens, or free-running). How it was made does not matter here; what matters is
that its deviation from golden at step t is what healthy noise looks like at that very prompt and
position. Each step is judged *paired*: the test's deviation from golden against the control's.

The per-step statistic is the log power ratio

    r_t = log(rms_T(t)^2 / rms_C(t)^2)        rms = `PairMetrics.perturbation_rms`

(the RMS of the centred logit difference over golden's top 64 tokens; its square tracks the step's KL,
with far less sampling noise than the KL of a peaked distribution). A healthy test side has E[r] <=
log f, where f is the pairing's spread factor (`spread_factor`: the test's noise is at most two
independent roundings, the control's at least one). A case is drift (precision-suspect, or divergent
in a free run) when
- the mean rule: mean(r) - log f > z(1 - ALPHA_MEAN) * sigma * sqrt(CASE_SHARE + 1/n), or
- the worst-step rule: max(r) - log f > z(1 - ALPHA_STEP / n) * sigma * sqrt(1 + CASE_SHARE) * TAIL,
with sigma = max(STEP_SPREAD, this run's pooled within-case spread of r), or
- the in-run rule: the mean rule at ALPHA_IN_RUN instead, inside a run that is itself precision-suspect
  (below): a gatekeeping procedure, the run's test is the gate, so on a healthy run it fires only where the
  run's test errs.
An argmax change is clear when golden's margin exceeds FLIP_Z * sqrt(2 f) * rms_C(t) (what the control's
perturbation at that step, scaled to the test's, could overturn). The run: the mean over cases of
mean(r) - log f with a 95% t-interval; precision-suspect when the whole interval is above 0. Every
constant is derived from healthy pairs in docs/compare.md ("The control arm").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

from logitsdump.compare import judge
from logitsdump.compare.control_arm import CaseKey, ControlArm, ControlSteps
from logitsdump.compare.paired_records import ControlStep, PairedCase
from logitsdump.compare.records import ArgmaxChange, CaseRecord, Step
from logitsdump.compare.stats import t_quantile
from logitsdump.compare.verdicts import (
    CONSISTENT,
    DIVERGENT,
    IDENTICAL,
    INCOMPLETE,
    NOISE,
    PRECISION_SUSPECT,
    TIE_FLIP,
)
from logitsdump.dtypes import DATA_TYPES, DTYPE_EPS
from logitsdump.errors import DataError
from logitsdump.logs import get_logger

_log = get_logger("compare")
_NORMAL = NormalDist()

# ---- the constants (derivation: docs/compare.md, "The control arm"; measured with bench/control_constants.py on
# SmolLM2-135M, gsm8k + MMLU astronomy/college_biology: the tuning set, never used to evaluate) ---------------------

#: sigma_w: the standard deviation of one step's r around its case's mean on healthy pairs (fp32 golden vs bf16
#: with an impl control: 0.364, 0.437; bf16 golden vs bf16 eager with an fp32 control: 0.373, 0.326; pooled 0.374).
STEP_SPREAD = 0.39
#: rho: the variance of a healthy case's mean r beyond its steps' own, over sigma_w^2 (0.051, 0.191, 0.064, 0.134;
#: pooled 0.089): a case's prompt makes its control a little more or less noisy than its test side, on every step.
CASE_SHARE = 0.10
#: The false-alarm rates of the mean rule and of the worst-step rule, per case (together at most 1%).
ALPHA_MEAN = 0.005
ALPHA_STEP = 0.005
#: The mean rule's false-alarm rate per case inside a run whose own interval is above the healthy bound: the run
#: has shown the defect; the case's question is whether it carries it. The conventional 5% level, chosen before
#: any measurement of it (not fitted). On healthy runs the gate (the run's one-sided 2.5%) keeps a case's false-
#: alarm rate at most ALPHA_MEAN + ALPHA_STEP + 2.5% = 3.5%, whatever the cases' correlation.
ALPHA_IN_RUN = 0.05
#: How much heavier than normal the tail of a healthy step's r is: the 0.999 quantile of |r - case mean| / sigma_w
#: over the normal one's (1.14, 0.78, 1.31, 0.71; pooled 1.18).
TAIL = 1.2
#: A clear argmax change: golden's margin above this many control-scaled gap perturbations (the 0.999 quantile of
#: |gap perturbation| / (sqrt(2 f) rms_C) over every top-10 gap of every healthy step: 3.75, 5.03, 2.90, 3.63;
#: pooled 3.86; the largest pair's, rounded).
FLIP_Z = 5.0
#: r is clamped to +-this (a factor e^8 ~ 3000 in noise power): one wild step cannot carry a mean alone.
CLAMP = 8.0
#: The confidence of the run's interval.
RUN_CONFIDENCE = 0.95
#: The largest spread factor of a healthy pairing (two independent roundings against one); a control whose
#: pairing needs more (it is far more precise than the test), or less than 1/this, is no reference.
SPREAD_BOUND = 2.0

#: Where a control comes from (`Reference.control["found"]`).



def spread_factor(golden: str | None, test: str | None, control: str | None) -> tuple[float, str]:
    """f: how much larger (in noise power) a healthy test side's deviation from golden may be than the
    control's, from the three dtypes: f = (w_G + w_T) / max(w_G, w_C), w = the dtype's spacing squared.

    The test's deviation is at most two independent roundings (golden's and its own), the control's at least
    one (golden's, or its own when coarser): fp32 golden, bf16 test, bf16 control: 1; bf16 golden, bf16
    test, fp32 control: 2. A dtype unknown (no manifest): the two-rounding bound."""
    if golden not in DATA_TYPES or test not in DATA_TYPES or control not in DATA_TYPES:
        return SPREAD_BOUND, "a dtype is not recorded: the two-rounding bound"
    w = {d: DTYPE_EPS[d] ** 2 for d in DATA_TYPES}
    factor = (w[golden] + w[test]) / max(w[golden], w[control])
    return factor, f"(w_{golden} + w_{test}) / max(w_{golden}, w_{control}) with w = spacing^2"


# ---- the paired statistics ---------------------------------------------------------------------------------


def log_power_ratio(test_rms: float | None, control_rms: float | None) -> float | None:
    """r = log(test_rms^2 / control_rms^2), clamped to +-CLAMP; 0 when both are 0; None when the control's is
    0 alone (a step where the control is golden's bits: no reference there) or either is unknown."""
    if test_rms is None or control_rms is None:
        return None
    if control_rms <= 0.0:
        return 0.0 if test_rms <= 0.0 else None
    if test_rms <= 0.0:
        return -CLAMP
    return max(-CLAMP, min(CLAMP, 2.0 * math.log(test_rms / control_rms)))


@dataclass(frozen=True)
class Rules:
    """The thresholds of one run: the pairing's allowance and the spread used."""

    factor: float
    spread: float
    #: Whether the run is precision-suspect (its interval above the healthy bound): the mean rule at ALPHA_IN_RUN.
    in_run: bool = False

    @property
    def allowance(self) -> float:
        return math.log(self.factor)

    def mean_threshold(self, n: int) -> float:
        return _NORMAL.inv_cdf(1 - ALPHA_MEAN) * self.spread * math.sqrt(CASE_SHARE + 1 / n)

    def run_threshold(self, n: int) -> float | None:
        """The mean rule's threshold inside a precision-suspect run (None: the run is not)."""
        if not self.in_run:
            return None
        return _NORMAL.inv_cdf(1 - ALPHA_IN_RUN) * self.spread * math.sqrt(CASE_SHARE + 1 / n)

    def step_threshold(self, n: int) -> float:
        return _NORMAL.inv_cdf(1 - ALPHA_STEP / n) * self.spread * math.sqrt(1 + CASE_SHARE) * TAIL

    def p_value(self, excess: float, n: int) -> float:
        return 1.0 - _NORMAL.cdf(excess / (self.spread * math.sqrt(CASE_SHARE + 1 / n)))

    def flip_bound(self, control_rms: float) -> float:
        """The largest golden margin healthy noise overturns at a step whose control perturbation is this."""
        return FLIP_Z * math.sqrt(2 * self.factor) * control_rms


def pooled_spread(ratios: Iterable[Sequence[float]]) -> float | None:
    """The pooled within-case standard deviation of r over cases of 2 steps or more (None: none)."""
    squares, dof = 0.0, 0
    for values in ratios:
        if len(values) < 2:
            continue
        mean = math.fsum(values) / len(values)
        squares += math.fsum((v - mean) ** 2 for v in values)
        dof += len(values) - 1
    return math.sqrt(squares / dof) if dof else None


def paired_case(judged: Sequence[Step], control: Mapping[int, Step], rules: Rules) -> PairedCase | None:
    """The paired statistics of one case's judged steps (those with metrics) against its control steps."""
    rows: list[ControlStep] = []
    uncovered: list[int] = []
    test_kl = control_kl = 0.0
    for step in judged:
        if step.metrics is None or step.token_id is None:
            continue
        c = control.get(step.token_id)
        cm = c.metrics if c is not None else None
        r = log_power_ratio(step.metrics.perturbation_rms, cm.perturbation_rms if cm is not None else None)
        if cm is None or r is None:
            uncovered.append(step.token_id)
            rows.append(ControlStep(step.token_id, cm.kl_divergence if cm else None,
                                    cm.perturbation_rms if cm else None, None))
            continue
        rows.append(ControlStep(step.token_id, cm.kl_divergence, cm.perturbation_rms, r))
        test_kl += step.metrics.kl_divergence
        control_kl += cm.kl_divergence
    ratios = [row.log_ratio for row in rows if row.log_ratio is not None]
    if not ratios:
        return None
    n = len(ratios)
    mean = math.fsum(ratios) / n
    worst = max((row for row in rows if row.log_ratio is not None), key=lambda row: row.log_ratio or 0.0)
    return PairedCase(
        steps=n, log_ratio=mean, allowance=rules.allowance, threshold=rules.mean_threshold(n),
        p_value=rules.p_value(mean - rules.allowance, n), worst_token=worst.token,
        worst_excess=(worst.log_ratio or 0.0) - rules.allowance, step_threshold=rules.step_threshold(n),
        kl_ratio=test_kl / control_kl if control_kl > 0 else None, control_steps=tuple(rows),
        uncovered=tuple(uncovered), run_threshold=rules.run_threshold(n),
    )


def _step_ratios(judged: Sequence[Step], control: Mapping[int, Step]) -> list[float]:
    out = []
    for step in judged:
        c = control.get(step.token_id or 0) if step.token_id is not None else None
        if step.metrics is None or c is None or c.metrics is None:
            continue
        r = log_power_ratio(step.metrics.perturbation_rms, c.metrics.perturbation_rms)
        if r is not None:
            out.append(r)
    return out


# ---- judging ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """What the paired rules found in a case: the reasons in words, whether a drift rule fired (the mean or
    the worst step), and the clear argmax changes."""

    problems: tuple[str, ...]
    drifts: bool
    clear: tuple[ArgmaxChange, ...]


def _findings(paired: PairedCase | None, changes: Sequence[ArgmaxChange], control: Mapping[int, Step],
              rules: Rules) -> Drift:
    problems: list[str] = []
    if paired is not None:
        if paired.excess > paired.threshold:
            problems.append(f"its noise is {math.exp(paired.log_ratio):.3g}x the control's over {paired.steps} "
                            f"step(s) (healthy up to {rules.factor:.3g}x; drift above "
                            f"{rules.factor * math.exp(paired.threshold):.3g}x, p = {paired.p_value:.2g})")
        elif paired.run_threshold is not None and paired.excess > paired.run_threshold:
            problems.append(f"its noise is {math.exp(paired.log_ratio):.3g}x the control's over {paired.steps} "
                            f"step(s) (p = {paired.p_value:.2g}): the run's noise is above the healthy bound, and "
                            f"in such a run a case above {rules.factor * math.exp(paired.run_threshold):.3g}x "
                            f"(p < {ALPHA_IN_RUN:g}) carries it")
        if paired.worst_excess is not None and paired.worst_excess > paired.step_threshold:
            alone = math.exp(paired.worst_excess + rules.allowance)
            limit = rules.factor * math.exp(paired.step_threshold)
            problems.append(f"step {paired.worst_token} alone is {alone:.3g}x the control's noise (one step may "
                            f"reach {limit:.3g}x)")
    drifts = bool(problems)
    clear = []
    for change in changes:
        scale = _control_rms_at(change.token, control, paired)
        if scale is not None and change.flip_margin > rules.flip_bound(scale):
            clear.append(change)
    if clear:
        worst = max(clear, key=lambda c: c.flip_margin)
        scale = _control_rms_at(worst.token, control, paired) or 0.0
        problems.append(f"{len(clear)} argmax change(s) the control's noise cannot explain, the largest at token "
                        f"{worst.token}: {worst.golden_token} -> {worst.my_token}, golden margin "
                        f"{worst.flip_margin:.4g} > {rules.flip_bound(scale):.3g} (= {FLIP_Z:g} x sqrt(2 x "
                        f"{rules.factor:.3g}) x the control's perturbation {scale:.3g} there)")
    return Drift(tuple(problems), drifts, tuple(clear))


def _control_rms_at(token: int, control: Mapping[int, Step], paired: PairedCase | None) -> float | None:
    """The control's perturbation at `token`, else the median over the case's covered steps."""
    step = control.get(token)
    if step is not None and step.metrics is not None and step.metrics.perturbation_rms:
        return step.metrics.perturbation_rms
    if paired is None:
        return None
    known = sorted(row.control_rms for row in paired.control_steps if row.control_rms)
    return known[len(known) // 2] if known else None


def judge_replayed(subject: str, key: int | str, steps: Sequence[Step], replay: judge.ReplayedCase,
                   control: Mapping[int, Step], rules: Rules) -> CaseRecord:
    """A replayed case against its control steps (every step judged)."""
    ordered = judge.ordered_steps(steps)
    judged = tuple(s for s in ordered if not judge.beyond_replay(s, replay))
    measured = [s.metrics for s in judged if s.metrics is not None]
    changes = tuple(ArgmaxChange.at(s) for s in judged if s.changed)
    failed = [s for s in judged if s.metrics is None and not s.same_values and not s.unavailable]
    missing = [s for s in judged if s.metrics is None and not s.same_values and s.unavailable]
    paired = paired_case(judged, control, rules)
    found = _findings(paired, changes, control, rules)
    problems = [f"token {s.token_id}: {s.reason}" for s in failed] + list(found.problems)
    findings = (["failed-check"] if failed else []) + (["clear-change"] if found.clear else []) + (
        ["drift"] if found.drifts else [])
    if problems:
        verdict, reason = PRECISION_SUSPECT, "against the control: " + "; ".join(problems)
    elif missing:
        verdict, reason = INCOMPLETE, "; ".join(f"token {s.token_id}: {s.reason}" for s in missing[:3])
        findings.append("missing")
    elif all(s.metrics.identical if s.metrics is not None else s.same_values for s in judged):
        verdict, reason = IDENTICAL, ""
    elif changes:
        verdict = NOISE
        findings.append("near-tie-change")
        reason = (f"argmax changes at token(s) {', '.join(str(c.token) for c in changes)}, each within what the "
                  f"control's noise overturns; {_noise_words(paired, rules)}")
    else:
        verdict, reason = CONSISTENT, _noise_words(paired, rules)
    record = judge.build_case_record(
        subject, key, verdict, reason, ordered, judged, measured=measured, tokens_compared=len(measured),
        changes=changes, first_diff_token=changes[0].token if changes else None, replay_mode=replay.mode,
        findings=tuple(findings),
    )
    return replace(record, reference="control", paired=paired)


def judge_free(subject: str, key: int | str, steps: Sequence[Step], control: Mapping[int, Step],
               rules: Rules) -> CaseRecord:
    """A free-running case against its control steps: the steps up to and including the first argmax change
    (both sides followed the same text until then), and the near-tie at that change."""
    ordered = judge.ordered_steps(steps)
    end, flip, stop, stop_reason = len(ordered), None, None, ""
    for index, step in enumerate(ordered):
        if step.metrics is None:
            if step.same_values:
                continue
            stop = INCOMPLETE if step.unavailable else DIVERGENT
            stop_reason, end = f"token {step.token_id}: {step.reason}", index + 1
            break
        if not step.metrics.top1_match:
            flip, end = step, index + 1
            break
    judged = ordered[:end]
    measured = [s.metrics for s in judged if s.metrics is not None]
    changes = (ArgmaxChange.at(flip),) if flip is not None else ()
    paired = paired_case(judged, control, rules)
    found = _findings(paired, changes, control, rules)
    findings: list[str] = []
    if stop is not None:
        verdict, reason = stop, stop_reason
        findings.append("missing" if stop == INCOMPLETE else "failed-check")
    elif found.problems:
        verdict, reason = DIVERGENT, "against the control: " + "; ".join(found.problems)
        findings += (["drift"] if found.drifts else []) + (["clear-change"] if found.clear else [])
    elif flip is not None:
        verdict, reason = TIE_FLIP, (f"token {flip.token_id}: argmax {changes[0].golden_token} -> "
                                     f"{changes[0].my_token} within what the control's noise overturns; "
                                     + _noise_words(paired, rules))
        findings.append("near-tie-change")
    elif all(m.identical for m in measured):
        verdict, reason = IDENTICAL, ""
    else:
        verdict, reason = CONSISTENT, _noise_words(paired, rules)
    record = judge.build_case_record(
        subject, key, verdict, reason, ordered, judged, measured=measured,
        tokens_compared=sum(1 for s in ordered if s.metrics is not None), changes=changes,
        first_diff_token=flip.token_id if flip is not None else None, findings=tuple(findings),
    )
    return replace(record, reference="control", paired=paired)


def _noise_words(paired: PairedCase | None, rules: Rules) -> str:
    if paired is None:
        return "no step to compare with the control"
    return (f"its noise is {math.exp(paired.log_ratio):.3g}x the control's over {paired.steps} step(s) "
            f"(healthy up to {rules.factor:.3g}x)")


def judge_with_control(steps: Sequence[Step], control: ControlSteps, tolerances: judge.Tolerances,
                       replays: Mapping[CaseKey, judge.ReplayedCase], factor: float,
                       gross: judge.GrossBound | None = None) -> list[CaseRecord]:
    """Every case: against the control where it covers the case, else as `judge.judge_cases` would (the
    floor, or `unreferenced` without one); DataError when a replayed control lacks a step the test judges."""
    groups: dict[CaseKey, list[Step]] = {}
    for step in steps:
        if step.key is not None:
            groups.setdefault((step.subject, step.key), []).append(step)
    covered = {case: group for case, group in groups.items() if control.by_case.get(case)}
    if control.arm.replayed:
        _check_steps(covered, control, replays)
    spread = pooled_spread(_step_ratios(_judged(group, replays.get(case)), control.by_case[case])
                           for case, group in covered.items())
    rules = Rules(factor, max(STEP_SPREAD, spread or 0.0))
    cases = _judge_covered(covered, control, replays, rules)
    run = run_ratio(cases, factor)
    if run is not None and run.low is not None and run.verdict == PRECISION_SUSPECT:
        cases = _judge_covered(covered, control, replays, replace(rules, in_run=True))
    rest = [step for case, group in groups.items() if case not in covered for step in group]
    cases += judge.judge_cases(rest, tolerances, replays, gross=gross)
    return sorted(cases, key=judge.case_order)


def _judge_covered(covered: Mapping[CaseKey, Sequence[Step]], control: ControlSteps,
                   replays: Mapping[CaseKey, judge.ReplayedCase], rules: Rules) -> list[CaseRecord]:
    """The cases the control covers, each against its control steps under `rules`."""
    cases = []
    for case, group in covered.items():
        replay = replays.get(case)
        if replay is not None:
            cases.append(judge_replayed(case[0], case[1], group, replay, control.by_case[case], rules))
        else:
            cases.append(judge_free(case[0], case[1], group, control.by_case[case], rules))
    return cases


def _judged(group: Sequence[Step], replay: judge.ReplayedCase | None) -> list[Step]:
    """The steps a case is judged on: a replay's every step it dumped, a free run's up to its first change."""
    ordered = judge.ordered_steps(group)
    if replay is not None:
        return [s for s in ordered if not judge.beyond_replay(s, replay)]
    end = next((i + 1 for i, s in enumerate(ordered) if s.changed), len(ordered))
    return list(ordered[:end])


def _check_steps(covered: Mapping[CaseKey, Sequence[Step]], control: ControlSteps,
                 replays: Mapping[CaseKey, judge.ReplayedCase]) -> None:
    """A replayed control must have every step the test side judges (DataError naming the first case)."""
    for case, group in sorted(covered.items(), key=lambda kv: str(kv[0])):
        have = control.by_case[case]
        replay = replays.get(case)
        wanted = [s.token_id for s in group if s.metrics is not None and s.token_id is not None
                  and (replay is None or not judge.beyond_replay(s, replay))]
        lacking = sorted(t for t in wanted if t not in have)
        if replay is None:  # a free run judges only up to its first change
            first = next((s.token_id for s in judge.ordered_steps(group) if s.changed), None)
            lacking = [t for t in lacking if first is None or t <= first]
        if lacking:
            raise DataError(f"control {control.arm.path}: case {case[0]} #{case[1]} lacks step(s) "
                            f"{_spans(lacking)} that the test side has ({control.files.get(case, 0)} control "
                            "step(s)): dump the control with the same -tr as golden")


def _spans(tokens: Sequence[int]) -> str:
    if len(tokens) > 3:
        return f"{tokens[0]}-{tokens[-1]}" if tokens[-1] - tokens[0] + 1 == len(tokens) else \
            f"{', '.join(map(str, tokens[:3]))} ..."
    return ", ".join(map(str, tokens))


# ---- the run's reference -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRatio:
    """The run's statistic: the mean over cases of (mean r - log f), with its interval, and the verdict."""

    cases: int
    excess: float
    low: float | None
    high: float | None
    #: exp(mean over cases of mean r): the test's noise over the control's, as a factor.
    ratio: float
    #: sum KL(golden || test) / sum KL(golden || control) over every paired step.
    kl_ratio: float | None
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "excess": self.excess, "low": self.low, "high": self.high,
                "ratio": self.ratio, "kl_ratio": self.kl_ratio, "confidence": RUN_CONFIDENCE,
                "verdict": self.verdict}


def run_interval(excesses: Sequence[float]) -> tuple[float, float | None, float | None]:
    """The mean of the cases' excesses (mean r - log f) and its RUN_CONFIDENCE Student-t interval (None with
    one case)."""
    n = len(excesses)
    mean = math.fsum(excesses) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(math.fsum((e - mean) ** 2 for e in excesses) / (n - 1))
    half = t_quantile(0.5 + RUN_CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def run_ratio(cases: Sequence[CaseRecord], factor: float) -> RunRatio | None:
    """The run's ratio over the cases judged against the control (None: none was)."""
    paired = [c.paired for c in cases if c.paired is not None]
    if not paired:
        return None
    allowance = math.log(factor)
    n = len(paired)
    mean, low, high = run_interval([p.log_ratio - allowance for p in paired])
    suspect = (low is not None and low > 0.0) or (n == 1 and any(c.verdict == PRECISION_SUSPECT for c in cases))
    test_kl = control_kl = 0.0
    for case in cases:
        if case.paired is None:
            continue
        by_token = {s.token_id: s for s in case.judged_steps}
        for row in case.paired.control_steps:
            step = by_token.get(row.token)
            if row.log_ratio is not None and row.control_kl is not None and step is not None and step.metrics:
                test_kl += step.metrics.kl_divergence
                control_kl += row.control_kl
    return RunRatio(n, mean, low, high, math.exp(mean + allowance), test_kl / control_kl if control_kl else None,
                    PRECISION_SUSPECT if suspect else NOISE)


@dataclass(frozen=True)
class Reference:
    """What the verdicts of a run were judged against: the control arm (and the floor for what it does not
    cover), or the floor alone."""

    source: str
    description: str
    control: ControlArm | None = None
    factor: float | None = None
    factor_rule: str = ""
    dtypes: Mapping[str, str | None] = field(default_factory=dict)
    run: RunRatio | None = None
    #: Labels of the cases the control did not cover (judged by the floor).
    uncovered: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "description": self.description,
            "control": self.control.to_dict() if self.control is not None else None,
            "factor": self.factor, "factor_rule": self.factor_rule, "dtypes": dict(self.dtypes),
            "run": self.run.to_dict() if self.run is not None else None, "uncovered": list(self.uncovered),
            "constants": {"step_spread": STEP_SPREAD, "case_share": CASE_SHARE, "alpha_mean": ALPHA_MEAN,
                          "alpha_step": ALPHA_STEP, "alpha_in_run": ALPHA_IN_RUN, "tail": TAIL, "flip_z": FLIP_Z,
                          "clamp": CLAMP, "spread_bound": SPREAD_BOUND},
        }


def describe_run(run: RunRatio | None, factor: float) -> str:
    """One line: the run's ratio with its interval, against the healthy bound."""
    if run is None:
        return "no case could be compared with the control"
    if run.low is not None and run.high is not None:
        interval = (f" ({RUN_CONFIDENCE:.0%} interval {factor * math.exp(run.low):.3g}-"
                    f"{factor * math.exp(run.high):.3g}x)")
    else:
        interval = " (one case: no interval)"
    words = "above the healthy bound: a precision problem" if run.verdict == PRECISION_SUSPECT else "noise"
    return (f"over {run.cases} case(s) the test's noise is {run.ratio:.3g}x the control's{interval}, healthy up to "
            f"{factor:.3g}x: {words}")


def control_reference(arm: ControlArm, dtypes: Mapping[str, str | None], cases: Sequence[CaseRecord],
                      floor_label: str) -> Reference:
    """The reference record of a run judged against `arm`."""
    factor, rule = spread_factor(dtypes.get("golden"), dtypes.get("test"), arm.dtype)
    run = run_ratio(cases, factor)
    uncovered = tuple(c.label for c in cases if c.reference != "control")
    description = (f"control arm: {arm.description} ({arm.path}, {'replayed' if arm.replayed else 'free-running'}, "
                   f"{arm.found}); " + describe_run(run, factor))
    if uncovered:
        named = ", ".join(uncovered[:5]) + (" ..." if len(uncovered) > 5 else "")
        description += f"; {len(uncovered)} case(s) not in the control judged by the {floor_label} ({named})"
    return Reference("control", description, arm, factor, rule,
                     {"golden": dtypes.get("golden"), "test": dtypes.get("test"), "control": arm.dtype}, run,
                     uncovered)


def usable(arm: ControlArm, golden: str | None, test: str | None) -> bool:
    """Whether the control's pairing with these dtypes can be a reference (its spread factor within
    [1 / SPREAD_BOUND, SPREAD_BOUND]); logs why not."""
    factor, _rule = spread_factor(golden, test, arm.dtype)
    if 1.0 / SPREAD_BOUND <= factor <= SPREAD_BOUND:
        return True
    _log.warning("the control %s (%s) is no reference for a %s test against a %s golden: its noise would have "
                 "to be scaled by %.3g; dump a control in the test's dtype (dump --control impl)", arm.path,
                 arm.dtype, test, golden, factor)
    return False
