"""One pass over a pair of logits vectors: the float64 sums, the top-k indices, finiteness, bitwise equality.

Each reduction has two implementations. The C kernels (`_kernel`, built from
csrc/ where a compiler is present; used on x86-64 CPUs with AVX-512 or AVX2)
read each vector once and release the GIL. The numpy path (`pair_sums_numpy`,
`top_k_numpy`) is used everywhere else, or with LOGITSDUMP_COMPARE_KERNEL=0. The
sums of the two paths (and of the two kernel widths) agree to about 1e-15
relative (tests); each gives the same bits on every run. The C top-k scan is used
for k up to `KERNEL_TOPK_MAX` only: beyond it, numpy's partition is faster.

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
from dataclasses import dataclass

import numpy as np

#: The C kernels' API this module calls (csrc/kernel.c's KERNEL_API_VERSION).
KERNEL_API_VERSION = 1


try:
    from logitsdump.compare import _kernel
except ImportError:  # not built: the numpy path
    _kernel = None


if getattr(_kernel, "API_VERSION", None) != KERNEL_API_VERSION:  # a stale build: rebuild with scripts/setup.sh
    _kernel = None


#: The largest k the C top-k scan is used for: its cost grows with k (it looks at about k blocks
#: value by value), numpy's partition does not (crossover measured by bench/topk_crossover.py).
KERNEL_TOPK_MAX = 64
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
    """The C scan's (top-k indices, all finite), or None where the kernels are not used (or k is large)."""
    lanes = kernel_lanes()
    if _kernel is None or not lanes or k > KERNEL_TOPK_MAX:
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


def rank_of(x: np.ndarray, index: int) -> int:
    """1 + the number of entries ahead of `x[index]` in argmax order (larger, or equal at a lower index).

    One comparison pass over `x`; called only at steps where the argmax differs.
    """
    value = x[index]
    return 1 + int(np.count_nonzero(x > value)) + int(np.count_nonzero(x[:index] == value))
