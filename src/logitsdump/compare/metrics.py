"""Pure metric functions over two 1-D logits vectors (g = golden, m = mine).

No I/O, no logging. Every reduction is done in float64, single-threaded and in
a fixed order (numpy's pairwise sum; `einsum` for dot products instead of a
threaded BLAS), so results do not depend on thread counts (msit bug 5.11).
All sums come from one chunked pass (`pair_sums`) whose float64 chunks stay in
the CPU cache; each metric function is a formula over those sums and accepts
them precomputed, so `pair_metrics` reads the data once.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Relative spacing (2**-mantissa_bits) of each `-d` dtype, as msit.
DTYPE_EPS = {"bf16": 2.0**-7, "fp16": 2.0**-10, "fp32": 2.0**-23}
#: The smallest positive (subnormal) value of each dtype: its spacing at 0.
DTYPE_TINY = {"bf16": 2.0**-133, "fp16": 2.0**-24, "fp32": 2.0**-149}
DTYPES = tuple(DTYPE_EPS)

_BLOCK = 256  # block size of the top-k pre-selection


#: Elements per chunk of the one-pass reduction (bounds the float64 scratch memory; large
#: chunks mean fewer GIL hand-offs between the reader threads).
CHUNK = 65536


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) in float64, single-threaded (BLAS dot would depend on its thread count)."""
    return float(np.einsum("i,i->", a, b))


@dataclass(frozen=True)
class PairSums:
    """The float64 reductions every metric is made of, from one chunked pass over g and m."""

    g_max: float
    m_max: float
    gg: float  # sum g*g
    mm: float  # sum m*m
    gm: float  # sum g*m
    abs_g: float  # sum |g|
    abs_m: float  # sum |m|
    z_g: float  # sum exp(g - g_max)
    z_m: float  # sum exp(m - m_max)
    weighted: float  # sum exp(g - g_max) * (g - m)
    diff_max: float  # max (g - m)
    diff_min: float  # min (g - m)


def pair_sums(g: np.ndarray, m: np.ndarray, workspace: Workspace | None = None) -> PairSums:
    """All reductions in float64, chunk by chunk in a fixed order (same result on every run)."""
    if g.shape != m.shape or g.ndim != 1 or g.size == 0:
        raise ValueError("pair_sums needs two non-empty 1-D arrays of the same length")
    g_max, m_max = float(g.max()), float(m.max())
    big, bim, tmp, diff = (workspace or Workspace()).buffers(min(CHUNK, g.size))
    gg = mm = gm = abs_g = abs_m = z_g = z_m = weighted = 0.0
    diff_max, diff_min = -math.inf, math.inf
    for start in range(0, g.size, CHUNK):
        n = min(CHUNK, g.size - start)
        gc, mc, t, d = big[:n], bim[:n], tmp[:n], diff[:n]
        np.copyto(gc, g[start : start + n])
        np.copyto(mc, m[start : start + n])
        gg += _dot(gc, gc)
        mm += _dot(mc, mc)
        gm += _dot(gc, mc)
        abs_g += float(np.add.reduce(np.abs(gc, out=t)))
        abs_m += float(np.add.reduce(np.abs(mc, out=t)))
        np.subtract(gc, mc, out=d)
        diff_max, diff_min = max(diff_max, float(d.max())), min(diff_min, float(d.min()))
        np.exp(np.subtract(gc, g_max, out=t), out=t)
        z_g += float(np.add.reduce(t))
        weighted += _dot(t, d)
        np.exp(np.subtract(mc, m_max, out=t), out=t)
        z_m += float(np.add.reduce(t))
    return PairSums(g_max, m_max, gg, mm, gm, abs_g, abs_m, z_g, z_m, weighted, diff_max, diff_min)


