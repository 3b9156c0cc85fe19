"""The noise floor a replayed case is judged against, and where it came from.

Three sources, in this order of preference:
- `measured`: a tolerances file written by `logitsdump calibrate` (or `compare --calibrate`) on a
  known-healthy pair of the same model (`compare --tolerances FILE`);
- `flags`: every noise tolerance given on the command line;
- `default`: no floor given. The default is scale-free and conservative: it is a KL bound (KL is on
  probabilities, so it does not depend on the logits' scale or shift) for the least precise dtype of
  the two dumps, anchored on llama.cpp's measurement of bf16 noise on LLaMA-3-8B (99.9th percentile of
  the per-token KL: 8e-4) and scaled by the square of the dtype's spacing (KL grows as the square of
  a small logit perturbation): bf16 8e-4, fp16 1.25e-5, fp32 1.86e-13. A larger model is less noisy
  than a small one, so on a small model the default calls some plain noise precision-suspect; it never
  calls anything noise on weaker evidence than a measured floor would. The argmax-change margin
  follows from the KL bound: a logit perturbation of standard deviation s gives KL ~ s^2 / 2 (the
  variance under golden's distribution), and the gap between two candidates then moves by
  s * sqrt(2), so noise at the KL bound K overturns margins up to `2 * sqrt(K)` logits (bf16: 0.057).
  A floor measured with few argmax changes takes at least this margin too (the changes' own margins
  are a poor estimate from a handful). Cosine of logits is not scale-free (adding a constant to
  every logit changes it), so the default does not use it (-1).
With the default alone there is no reference for this model's noise: a case the default's rules would
accuse is `unreferenced` ("dump a control") unless it passes the gross bound (`gross_bound`), twice the
noisiest healthy pair measured on any model here (the random-weight tiny model in bf16: step KL 0.39,
golden margin at an argmax change 0.79 logits), scaled to the dtype like the default.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitsdump.compare.judge import GrossBound, Tolerances
from logitsdump.dtypes import DATA_TYPES, DTYPE_EPS
from logitsdump.errors import DataError
from logitsdump.fsutil import TOLERANCES_MAX_BYTES, read_input_text, shorten
from logitsdump.logs import get_logger

#: llama.cpp `--kl-divergence` on LLaMA-3-8B, bf16 against fp16: the 99.9th percentile of per-token KL.
BF16_ANCHOR_KL = 8e-4
#: The gross bound of bf16: 2 x the largest step KL (0.39) and argmax-change margin (0.79 logits) of the
#: noisiest healthy pair measured here (the tiny random model, fp32 vs bf16, 1557 steps; its floor file).
GROSS_BF16_KL = 0.8
GROSS_BF16_MARGIN = 1.6
MEASURED, FLAGS, DEFAULT = "measured", "flags", "default"
#: The noise tolerances a floor sets (CompareOptions fields); `tie_tolerance` is the free runs' own.
NOISE_KEYS = ("noise_margin", "noise_kl", "noise_cosine", "noise_mean_kl", "noise_mean_kl_steps")
#: The keys of a tolerances file, with the CompareOptions field each sets.
TOLERANCE_KEYS = ("tie_tolerance", *NOISE_KEYS)
#: Tolerance files are named `{TOLERANCES_PREFIX}<timestamp>[_N].json`.
TOLERANCES_PREFIX = "logits_cmp_tolerances_"
#: The `schema` of a tolerances file.
TOLERANCES_SCHEMA = "logitsdump-tolerances"
TOLERANCES_VERSION = 1

_log = get_logger("compare")


def default_tolerances(dtype: str) -> dict[str, float | None]:
    """The conservative, scale-free noise tolerances of `dtype` (see the module docstring)."""
    kl = BF16_ANCHOR_KL * (DTYPE_EPS[dtype] / DTYPE_EPS["bf16"]) ** 2
    return {"noise_kl": float(f"{kl:.3g}"), "noise_margin": margin_of_kl(kl),
            "noise_cosine": -1.0, "noise_mean_kl": None, "noise_mean_kl_steps": 1.0}


def gross_bound(dtype: str) -> GrossBound:
    """The deviations no healthy pair of `dtype` reaches (see the module docstring), scaled from bf16's by
    the dtype's spacing (KL as its square, a margin as itself)."""
    scale = DTYPE_EPS[dtype] / DTYPE_EPS["bf16"]
    return GrossBound(float(f"{GROSS_BF16_KL * scale**2:.3g}"), float(f"{GROSS_BF16_MARGIN * scale:.3g}"), dtype)


