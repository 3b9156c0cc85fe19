"""What a compare run is asked to do (`CompareOptions`), and the checks of each value."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from logitsdump.compare.judge import (
    DEFAULT_NOISE_COSINE,
    DEFAULT_NOISE_KL,
    DEFAULT_NOISE_MARGIN,
    DEFAULT_TIE_TOLERANCE,
    Tolerances,
)
from logitsdump.compare.metrics import Thresholds
from logitsdump.dtypes import DATA_TYPES
from logitsdump.errors import UsageError


@dataclass(frozen=True)
class CompareOptions:
    """What `logitsdump compare` (msit `logitscmp`) needs."""

    golden_path: str | os.PathLike[str]
    my_path: str | os.PathLike[str]
    output_dir: str | os.PathLike[str] = "./output"
    cosine: float = 0.999
    kl: float = 0.0001
    l1: float = 0.01
    dtype: str = "fp16"
    topk: int = 10
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE
    #: Replayed cases: an argmax change is noise when golden's margin is at most noise_margin (logits),
    #: and a step is close when KL <= noise_kl and cosine >= noise_cosine.
    noise_margin: float = DEFAULT_NOISE_MARGIN
    noise_kl: float = DEFAULT_NOISE_KL
    noise_cosine: float = DEFAULT_NOISE_COSINE
    #: Reader threads; None: the CPU count, at most 8.
    workers: int | None = None

    def thresholds(self) -> Thresholds:
        return Thresholds(cosine=self.cosine, kl=self.kl, l1=self.l1, dtype=self.dtype)

    def tolerances(self) -> Tolerances:
        return Tolerances(tie=self.tie_tolerance, noise_margin=self.noise_margin, noise_kl=self.noise_kl,
                          noise_cosine=self.noise_cosine)

    def validate(self) -> None:
        """Raise UsageError (exit 2) for a value out of range, as msit checks its flags."""
        if not (-1.0 <= self.cosine <= 1.0):
            raise UsageError(f"-cs/--cosine-similarity must be in [-1, 1], found {self.cosine}")
        if not (self.kl >= 0.0 and math.isfinite(self.kl)):
            raise UsageError(f"-kl/--kl-divergence must be a finite number >= 0, found {self.kl}")
        if not (self.l1 >= -1.0 and math.isfinite(self.l1)):
            raise UsageError(f"-l1/--l1-norm must be a finite number >= -1, found {self.l1}")
        if self.dtype not in DATA_TYPES:
            raise UsageError(f"-d/--dtype must be one of {', '.join(DATA_TYPES)}, found {self.dtype!r}")
        if self.topk < 1:
            raise UsageError(f"--topk must be >= 1, found {self.topk}")
        if not (self.tie_tolerance >= 0.0 and math.isfinite(self.tie_tolerance)):
            raise UsageError(f"--tie-tolerance must be a finite number >= 0, found {self.tie_tolerance}")
        if not (self.noise_margin >= 0.0 and math.isfinite(self.noise_margin)):
            raise UsageError(f"--noise-margin must be a finite number >= 0, found {self.noise_margin}")
        if not (self.noise_kl >= 0.0 and math.isfinite(self.noise_kl)):
            raise UsageError(f"--noise-kl must be a finite number >= 0, found {self.noise_kl}")
        if not (-1.0 <= self.noise_cosine <= 1.0):
            raise UsageError(f"--noise-cosine must be in [-1, 1], found {self.noise_cosine}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be >= 1, found {self.workers}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "golden_path": str(self.golden_path),
            "my_path": str(self.my_path),
            "output_dir": str(self.output_dir),
            "cosine_similarity": self.cosine,
            "kl_divergence": self.kl,
            "l1_norm": self.l1,
            "dtype": self.dtype,
            "topk": self.topk,
            "tie_tolerance": self.tie_tolerance,
            "noise_margin": self.noise_margin,
            "noise_kl": self.noise_kl,
            "noise_cosine": self.noise_cosine,
        }
