"""The band of a candidate: how large its own error is in a healthy implementation of the test dtype.

The default band comes from the control arm of the same case (the golden device running the isolated
replay in the test dtype), so each module is judged against the noise of the same prompt: the mean and the
max over tokens of its per-token errors. A candidate's score is the larger of its mean error over the
band's mean and its max error over the band's max.

- Few tokens (a short prompt, or the LM head's last positions): the band is widened by
  sqrt(MIN_TOKENS / tokens), and says so.
- A band from a healthy pair on *other* prompts (pooled) is the largest mean and max over them, widened by
  1 + 1/sqrt(prompts) when there are fewer than MIN_PROMPTS, and says so.
- A control arm in golden's own dtype can be bit-identical to golden at a module (the same kernel): its band
  is then at least the floor, FLOOR_UNITS units of roundoff of the dtype (fp32: 3.8e-6, about what another
  accumulation order gives a module whose inputs hold SmolLM2's massive activations).
Pure arithmetic, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from logitsdump.dtypes import DTYPE_EPS

#: Below this many tokens a band is widened.
MIN_TOKENS = 16
#: Below this many prompts a pooled band is widened.
MIN_PROMPTS = 8
#: The floor of a band measured in golden's own dtype, in units of roundoff (fp32: 3.8e-6; the tuning run's
#: healthy fp32 pair, split-K matmuls against golden's kernels, reached 3e-6 in attention, 3x the band of 16 units).
FLOOR_UNITS = 64


@dataclass(frozen=True)
class Band:
    """A candidate's band: the healthy mean and max over tokens of its own error."""

    mean: float
    max: float
    tokens: int
    #: 1 for the same case's control arm, else how many healthy prompts it pools.
    prompts: int = 1
    #: The factor it was widened by (1.0: not widened).
    widened: float = 1.0
    #: It was raised to the dtype's floor.
    floored: bool = False

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


@dataclass(frozen=True)
class Score:
    """A candidate's own error against its band."""

    mean: float
    max: float
    mean_ratio: float
    max_ratio: float

    @property
    def value(self) -> float:
        """The larger ratio: how many bands above its healthy error the candidate is."""
        return max(self.mean_ratio, self.max_ratio)


def unit_roundoff(dtype: str) -> float:
    """Half the spacing of 1.0 in `dtype` (bf16 2^-8, fp16 2^-11, fp32 2^-24)."""
    return DTYPE_EPS[dtype] / 2


def floor_for(control_dtype: str, golden_dtype: str) -> float:
    """The floor of a band: FLOOR_UNITS units of roundoff when the control runs in golden's own dtype (it may
    be bit-identical to golden), else 0 (a lower precision's rounding makes every healthy error positive)."""
    return FLOOR_UNITS * unit_roundoff(control_dtype) if control_dtype == golden_dtype else 0.0


def band_of(errors: Sequence[float], *, floor: float = 0.0) -> Band:
    """The band from one case's healthy per-token errors (the control arm of the same case)."""
    if not errors:
        raise ValueError("a band needs at least one token")
    mean = sum(errors) / len(errors)
    peak = max(errors)
    widen = math.sqrt(MIN_TOKENS / len(errors)) if len(errors) < MIN_TOKENS else 1.0
    floored = mean < floor or peak < floor
    return Band(max(mean, floor) * widen, max(peak, floor) * widen, len(errors), 1, widen, floored)


def pooled_band(per_prompt: Sequence[Sequence[float]], *, floor: float = 0.0) -> Band:
    """The band from a healthy pair's per-token errors on other prompts: the largest mean and max of them."""
    prompts = [p for p in per_prompt if p]
    if not prompts:
        raise ValueError("a pooled band needs at least one prompt")
    mean = max(sum(p) / len(p) for p in prompts)
    peak = max(max(p) for p in prompts)
    widen = 1.0 + 1.0 / math.sqrt(len(prompts)) if len(prompts) < MIN_PROMPTS else 1.0
    floored = mean < floor or peak < floor
    return Band(max(mean, floor) * widen, max(peak, floor) * widen, min(len(p) for p in prompts), len(prompts),
                widen, floored)


def score(errors: Sequence[float], band: Band) -> Score:
    """`errors` (the test's per-token errors) against `band`."""
    if not errors:
        raise ValueError("a score needs at least one token")
    mean = sum(errors) / len(errors)
    peak = max(errors)
    return Score(mean, peak, _ratio(mean, band.mean), _ratio(peak, band.max))


def _ratio(value: float, reference: float) -> float:
    if reference > 0:
        return value / reference
    return 0.0 if value == 0 else math.inf
