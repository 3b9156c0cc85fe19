"""`logitsdump calibrate`: measure the spread of known-good pairs and write the noise tolerances (the floor).

The pair is taken as pure numerical noise (two dumps of one healthy model in
two dtypes, or on two healthy devices, the test side replayed). Over every
judged step (a replayed case: all steps; a free run: up to and including the
first argmax change) it measures per-step KL, 1 - cosine, max |diff|, and
golden's margin at each argmax change, and suggests

    tolerance = safety_factor x the `quantile` quantile (nearest rank) of the spread

(`noise_kl` from KL, `noise_mean_kl` from each case's mean KL over its judged steps, `noise_cosine`
= 1 - that of 1 - cosine, `noise_margin` and `tie_tolerance` from the golden margins at argmax
changes, `noise_margin` at least `floor.margin_of_kl(noise_kl)`). The suggestions are written as a
JSON file, the model's measured noise floor, that `compare --tolerances FILE` reads
(`floor.read_tolerances_file`). `logitsdump calibrate` is the command; `compare --calibrate` the
older spelling of it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from logitsdump import __version__
from logitsdump.compare.floor import (
    TOLERANCES_PREFIX,
    TOLERANCES_SCHEMA,
    TOLERANCES_VERSION,
    finite_number,
    margin_of_kl,
    read_tolerances_file,
)
from logitsdump.compare.lenient import finite_float
from logitsdump.compare.options import CompareOptions
from logitsdump.compare.records import ONLY_IN_GOLDEN, ONLY_IN_MY, CaseRecord, Step
from logitsdump.compare.run import measure
from logitsdump.compare.stats import percentile_high
from logitsdump.errors import DataError, UsageError
from logitsdump.fsutil import atomic_write_text, claim_stamped, timestamp

#: Default safety factor and quantile of the suggestions.
DEFAULT_SAFETY_FACTOR = 2.0
DEFAULT_QUANTILE = 0.99


@dataclass(frozen=True)
class Spread:
    """Quantiles (nearest rank) of one measured quantity over the judged steps."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    #: The quantile the suggestion is based on (`quantile` of calibrate).
    at_quantile: float | None

    @classmethod
    def of(cls, values: Sequence[float], quantile: float) -> Spread:
        return cls(
            count=len(values),
            p50=percentile_high(values, 0.5),
            p90=percentile_high(values, 0.9),
            p99=percentile_high(values, 0.99),
            max=max(values) if values else None,
            at_quantile=percentile_high(values, quantile),
        )

    def to_dict(self) -> dict[str, Any]:
        values = {"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max, "at_quantile": self.at_quantile}
        return {"count": self.count, **{name: finite_float(v) for name, v in values.items()}}  # JSON has no inf


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` measured and suggests."""

    path: Path
    safety_factor: float
    quantile: float
    cases: int
    replayed_cases: int
    steps: int
    kl: Spread
    one_minus_cosine: Spread
    max_abs_diff: Spread
    change_margins: Spread
    #: Each case's mean KL over its judged steps.
    case_mean_kl: Spread
    #: The data types the dumps' manifests record (golden, test), when known.
    dtypes: tuple[str | None, str | None] = (None, None)
    #: The suggested tolerances; a key is missing when nothing was measured for it.
    suggested: Mapping[str, float] = field(default_factory=dict)
    #: Why a tolerance has no suggestion.
    notes: tuple[str, ...] = ()

    @property
    def rule(self) -> str:
        return (f"each tolerance = {self.safety_factor:g} x the {self.quantile:g} quantile (nearest rank) of the "
                "known-good pair's judged steps: noise_kl from per-step KL, noise_cosine = 1 - that of "
                "1 - cosine, noise_mean_kl from each case's mean KL, noise_margin and tie_tolerance from "
                "golden's margin at the steps where the argmax differs")

    def to_dict(self, pairs: Sequence[CompareOptions], stamp: str) -> dict[str, Any]:
        golden = [str(p.golden_path) for p in pairs]
        mine = [str(p.my_path) for p in pairs]
        return {
            "schema": TOLERANCES_SCHEMA,
            "schema_version": TOLERANCES_VERSION,
            "tool": f"logitsdump {__version__}",
            "timestamp": stamp,
            "tolerances": dict(self.suggested),
            "rule": self.rule,
            "safety_factor": self.safety_factor,
            "quantile": self.quantile,
            "notes": list(self.notes),
            "measured": {
                "golden_path": golden[0] if len(golden) == 1 else golden,
                "my_path": mine[0] if len(mine) == 1 else mine,
                "cases": self.cases,
                "replayed_cases": self.replayed_cases,
                "steps": self.steps,
                "golden_dtype": self.dtypes[0],
                "dtype": self.dtypes[1],
                "kl": self.kl.to_dict(),
                "one_minus_cosine": self.one_minus_cosine.to_dict(),
                "max_abs_diff": self.max_abs_diff.to_dict(),
                "golden_margin_at_changes": self.change_margins.to_dict(),
                "case_mean_kl": self.case_mean_kl.to_dict(),
            },
        }


def calibrate(
    options: CompareOptions | Sequence[CompareOptions],
    *,
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    quantile: float = DEFAULT_QUANTILE,
    output_path: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
) -> Calibration:
    """Measure the pair of `options` (or several pairs together, e.g. one per task) as known-good noise,
    write the suggested tolerances, return them.

    The JSON goes to `output_path`, by default `logits_cmp_tolerances_<ts>.json` in
    the (first pair's) output folder (never overwritten: `_1`, `_2`, ... are added).
    """
    pairs = [options] if isinstance(options, CompareOptions) else list(options)
    if not pairs:
        raise UsageError("calibrate needs at least one pair of folders")
    factor = finite_number(safety_factor)
    if factor is None or factor < 1.0:
        raise UsageError(f"--safety-factor must be a finite number >= 1, found {safety_factor}")
    safety_factor = factor
    if finite_number(quantile) is None or not (0.0 < quantile <= 1.0):
        raise UsageError(f"the calibration quantile must be in (0, 1], found {quantile}")
    runs = [measure(pair) for pair in pairs]
    cases = [case for run in runs for case in run.cases]
    kls: list[float] = []
    gaps: list[float] = []
    diffs: list[float] = []
    margins: list[float] = []
    case_kls = [[s.metrics.kl_divergence for s in judged_steps(c) if s.metrics is not None] for c in cases]
    case_kls = [values for values in case_kls if values]
    # each case's mean KL, brought to the median case length N (a mean over n steps spreads as 1/sqrt(n)):
    # the judge allows noise_mean_kl * sqrt(N / n) for a case of n steps
    steps_per_case = float(sorted(len(v) for v in case_kls)[(len(case_kls) - 1) // 2]) if case_kls else 1.0
    means = [math.fsum(v) / len(v) * math.sqrt(min(1.0, len(v) / steps_per_case)) for v in case_kls]
    for case in cases:
        for step in judged_steps(case):
            m = step.metrics
            if m is None:
                continue
            kls.append(m.kl_divergence)
            gaps.append(max(0.0, 1.0 - m.cosine_similarity))
            diffs.append(m.max_abs_diff)
            if not m.top1_match:
                margins.append(m.flip_margin)
    if not kls:  # nothing measured: a tolerances file compare would refuse is never written
        rows = sum(len(run.steps) for run in runs)
        both = sum(1 for run in runs for s in run.steps if s.reason not in (ONLY_IN_GOLDEN, ONLY_IN_MY))
        raise DataError(f"nothing to calibrate on: of {rows} file name(s) in the folders, {both} are in both and "
                        "none could be measured: give the logits folders of a known-healthy pair of dumps "
                        "(no tolerances file written)")
    kl, gap = Spread.of(kls, quantile), Spread.of(gaps, quantile)
    diff, change = Spread.of(diffs, quantile), Spread.of(margins, quantile)
    case_mean = Spread.of(means, quantile)
    suggested: dict[str, float] = {}
    notes: list[str] = []
    if change.at_quantile is not None:
        suggested["tie_tolerance"] = suggested["noise_margin"] = _round_up(safety_factor * change.at_quantile)
    else:
        notes.append("no argmax change among the judged steps: tie_tolerance and noise_margin not measured "
                     "(compare then takes noise_margin = 2 x sqrt(noise_kl); or calibrate on more cases)")
    if kl.at_quantile is not None and gap.at_quantile is not None:
        suggested["noise_kl"] = _round_up(safety_factor * kl.at_quantile)
        from_kl = margin_of_kl(suggested["noise_kl"])
        if "noise_margin" in suggested and suggested["noise_margin"] < from_kl:
            # a handful of argmax changes says little about the margins noise overturns
            notes.append(f"noise_margin raised from {suggested['noise_margin']:g} (the {change.count} argmax "
                         f"change(s)) to {from_kl:g} = 2 x sqrt(noise_kl), what noise at that KL overturns")
            suggested["noise_margin"] = from_kl
        suggested["noise_cosine"] = max(-1.0, 1.0 - _round_up(safety_factor * gap.at_quantile))
        if case_mean.at_quantile is not None:
            suggested["noise_mean_kl"] = _round_up(safety_factor * case_mean.at_quantile)
            suggested["noise_mean_kl_steps"] = steps_per_case
    else:
        notes.append("no step could be measured: noise_kl and noise_cosine not suggested")
    for key in [k for k, v in suggested.items() if not math.isfinite(v)]:
        notes.append(f"{key} not suggested: the measured spread is not a finite number")
        del suggested[key]
    if cases and not any(c.replayed for c in cases):
        notes.append("no replayed case: only the steps up to each case's first argmax change were used; "
                     "replay the test side (dump --replay) to measure every step")
    stamp = timestamp(now)

    def write(path: Path) -> Calibration:
        result = Calibration(
            path=path,
            safety_factor=safety_factor,
            quantile=quantile,
            cases=len(cases),
            replayed_cases=sum(1 for c in cases if c.replayed),
            steps=len(kls),
            kl=kl,
            one_minus_cosine=gap,
            max_abs_diff=diff,
            change_margins=change,
            case_mean_kl=case_mean,
            dtypes=(_dtype(cases, golden=True), _dtype(cases, golden=False)),
            suggested=suggested,
            notes=tuple(notes),
        )
        document = result.to_dict(pairs, stamp)
        atomic_write_text(path, json.dumps(document, ensure_ascii=False, indent=1, allow_nan=False) + "\n")
        return result

    if output_path is not None:
        return write(Path(output_path))
    with claim_stamped(runs[0].out_dir, stamp, lambda tag: (f"{TOLERANCES_PREFIX}{tag}.json",)) as (path,):
        return write(path)


def judged_steps(case: CaseRecord) -> tuple[Step, ...]:
    """The steps a case's verdict was judged on (a free run: up to the first change; a replay: all)."""
    return case.steps[: case.tokens_judged]


def _dtype(cases: Sequence[CaseRecord], *, golden: bool) -> str | None:
    """The data type one side's manifests record (the first found), or None."""
    for case in cases:
        manifest = case.golden_manifest if golden else case.my_manifest
        if manifest is not None and manifest.dtype:
            return manifest.dtype
    return None


def _round_up(value: float) -> float:
    """`value` rounded up to 2 significant digits (tolerances read better; never below the measurement)."""
    if value <= 0.0 or not math.isfinite(value):
        return value
    digits = 1 - math.floor(math.log10(value))
    return round(math.ceil(value * 10.0**digits - 1e-9) / 10.0**digits, max(digits, 0))


def format_calibration(result: Calibration) -> str:
    """The terminal summary of a calibration."""
    def num(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}g}"

    lines = [
        f"calibration: {result.cases} case(s) ({result.replayed_cases} replayed), {result.steps} judged step(s), "
        f"{result.change_margins.count} argmax change(s)",
        "",
        f"  {'per judged step':<26} {'p50':>10} {'p90':>10} {'p99':>10} {'max':>10}",
    ]
    for name, spread in (("KL", result.kl), ("1 - cosine", result.one_minus_cosine),
                         ("max |diff| (logits)", result.max_abs_diff),
                         ("golden margin at changes", result.change_margins),
                         ("case mean KL", result.case_mean_kl)):
        lines.append(f"  {name:<26} {num(spread.p50):>10} {num(spread.p90):>10} {num(spread.p99):>10} "
                     f"{num(spread.max):>10}")
    lines += ["", f"rule: {result.rule}", "suggested:"]
    flags = {"tie_tolerance": "--tie-tolerance", "noise_margin": "--noise-margin", "noise_kl": "--noise-kl",
             "noise_cosine": "--noise-cosine", "noise_mean_kl": "--noise-mean-kl",
             "noise_mean_kl_steps": "--noise-mean-kl-steps"}
    for key, flag in flags.items():
        value = result.suggested.get(key)
        lines.append(f"  {flag:<16} {value:.6g}" if value is not None else f"  {flag:<16} (not measured)")
    lines += [f"note: {note}" for note in result.notes]
    lines.append(f"tolerances: {result.path}")
    lines.append(f"use them:   logitsdump compare -gp ... -mp ... --tolerances {result.path}")
    return "\n".join(lines)


def load_tolerances(path: str | os.PathLike[str]) -> dict[str, float]:
    """The tolerances of a file written by `calibrate` (or by hand): CompareOptions field -> value
    (`floor.read_tolerances_file`, without what it was measured on)."""
    return read_tolerances_file(path)[0]