def cosine_similarity(g: np.ndarray, m: np.ndarray, sums: PairSums | None = None) -> float:
    """cos(g, m) in float64, rounded to 10 digits; 1.0 when both are all zero, 0.0 when one is."""
    s = sums or pair_sums(g, m)
    if s.gg == 0.0 and s.mm == 0.0:
        return 1.0
    if s.gg == 0.0 or s.mm == 0.0:
        return 0.0
    value = s.gm / (math.sqrt(s.gg) * math.sqrt(s.mm))
    return round(min(1.0, max(-1.0, value)), 10)


def kl_divergence(g: np.ndarray, m: np.ndarray, sums: PairSums | None = None) -> float:
    """KL(softmax(g) || softmax(m)) in float64, clamped to >= 0 (msit computes it in the input dtype).

    Uses sum p (log p - log q) = sum p (g - m) - logsumexp(g) + logsumexp(m).
    """
    s = sums or pair_sums(g, m)
    lse_g = s.g_max + math.log(s.z_g)
    lse_m = s.m_max + math.log(s.z_m)
    return max(0.0, s.weighted / s.z_g - lse_g + lse_m)


def l1_norm(g: np.ndarray, m: np.ndarray, sums: PairSums | None = None) -> float:
    """Signed relative L1 difference sum|m| / sum|g| - 1 (0 when both sums are 0, 1 when only golden's)."""
    s = sums or pair_sums(g, m)
    if s.abs_g == 0.0:
        return 0.0 if s.abs_m == 0.0 else 1.0
    return s.abs_m / s.abs_g - 1.0


def ulp_max_diff(g: np.ndarray, m: np.ndarray) -> float:
    """|max(g) - max(m)| in float64."""
    return abs(float(np.max(g)) - float(np.max(m)))


def max_abs_diff(g: np.ndarray, m: np.ndarray, sums: PairSums | None = None) -> float:
    """max |g - m| in float64."""
    s = sums or pair_sums(g, m)
    return max(s.diff_max, -s.diff_min)