def margin_of_kl(kl: float) -> float:
    """The argmax-change margin (logits) noise at the KL bound `kl` can overturn: 2 x sqrt(kl)."""
    return float(f"{2.0 * math.sqrt(kl):.3g}")


def least_precise(dtypes: Iterable[str | None], fallback: str) -> str:
    """The least precise known dtype of `dtypes` (the noise of a pair is that of its coarser side)."""
    known = [d for d in dtypes if d in DATA_TYPES]
    return max(known, key=lambda d: DTYPE_EPS[d]) if known else fallback


@dataclass(frozen=True)
class Floor:
    """The noise tolerances a compare run judged replayed cases with, and their source."""

    source: str
    tolerances: Tolerances
    #: The dtype whose default was used (`default`), or the dtype the file was measured on when known.
    dtype: str | None = None
    #: The tolerances file (`measured`).
    path: str | None = None
    #: What the file says it was measured on (golden and test folders, cases, steps).
    measured_on: Mapping[str, Any] = field(default_factory=dict)

    @property
    def gross(self) -> GrossBound | None:
        """The gross bound when this floor is the dtype's default alone (no reference for the model); None for a
        measured floor or flags (a reference the user gave)."""
        return gross_bound(self.dtype) if self.source == DEFAULT and self.dtype in DATA_TYPES else None

    @property
    def label(self) -> str:
        """A few words for a table cell: the source, and the file or the dtype whose default was used."""
        if self.source == MEASURED:
            return f"measured: {self.path}"
        return f"{self.source}: {self.dtype}"

    @property
    def description(self) -> str:
        """One line for people: which floor the verdicts used."""
        t = self.tolerances
        values = f"step KL <= {t.noise_kl:.3g}, margin <= {t.noise_margin:.3g} logits, tie <= {t.tie:.3g} logits"
        if t.noise_cosine > -1.0:
            values += f", cosine >= {t.noise_cosine:.6g}"
        if t.noise_mean_kl is not None:
            values += f", case mean KL <= {t.noise_mean_kl:.3g} at {t.noise_mean_kl_steps:g} steps"
        if self.source == MEASURED:
            cases = self.measured_on.get("cases")
            on = f", measured on {cases} known-healthy case(s)" if isinstance(cases, int) else ""
            return f"measured noise floor from {self.path}{on}: {values}"
        if self.source == FLAGS:
            return (f"no measured floor: noise tolerances given as flags, the rest the default for {self.dtype}: "
                    f"{values}")
        gross = self.gross
        bound = f"; below the gross bound (step KL {gross.kl:g}, margin {gross.margin:g}) unreferenced" if gross else ""
        return (f"no measured floor: the conservative default for {self.dtype} ({values}{bound}); dump a control "
                "arm (dump --control) or measure this model's floor with `logitsdump calibrate`")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "description": self.description, "dtype": self.dtype, "path": self.path,
                "tolerances": self.tolerances.to_dict(), "measured_on": dict(self.measured_on)}


