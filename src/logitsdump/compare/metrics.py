"""Pure metric functions over two 1-D logits vectors (g = golden, m = mine).

No I/O, no logging. Every reduction is done in float64, in a fixed order that
does not depend on thread counts (msit bug 5.11). All sums of a pair come from
`pair_sums`; each metric function is a formula over those sums and accepts
them precomputed.

`pair_sums` and `top_k` have two implementations each. The C kernels
(`_kernel`, built from csrc/ where a compiler is present; used on x86-64
CPUs with AVX-512 or AVX2) read each vector once and release the GIL. The
numpy path (`pair_sums_numpy`, `top_k_numpy`) is used everywhere else, or
with LOGITSDUMP_COMPARE_KERNEL=0. The sums of the two paths (and of the two
kernel widths) agree to about 1e-15 relative (tests); each gives the same
bits on every run.

Dot products use BLAS `ddot` only on blocks of `DOT_BLOCK` elements: OpenBLAS
runs a dot of at most 10000 elements on the calling thread, so the result is
the same whatever its thread count (checked in the tests by running with
OPENBLAS_NUM_THREADS=1 and 2). With any other BLAS, `einsum` (numpy's own
single-threaded loop) is used instead.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

#: The C kernels' API this module calls (csrc/kernel.c's KERNEL_API_VERSION).
KERNEL_API_VERSION = 1

try:
    from logitsdump.compare import _kernel
except ImportError:  # not built: the numpy path
    _kernel = None
if getattr(_kernel, "API_VERSION", None) != KERNEL_API_VERSION:  # a stale build: rebuild with scripts/setup.sh
    _kernel = None

#: Relative spacing (2**-mantissa_bits) of each `-d` dtype, as msit.
DTYPE_EPS = {"bf16": 2.0**-7, "fp16": 2.0**-10, "fp32": 2.0**-23}
#: The smallest positive (subnormal) value of each dtype: its spacing at 0.
DTYPE_TINY = {"bf16": 2.0**-133, "fp16": 2.0**-24, "fp32": 2.0**-149}
DTYPES = tuple(DTYPE_EPS)

#: Rows of the strided grouping in the top-k pre-selection.
_GROUP_ROWS = 128

#: Elements per chunk of the one-pass reduction (a multiple of DOT_BLOCK; float64 scratch of
#: 7 x 512 KiB per thread; measured faster than 16384 or 32768, fewer calls per pair).
CHUNK = 65536
#: Elements per BLAS dot call: at most 10000, so OpenBLAS never splits one over threads.
DOT_BLOCK = 8192
#: exp(x) is summed without subtracting the maximum when every |max| is below this (no
#: overflow, and terms that underflow are < e**-600 of the sum); else exp(x - max).
_EXP_UNSHIFTED_MAX = 64.0


def _openblas() -> bool:
    """Whether numpy's BLAS is OpenBLAS (whose short dots are single-threaded, see module doc)."""
    try:
        config = np.show_config(mode="dicts")
        return "openblas" in str(config["Build Dependencies"]["blas"]["name"]).lower()
    except Exception:  # older numpy or unusual builds: take the safe path
        return False


#: 0: use the numpy path even where the C kernels are usable; 8 or 4: use the kernels of that
#: width where the CPU can run them (tests use it to run the AVX2 kernels on an AVX-512 CPU);
#: unset or anything else: the widest usable kernels.
KERNEL_ENV = "LOGITSDUMP_COMPARE_KERNEL"
USABLE_KERNEL_LANES: tuple[int, ...] = tuple(_kernel.usable_lanes()) if _kernel is not None else ()


def kernel_lanes() -> int:
    """The width (float64 lanes) of the C kernels `pair_sums` and `top_k` use: 8 or 4; 0: the numpy path."""
    choice = os.environ.get(KERNEL_ENV, "")
    if choice == "0" or not USABLE_KERNEL_LANES:
        return 0
    if choice.isdigit() and int(choice) in USABLE_KERNEL_LANES:
        return int(choice)
    return USABLE_KERNEL_LANES[0]