def ulp(m: np.ndarray, dtype: str) -> float:
    """The spacing of `dtype` at |max(m)|: 2**floor(log2|max m|) * eps, at least the dtype's tiniest value.

    msit uses max(m) without abs, so it gets NaN for all-negative logits and
    fails on a max of 0 (bug 5.2); here the spacing is always finite and > 0
    (at 0 and for subnormals it is the smallest subnormal, as in the dtype).
    """
    top = abs(float(np.max(m)))
    tiny = DTYPE_TINY[dtype]
    if top == 0.0 or not math.isfinite(top):
        return tiny
    return max(2.0 ** math.floor(math.log2(top)) * DTYPE_EPS[dtype], tiny)


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first; ties go to the lower index (a stable sort's order).

    The k-th largest of the block maxima is a lower bound for the k-th largest
    value, so only the few values above it are sorted.
    """
    k = max(1, min(int(k), x.size))
    blocks = x.size // _BLOCK
    if blocks >= k:
        block_max = x[: blocks * _BLOCK].reshape(blocks, _BLOCK).max(axis=1)
        bound = np.partition(block_max, blocks - k)[blocks - k]
        candidates = np.flatnonzero(x >= bound)
    else:
        candidates = np.arange(x.size)
    order = np.lexsort((candidates, -x[candidates].astype(np.float64)))
    return candidates[order[:k]]


def topk_overlap(g: np.ndarray, m: np.ndarray, k: int) -> float:
    """|top-k(g) ∩ top-k(m)| / k."""
    g_top, m_top = top_k(g, k), top_k(m, k)
    return np.intersect1d(g_top, m_top, assume_unique=True).size / g_top.size


def golden_margin(g: np.ndarray) -> float:
    """Golden top-1 minus top-2 logit (float64); 0 for a single-entry vocab."""
    if g.size < 2:
        return 0.0
    first, second = top_k(g, 2)
    return float(g[first]) - float(g[second])


def passes(
    cos: float, kl: float, l1: float, ulp_diff: float, ulp_value: float, thresholds: Thresholds
) -> bool:
    """Our pass rule: `(cos > cs and kl < kl_t and abs(l1) < l1_t) or ulp_max_diff <= ulp`.

    msit uses the signed l1 (bug 5.3). Bitwise identical tensors are passed by
    `pair_metrics` before this rule.
    """
    close = cos > thresholds.cosine and kl < thresholds.kl and abs(l1) < thresholds.l1
    return bool(close or ulp_diff <= ulp_value)


@dataclass(frozen=True)
class Thresholds:
    """The pass thresholds (msit's -cs, -kl, -l1) and the ULP dtype (-d)."""

    cosine: float = 0.999
    kl: float = 0.0001
    l1: float = 0.01
    dtype: str = "fp16"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairMetrics:
    """All metrics of one file pair. Truthy when it passes."""

    cosine_similarity: float
    kl_divergence: float
    l1_norm: float
    ulp_max_diff: float
    ulp: float
    passed: bool
    identical: bool
    max_abs_diff: float
    golden_top1: int
    my_top1: int
    top1_match: bool
    topk_overlap: float
    golden_margin: float
    #: g[golden_top1] - g[my_top1] (logits): how far behind golden put the test's choice; 0 on a match.
    flip_margin: float

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_pair(g: np.ndarray, m: np.ndarray) -> str:
    """msit's pre-checks: '' when the pair can be measured, else the reasons joined by a space."""
    if g.shape != m.shape:
        return "data shape doesn't match."
    reasons = []
    if not np.isfinite(g).all():
        reasons.append("golden_data includes NAN or inf.")
    if not np.isfinite(m).all():
        reasons.append("my_data includes NAN or inf.")
    return " ".join(reasons)


def bitwise_equal(g: np.ndarray, m: np.ndarray) -> bool:
    """Same dtype, shape and bytes (so -0.0 differs from 0.0, and equal NaN payloads are equal)."""
    if g.dtype != m.dtype or g.shape != m.shape:
        return False
    unsigned = np.dtype(f"u{g.dtype.itemsize}")
    g_bits = np.ascontiguousarray(g).view(unsigned)
    return bool(np.array_equal(g_bits, np.ascontiguousarray(m).view(unsigned)))


class Workspace:
    """Reusable float64 buffers for `pair_metrics`, one set per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def buffers(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        current = getattr(self._local, "buffers", None)
        if current is None or current.shape[1] < size:
            current = np.empty((4, size), dtype=np.float64)
            self._local.buffers = current
        return current[0, :size], current[1, :size], current[2, :size], current[3, :size]


def pair_metrics(
    g: np.ndarray, m: np.ndarray, thresholds: Thresholds, topk: int = 10, workspace: Workspace | None = None
) -> PairMetrics:
    """Every metric of one pair of equal-shape, finite vectors (see `check_pair`)."""
    identical = bitwise_equal(g, m)
    g_top = top_k(g, max(topk, 2))
    m_top = g_top if identical else top_k(m, max(topk, 2))
    k = min(topk, g.size)
    g1, m1 = int(g_top[0]), int(m_top[0])
    overlap = np.intersect1d(g_top[:k], m_top[:k], assume_unique=True).size / k
    margin = float(g[g1]) - float(g[g_top[1]]) if g.size > 1 else 0.0
    if identical:
        cos, kl, l1, udiff, mad = 1.0, 0.0, 0.0, 0.0, 0.0
    else:
        sums = pair_sums(g, m, workspace)
        cos, kl, l1 = cosine_similarity(g, m, sums), kl_divergence(g, m, sums), l1_norm(g, m, sums)
        udiff, mad = ulp_max_diff(g, m), max_abs_diff(g, m, sums)
    unit = ulp(m, thresholds.dtype)
    return PairMetrics(
        cosine_similarity=cos,
        kl_divergence=kl,
        l1_norm=l1,
        ulp_max_diff=udiff,
        ulp=unit,
        passed=identical or passes(cos, kl, l1, udiff, unit, thresholds),
        identical=bool(identical),
        max_abs_diff=mad,
        golden_top1=g1,
        my_top1=m1,
        top1_match=g1 == m1,
        topk_overlap=overlap,
        golden_margin=margin,
        flip_margin=float(g[g1]) - float(g[m1]),
    )
