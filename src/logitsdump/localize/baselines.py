"""What the accumulated error alone would name, the way public tools answer "where" (for comparison).

All three read the plain pass of the test (nothing fed), module-level and model-level candidates in
forward order:
- `first_cosine_below`: the first module whose whole output has cosine < 0.99 against golden's
  (msprobe's whole-network compare, tt-metal's PCC per module);
- `largest_jump`: the module whose output's accumulated error grows most over its input's;
- `first_above_threshold`: the first module whose accumulated mean error exceeds a threshold calibrated on
  healthy pairs (`calibrate_thresholds`: a safety factor times the largest healthy value of each module).
Each returns the candidate label it names, or None. Pure; no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from logitsdump.localize.candidates import Candidate, Structure
from logitsdump.localize.records import Arm

#: msprobe's and tt-metal's cosine threshold.
COSINE = 0.99
#: A calibrated threshold is this many times the largest healthy accumulated error.
SAFETY = 2.0


def _modules(structure: Structure) -> list[Candidate]:
    return [c for c in structure.candidates if c.kind in ("module", "model")]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def first_cosine_below(structure: Structure, arm: Arm, threshold: float = COSINE) -> str | None:
    for candidate in _modules(structure):
        value = arm.cosine.get(candidate.name)
        if value is not None and value < threshold:
            return candidate.label
    return None


def largest_jump(structure: Structure, arm: Arm) -> str | None:
    best, best_ratio = None, 0.0
    for candidate in _modules(structure):
        out = arm.accumulated.get(candidate.name)
        into = arm.accumulated_in.get(candidate.name)
        if not out or not into:
            continue
        ratio = _mean(out) / max(_mean(into), 1e-12)
        if ratio > best_ratio:
            best, best_ratio = candidate.label, ratio
    return best


def calibrate_thresholds(structure: Structure, healthy: Sequence[Arm], safety: float = SAFETY) -> dict[str, float]:
    """name -> `safety` times the largest accumulated mean error of that module over healthy pairs."""
    thresholds: dict[str, float] = {}
    for candidate in _modules(structure):
        values = [_mean(arm.accumulated[candidate.name]) for arm in healthy if arm.accumulated.get(candidate.name)]
        if values:
            thresholds[candidate.name] = safety * max(values)
    return thresholds


def first_above_threshold(structure: Structure, arm: Arm, thresholds: Mapping[str, float]) -> str | None:
    for candidate in _modules(structure):
        errors = arm.accumulated.get(candidate.name)
        limit = thresholds.get(candidate.name)
        if errors and limit is not None and _mean(errors) > limit:
            return candidate.label
    return None