#: Whether `_dot` may call BLAS (False: einsum's single-threaded loop).
BLAS_DOT = _openblas()
_vecdot = getattr(np, "vecdot", None)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) of two contiguous float64 vectors, the same on every run and for every thread count.

    With OpenBLAS: one `ddot` per DOT_BLOCK elements (each single-threaded), the
    block sums added pairwise. Otherwise numpy's own einsum loop.
    """
    if not BLAS_DOT:
        return float(np.einsum("i,i->", a, b))
    n = a.size
    if n <= DOT_BLOCK:
        return float(np.dot(a, b))
    full = n - n % DOT_BLOCK
    if _vecdot is not None:
        parts = _vecdot(a[:full].reshape(-1, DOT_BLOCK), b[:full].reshape(-1, DOT_BLOCK))
    else:  # numpy < 2
        parts = np.array([np.dot(a[i : i + DOT_BLOCK], b[i : i + DOT_BLOCK]) for i in range(0, full, DOT_BLOCK)])
    total = float(np.add.reduce(parts))
    if full < n:
        total += float(np.dot(a[full:], b[full:]))
    return total


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
    z_g: float  # sum exp(g - g_shift)
    z_m: float  # sum exp(m - m_shift)
    weighted: float  # sum exp(g - g_shift) * (g - m)
    abs_diff_max: float  # max |g - m|
    g_shift: float = 0.0  # subtracted before exp: g_max (always in the C kernel), or 0 when no exp can overflow
    m_shift: float = 0.0


def pair_sums(
    g: np.ndarray,
    m: np.ndarray,
    workspace: Workspace | None = None,
    *,
    g_max: float | None = None,
    m_max: float | None = None,
) -> PairSums:
    """All reductions in float64, the same bits on every run: the C pair loop where available, else numpy.

    `g_max`/`m_max` may be passed when already known.
    """
    if g.shape != m.shape or g.ndim != 1 or g.size == 0:
        raise ValueError("pair_sums needs two non-empty 1-D arrays of the same length")
    g_max = float(g.max()) if g_max is None else g_max
    m_max = float(m.max()) if m_max is None else m_max
    lanes = kernel_lanes()
    if _kernel is not None and lanes:
        g_in, m_in = _kernel_input(g), _kernel_input(m)
        if g_in.dtype == m_in.dtype:
            sums = _kernel.pair_sums(g_in, m_in, g_in.dtype.itemsize, g_max, m_max, lanes)
            return PairSums(g_max, m_max, *sums, g_shift=g_max, m_shift=m_max)
    return pair_sums_numpy(g, m, workspace, g_max=g_max, m_max=m_max)


def _kernel_input(x: np.ndarray) -> np.ndarray:
    """`x` as a contiguous native float32 or float64 array (float16 widens to float32, exactly)."""
    if x.dtype.itemsize < 4:
        return x.astype(np.float32)
    return np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))


def pair_sums_numpy(
    g: np.ndarray, m: np.ndarray, workspace: Workspace | None, *, g_max: float, m_max: float
) -> PairSums:
    """`pair_sums` with numpy, for checked input: chunk by chunk in a fixed order (same result on every run).

    Each chunk of g and m is converted to float64 once, into per-thread buffers.
    """
    unshifted = abs(g_max) <= _EXP_UNSHIFTED_MAX and abs(m_max) <= _EXP_UNSHIFTED_MAX
    g_shift, m_shift = (0.0, 0.0) if unshifted else (g_max, m_max)
    both, sums, diff, shifts = (workspace or Workspace()).buffers(min(CHUNK, g.size))
    shifts[0, 0], shifts[1, 0] = g_shift, m_shift
    gg = mm = gm = weighted = 0.0
    totals = np.zeros(4)  # z_g, z_m, abs_g, abs_m
    diff_max, diff_min = -math.inf, math.inf  # of g - m
    for start in range(0, g.size, CHUNK):
        n = min(CHUNK, g.size - start)
        x, s, d = both[:, :n], sums[:, :n], diff[:n]
        gc, mc, e = x[0], x[1], s[0:2]
        np.copyto(gc, g[start : start + n])
        np.copyto(mc, m[start : start + n])
        gg += _dot(gc, gc)
        mm += _dot(mc, mc)
        gm += _dot(gc, mc)
        np.subtract(gc, mc, out=d)
        high, low = float(d.max()), float(d.min())
        diff_max, diff_min = max(diff_max, high), min(diff_min, low)
        np.exp(x if unshifted else np.subtract(x, shifts, out=e), out=e)
        weighted += _dot(e[0], d)
        np.abs(x, out=s[2:4])
        totals += np.add.reduce(s, axis=1)
    z_g, z_m, abs_g, abs_m = (float(v) for v in totals)
    return PairSums(
        g_max, m_max, gg, mm, gm, abs_g, abs_m, z_g, z_m, weighted, max(diff_max, -diff_min), g_shift, m_shift
    )


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

    Uses sum p (log p - log q) = sum p (g - m) - logsumexp(g) + logsumexp(m), with
    logsumexp(x) = shift + log(z): the shifts cancel exactly and the two logs are
    taken as one log of a ratio, so no large, nearly equal terms are subtracted; the
    terms are added with one rounding (`math.fsum`).
    """
    s = sums or pair_sums(g, m)
    return max(0.0, math.fsum((s.weighted / s.z_g, -s.g_shift, s.m_shift, math.log(s.z_m / s.z_g))))


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
    return s.abs_diff_max


