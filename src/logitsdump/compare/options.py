"""What a compare run is asked to do (`CompareOptions`), and the checks of each value."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from logitsdump.compare.floor import (
    NOISE_KEYS,
    Floor,
    finite_number,
    least_precise,
    read_tolerances_file,
    resolve_floor,
)
from logitsdump.compare.metrics import Thresholds
from logitsdump.dtypes import DATA_TYPES
from logitsdump.errors import UsageError
from logitsdump.fsutil import shorten

#: msit's `-d/--dtype` default: the ULP dtype of folders whose manifests do not say (a real modeltest's dump).
MSIT_DTYPE = "fp16"


@dataclass(frozen=True)
class CompareOptions:
    """What `logitsdump compare` (msit `logitscmp`) needs."""

    golden_path: str | os.PathLike[str]
    my_path: str | os.PathLike[str]
    output_dir: str | os.PathLike[str] = "./output"
    cosine: float = 0.999
    kl: float = 0.0001
    l1: float = 0.01
    #: The dtype whose ULP the max-logit test uses; None: the least precise dtype of the dumps' manifests
    #: (`with_dumps_dtype`), msit's fp16 for folders without one.
    dtype: str | None = None
    topk: int = 10
    #: Free runs: a first argmax change is a tie-flip when golden's margin is at most this (logits).
    #: None: from `tolerances_file`, else the floor's noise margin (`floor.resolve_floor`).
    tie_tolerance: float | None = None
    #: Replayed cases: an argmax change is noise when golden's margin is at most noise_margin (logits),
    #: a step is close when KL <= noise_kl and cosine >= noise_cosine, and a case when its mean KL is at
    #: most noise_mean_kl. None: from `tolerances_file`, else the conservative default of the dumps' dtype
    #: (`floor.resolve_floor`); a value given here wins over the file.
    noise_margin: float | None = None
    noise_kl: float | None = None
    noise_cosine: float | None = None
    noise_mean_kl: float | None = None
    noise_mean_kl_steps: float | None = None
    #: A tolerances file written by `logitsdump calibrate`: the measured noise floor.
    tolerances_file: str | os.PathLike[str] | None = None
    #: The control arm's folder (`compare/control.py`); None: the one the golden dump names or has beside it.
    control_path: str | os.PathLike[str] | None = None
    #: False: judge without a control arm even where one is found (`--no-control`).
    use_control: bool = True
    #: Reader threads; None: the CPU count, at most 8.
    workers: int | None = None

    def thresholds(self) -> Thresholds:
        return Thresholds(cosine=self.cosine, kl=self.kl, l1=self.l1, dtype=self.dtype or MSIT_DTYPE)

    def with_dumps_dtype(self, dtypes: Iterable[str | None]) -> CompareOptions:
        """These options with `dtype` set: as given, else the least precise of `dtypes` (the manifests'),
        else msit's fp16."""
        if self.dtype is not None:
            return self
        return replace(self, dtype=least_precise(dtypes, MSIT_DTYPE))

    def floor(self, dtypes: Iterable[str | None] = ()) -> Floor:
        """The noise floor of this run: the fields given here, then the tolerances file, then the default
        of the least precise of `dtypes` (the dumps' data types; none known: `dtype`, compare's -d)."""
        given: dict[str, float | None] = {}
        measured_on = None
        if self.tolerances_file is not None:
            given, measured_on = read_tolerances_file(self.tolerances_file)
        given.update({k: getattr(self, k) for k in NOISE_KEYS if getattr(self, k) is not None})
        tie = self.tie_tolerance if self.tie_tolerance is not None else given.get("tie_tolerance")
        file = str(self.tolerances_file) if self.tolerances_file is not None else None
        return resolve_floor(given, file=file, measured_on=measured_on, dtypes=dtypes,
                             fallback_dtype=self.dtype or MSIT_DTYPE,
                             tie=tie)

    def validate(self) -> None:
        """Raise UsageError (exit 2) for a value out of range, as msit checks its flags: every threshold
        and tolerance is read as a finite float first (NaN, infinities and integers beyond float's range,
        such as a 400-digit one, are refused, never an OverflowError)."""
        for name, flag, low, high in _RANGES:
            value = getattr(self, name)
            if value is None and name not in _REQUIRED:
                continue
            number = finite_number(value)
            if number is None or number < low or (high is not None and number > high):
                span = f"in [{low:g}, {high:g}]" if high is not None else f"a finite number >= {low:g}"
                raise UsageError(f"{flag} must be {span}, found {shorten(repr(value))}")
        if self.dtype is not None and self.dtype not in DATA_TYPES:
            raise UsageError(f"-d/--dtype must be one of {', '.join(DATA_TYPES)}, found {self.dtype!r}")
        if self.topk < 1:
            raise UsageError(f"--topk must be >= 1, found {self.topk}")
        if self.control_path is not None and not self.use_control:
            raise UsageError("--control and --no-control contradict each other")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be >= 1, found {self.workers}")

    def to_dict(self, floor: Floor | None = None) -> dict[str, Any]:
        """The options; with `floor`, the noise tolerances it resolved to (what the verdicts used)."""
        tolerances = floor.tolerances if floor is not None else self
        tie = floor.tolerances.tie if floor is not None else self.tie_tolerance
        return {
            "golden_path": str(self.golden_path),
            "my_path": str(self.my_path),
            "output_dir": str(self.output_dir),
            "cosine_similarity": self.cosine,
            "kl_divergence": self.kl,
            "l1_norm": self.l1,
            "dtype": self.dtype,
            "topk": self.topk,
            "tie_tolerance": tie,
            "noise_margin": tolerances.noise_margin,
            "noise_kl": tolerances.noise_kl,
            "noise_cosine": tolerances.noise_cosine,
            "noise_mean_kl": tolerances.noise_mean_kl,
            "noise_mean_kl_steps": tolerances.noise_mean_kl_steps,
            "tolerances_file": str(self.tolerances_file) if self.tolerances_file is not None else None,
            "control_path": str(self.control_path) if self.control_path is not None else None,
            "use_control": self.use_control,
        }


#: (field, flag, lowest, highest or None) of every number `CompareOptions.validate` checks.
_RANGES = (
    ("cosine", "-cs/--cosine-similarity", -1.0, 1.0),
    ("kl", "-kl/--kl-divergence", 0.0, None),
    ("l1", "-l1/--l1-norm", -1.0, None),
    ("tie_tolerance", "--tie-tolerance", 0.0, None),
    ("noise_margin", "--noise-margin", 0.0, None),
    ("noise_kl", "--noise-kl", 0.0, None),
    ("noise_mean_kl", "--noise-mean-kl", 0.0, None),
    ("noise_mean_kl_steps", "--noise-mean-kl-steps", 1.0, None),
    ("noise_cosine", "--noise-cosine", -1.0, 1.0),
)
#: The thresholds that always have a value (the others may be None: not given).
_REQUIRED = ("cosine", "kl", "l1")
