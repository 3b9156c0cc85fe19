"""Scoring one case: each candidate's own error (the test arm) against its band (the control arm, or a healthy
pair), and the case's verdict. Shared by the replay (its provisional verdict picks what to patch) and the
judge, so both reach the same verdict from the same files. Pure; no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from logitsdump.localize.bands import Band, band_of, floor_for, pooled_band, score
from logitsdump.localize.candidates import Structure
from logitsdump.localize.records import Arm
from logitsdump.localize.verdict import CaseVerdict, Scored, judge_case

CONTROL, HEALTHY_SAME, HEALTHY_POOLED = "control arm (same case)", "healthy pair (same case)", "healthy pair (pooled)"


@dataclass(frozen=True)
class BandSource:
    """Where a case's bands come from: an arm of the same case, or a healthy pair's errors on other prompts."""

    kind: str
    floor: float
    arm: Arm | None = None
    #: Candidate name -> per-prompt error lists (a pooled healthy pair), module and layer level together.
    pooled: Mapping[str, Sequence[Sequence[float]]] = field(default_factory=dict)

    def band(self, name: str, level: str) -> Band | None:
        if self.arm is not None:
            errors = (self.arm.layer if level == "layer" else self.arm.module).get(name)
            return band_of(errors, floor=self.floor) if errors else None
        prompts = self.pooled.get(name)
        return pooled_band(prompts, floor=self.floor) if prompts else None


def control_source(control: Arm, golden_dtype: str) -> BandSource:
    """The bands of a case from its own control arm."""
    return BandSource(CONTROL, floor_for(control.dtype, golden_dtype), arm=control)


def pooled_source(arms: Sequence[Arm], golden_dtype: str) -> BandSource:
    """The bands from a healthy pair's arms on other prompts (every candidate's per-prompt errors)."""
    pooled: dict[str, list[list[float]]] = {}
    for arm in arms:
        for table in (arm.module, arm.layer):
            for name, errors in table.items():
                pooled.setdefault(name, []).append(errors)
    dtype = arms[0].dtype if arms else golden_dtype
    return BandSource(HEALTHY_POOLED, floor_for(dtype, golden_dtype), pooled=pooled)


def scores(structure: Structure, bands: BandSource, test: Arm) -> tuple[list[Scored], list[Scored], list[str]]:
    """(module-level and model-level scores, layer-level scores, candidates missing from either side)."""
    modules: list[Scored] = []
    layers: list[Scored] = []
    missing: list[str] = []
    for candidate in structure.candidates:
        level = "layer" if candidate.kind == "layer" else "module"
        errors = (test.layer if level == "layer" else test.module).get(candidate.name)
        band = bands.band(candidate.name, level)
        if not errors or band is None:
            missing.append(candidate.label)
            continue
        if len(errors) != band.tokens and bands.arm is not None:
            missing.append(candidate.label)
            continue
        (layers if level == "layer" else modules).append(Scored(candidate, band, score(errors, band)))
    return modules, layers, missing


def case_verdict(structure: Structure, bands: BandSource | None, test: Arm | None,
                 problem: str | None = None) -> tuple[CaseVerdict, list[Scored], list[Scored]]:
    """The verdict of a case and the scores behind it."""
    if problem is None and test is None:
        problem = "not replayed on the test side"
    if problem is None and bands is None:
        problem = (f"no band: the record has no control arm in the test's dtype ({test.dtype if test else '?'}); "
                   "record with --test-dtype of it, or judge with --band HEALTHY_REPLAY")
    if problem is not None or test is None or bands is None:
        return judge_case((), problem=problem), [], []
    modules, layers, missing = scores(structure, bands, test)
    if missing:
        shown = ", ".join(missing[:3])
        return judge_case((), problem=f"{len(missing)} candidate(s) not measured on both sides ({shown}): the "
                          "record and the replay do not match"), modules, layers
    return judge_case(modules, layers, depth=structure.layers), modules, layers