def ulp(m: np.ndarray, dtype: str) -> float:
    """The spacing of `dtype` at |max(m)|: 2**floor(log2|max m|) * eps, at least the dtype's tiniest value.

    msit uses max(m) without abs, so it gets NaN for all-negative logits and
    fails on a max of 0 (bug 5.2); here the spacing is always finite and > 0
    (at 0 and for subnormals it is the smallest subnormal, as in the dtype).
    """
    return _ulp_at(float(np.max(m)), dtype)


def _ulp_at(top: float, dtype: str) -> float:
    top = abs(top)
    tiny = DTYPE_TINY[dtype]
    if top == 0.0 or not math.isfinite(top):
        return tiny
    return max(2.0 ** math.floor(math.log2(top)) * DTYPE_EPS[dtype], tiny)


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first; ties go to the lower index (a stable sort's order).

    The C top-k scan where available (it never picks NaN or -inf: when that leaves fewer than k,
    the numpy path decides), else `top_k_numpy`.
    """
    k = max(1, min(int(k), x.size))
    found = _kernel_top_k(x, k)
    if found is not None and len(found[0]) == k:
        return np.array(found[0], dtype=np.intp)
    return top_k_numpy(x, k)


@dataclass(frozen=True, eq=False)
class Scan:
    """What one pass over a vector tells: whether every value is finite, and its top-k indices if so."""

    finite: bool
    top: np.ndarray | None


def scan(x: np.ndarray, k: int) -> Scan:
    """`all_finite(x)` and, when finite, `top_k(x, k)`: one pass with the C scan, else numpy."""
    k = max(1, min(int(k), x.size))
    found = _kernel_top_k(x, k)
    if found is not None and not found[1]:
        return Scan(False, None)
    if found is not None and len(found[0]) == k:
        return Scan(True, np.array(found[0], dtype=np.intp))
    finite = all_finite(x)
    return Scan(finite, top_k_numpy(x, k) if finite else None)


def _kernel_top_k(x: np.ndarray, k: int) -> tuple[tuple[int, ...], bool] | None:
    """The C scan's (top-k indices, all finite), or None where the kernels are not used."""
    lanes = kernel_lanes()
    if _kernel is None or not lanes:
        return None
    values = _kernel_input(x)
    return _kernel.top_k(values, values.dtype.itemsize, k, lanes)


def top_k_numpy(x: np.ndarray, k: int) -> np.ndarray:
    """`top_k` with numpy.

    The elements are viewed as `_GROUP_ROWS` rows; the k-th largest of the
    column maxima is a lower bound for the k-th largest value (k distinct
    elements reach it), so only the few values of the columns that reach it
    (and of the ragged tail) are sorted.
    """
    k = max(1, min(int(k), x.size))
    columns = x.size // _GROUP_ROWS
    if columns >= k:
        body = x[: columns * _GROUP_ROWS].reshape(_GROUP_ROWS, columns)
        column_max = body.max(axis=0)
        bound = np.partition(column_max, columns - k)[columns - k]
        hit = np.flatnonzero(column_max >= bound)
        rows, cols = np.nonzero(body[:, hit] >= bound)
        candidates = rows * columns + hit[cols]
        tail = np.arange(columns * _GROUP_ROWS, x.size)
        candidates = np.concatenate((candidates, tail[x[tail] >= bound]))
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


def rank_of(x: np.ndarray, index: int) -> int:
    """1 + the number of entries ahead of `x[index]` in argmax order (larger, or equal at a lower index).

    One comparison pass over `x`; called only at steps where the argmax differs.
    """
    value = x[index]
    return 1 + int(np.count_nonzero(x > value)) + int(np.count_nonzero(x[:index] == value))


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
    #: m[my_top1] - m[golden_top1] (logits): how far ahead the test put its own choice; 0 on a match.
    my_flip_margin: float = 0.0
    #: Rank (1 = top) of the test's choice in golden's logits (ties: the lower index first); 1 on a match.
    my_top1_rank_in_golden: int = 1
    #: Rank of golden's choice in the test's logits; 1 on a match.
    golden_top1_rank_in_mine: int = 1

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        # every field is a plain number or bool: no need for asdict's deep copies
        return {name: getattr(self, name) for name in _METRIC_FIELDS}


_METRIC_FIELDS = tuple(f.name for f in fields(PairMetrics))


def check_pair(g: np.ndarray, m: np.ndarray, finite: tuple[bool, bool] | None = None) -> str:
    """msit's pre-checks: '' when the pair can be measured, else the reasons joined by a space.

    `finite`: whether g and m are all finite, when already known (see `scan`).
    """
    if g.shape != m.shape:
        return "data shape doesn't match."
    g_finite, m_finite = finite if finite is not None else (all_finite(g), all_finite(m))
    reasons = []
    if not g_finite:
        reasons.append("golden_data includes NAN or inf.")
    if not m_finite:
        reasons.append("my_data includes NAN or inf.")
    return " ".join(reasons)


def all_finite(x: np.ndarray) -> bool:
    """No NaN or inf in `x`: max and min propagate NaN and show inf (two fast reductions, no mask)."""
    if x.size == 0:
        return True
    return math.isfinite(float(x.max())) and math.isfinite(float(x.min()))


def bitwise_equal(g: np.ndarray, m: np.ndarray) -> bool:
    """Same dtype, shape and bytes (so -0.0 differs from 0.0, and equal NaN payloads are equal)."""
    if g.dtype != m.dtype or g.shape != m.shape:
        return False
    unsigned = np.dtype(f"u{g.dtype.itemsize}")
    g_bits = np.ascontiguousarray(g).view(unsigned).reshape(-1)
    m_bits = np.ascontiguousarray(m).view(unsigned).reshape(-1)
    head = min(g_bits.size, 64)  # most different pairs differ at once: skip the full pass
    if not np.array_equal(g_bits[:head], m_bits[:head]):
        return False
    return bool(np.array_equal(g_bits, m_bits))


class Workspace:
    """Reusable float64 buffers for `pair_metrics`, one set per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def buffers(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(g and m rows [2, size], exp and abs rows [4, size], g - m [size], shifts [2, 1])."""
        current = getattr(self._local, "buffers", None)
        if current is None or current.shape[1] < size:
            current = np.empty((7, size), dtype=np.float64)
            self._local.buffers = current
            self._local.shifts = np.zeros((2, 1))
        return current[0:2, :size], current[2:6, :size], current[6, :size], self._local.shifts


def pair_metrics(
    g: np.ndarray,
    m: np.ndarray,
    thresholds: Thresholds,
    topk: int = 10,
    workspace: Workspace | None = None,
    tops: tuple[np.ndarray, np.ndarray] | None = None,
) -> PairMetrics:
    """Every metric of one pair of equal-shape, finite vectors (see `check_pair`).

    `tops`: `top_k(g, max(topk, 2))` and the same of m, when already known (see `scan`).
    """
    identical = bitwise_equal(g, m)
    if tops is not None:
        g_top, m_top = tops
    else:
        g_top = top_k(g, max(topk, 2))
        m_top = g_top if identical else top_k(m, max(topk, 2))
    k = min(topk, g.size)
    g1, m1 = int(g_top[0]), int(m_top[0])
    overlap = np.intersect1d(g_top[:k], m_top[:k], assume_unique=True).size / k
    margin = float(g[g1]) - float(g[g_top[1]]) if g.size > 1 else 0.0
    g_max, m_max = float(g[g1]), float(m[m1])  # the first index of the maximum
    if identical:
        cos, kl, l1, udiff, mad = 1.0, 0.0, 0.0, 0.0, 0.0
    else:
        sums = pair_sums(g, m, workspace, g_max=g_max, m_max=m_max)
        cos, kl, l1 = cosine_similarity(g, m, sums), kl_divergence(g, m, sums), l1_norm(g, m, sums)
        udiff, mad = abs(g_max - m_max), max_abs_diff(g, m, sums)
    unit = _ulp_at(m_max, thresholds.dtype)
    changed = g1 != m1
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
        my_flip_margin=float(m[m1]) - float(m[g1]),
        my_top1_rank_in_golden=rank_of(g, m1) if changed else 1,
        golden_top1_rank_in_mine=rank_of(m, g1) if changed else 1,
    )