def resolve_floor(given: Mapping[str, float | None], *, file: str | None, measured_on: Mapping[str, Any] | None,
                  dtypes: Iterable[str | None], fallback_dtype: str, tie: float | None) -> Floor:
    """The floor of a run: `given` (field -> value or None, from the file and the flags), completed by
    the default of the least precise of `dtypes` (else `fallback_dtype`, compare's -d).

    `tie` (the free runs' tie tolerance, None: not given) defaults to the floor's noise margin: a free run's
    first argmax change is a tie-flip only where noise at the floor could have overturned golden's choice."""
    dtypes = list(dtypes)
    dtype = least_precise(dtypes, fallback_dtype)
    values = dict(default_tolerances(dtype))
    chosen = {k: v for k, v in given.items() if k in NOISE_KEYS and v is not None}
    if "noise_kl" in chosen and "noise_margin" not in chosen:
        # no argmax change measured: the margin follows from the given KL bound, as the default's does
        values["noise_margin"] = margin_of_kl(chosen["noise_kl"])
    values.update(chosen)
    tolerances = Tolerances(tie=values["noise_margin"] if tie is None else tie,
                            noise_margin=values["noise_margin"], noise_kl=values["noise_kl"],
                            noise_cosine=values["noise_cosine"], noise_mean_kl=values["noise_mean_kl"],
                            noise_mean_kl_steps=max(1.0, values["noise_mean_kl_steps"]))
    if file is not None:
        measured = dict(measured_on or {})
        measured_dtype = measured.get("dtype")
        if measured_dtype in DATA_TYPES and measured_dtype != dtype and any(d in DATA_TYPES for d in dtypes):
            _log.warning("the floor %s was measured on %s, but these dumps are %s: measure one for %s", file,
                         measured_dtype, dtype, dtype)
        return Floor(MEASURED, tolerances, measured_dtype or dtype, file, measured)
    if chosen or tie is not None:  # a tie tolerance given is the user's reference for free runs
        return Floor(FLAGS, tolerances, dtype)
    return Floor(DEFAULT, tolerances, dtype)


def finite_number(value: Any) -> float | None:
    """A JSON number as a finite float, else None: booleans, text, NaN, infinities, and integers beyond
    float's range (a 400-digit integer: `float()` would raise OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def read_tolerances_file(path: str | os.PathLike[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """The tolerances of a file written by `calibrate` (or by hand): (CompareOptions field -> value,
    what it was measured on: its `measured` object, {} when absent).

    Accepts `{"tolerances": {...}}` or the keys at the top level; only `TOLERANCE_KEYS` are read,
    each checked.
    Raises DataError (exit 1) when the file is missing or malformed.
    """
    file = Path(path)
    text = read_input_text(file, "--tolerances", TOLERANCES_MAX_BYTES)  # a FIFO or /dev/zero: one line
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as err:  # ValueError: also an int of more than 4300 digits
        raise DataError(f"--tolerances {file}: not valid JSON ({err})") from err
    if not isinstance(document, Mapping):
        raise DataError(f"--tolerances {file}: expected a JSON object")
    table = document.get("tolerances", document)
    if not isinstance(table, Mapping):
        raise DataError(f"--tolerances {file}: 'tolerances' is not an object")
    values: dict[str, float] = {}
    for key in TOLERANCE_KEYS:
        if key not in table:
            continue
        number = finite_number(table[key])
        if number is None:
            raise DataError(f"--tolerances {file}: {key} must be a finite number, found {shorten(repr(table[key]))}")
        values[key] = number
    if not values:
        raise DataError(f"--tolerances {file}: none of {', '.join(TOLERANCE_KEYS)} is given")
    if any(values.get(key, 0.0) < 0 for key in ("tie_tolerance", "noise_margin", "noise_kl", "noise_mean_kl")):
        raise DataError(f"--tolerances {file}: tie_tolerance, noise_margin, noise_kl and noise_mean_kl must be >= 0")
    if values.get("noise_mean_kl_steps", 1.0) < 1.0:
        raise DataError(f"--tolerances {file}: noise_mean_kl_steps must be >= 1")
    if not -1.0 <= values.get("noise_cosine", 0.0) <= 1.0:
        raise DataError(f"--tolerances {file}: noise_cosine must be in [-1, 1]")
    measured = document.get("measured")
    return values, dict(measured) if isinstance(measured, Mapping) else {}
