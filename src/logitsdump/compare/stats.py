"""Statistics over measured values: nearest-rank percentiles (the judge, calibration), and llama.cpp's
estimators (mean and standard error, interpolated quantiles, RMS, binomial rates, the exact McNemar test)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile_high(values: Sequence[float], q: float = 0.95) -> float | None:
    """Nearest-rank q-quantile (the smallest value with at least q of the values at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def percentile_low(values: Sequence[float], q: float = 0.95) -> float | None:
    """The mirror of `percentile_high`: the largest value with at least q of the values at or above it."""
    if not values:
        return None
    ordered = sorted(values, reverse=True)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# ---- llama.cpp's `--kl-divergence` statistics (tools/perplexity) --------------------------------
# The same estimators as llama.cpp, computed in float64 with `math.fsum`; where llama.cpp prints 0 for a
# standard error of fewer than 11 values, these give None below 2 values (read one of a few values as rough).


def mean_se(values: Sequence[float]) -> tuple[float, float | None] | None:
    """(mean, standard error of the mean): SE = sqrt(sum (x - mean)^2 / (n (n - 1))); None when empty,
    SE None for one value.

    Finite-safe: the sums are taken over the values divided by the largest magnitude, so values near
    float's limit (1e200, -1e308) never overflow an intermediate; a result beyond float's range is
    inf, an infinite or NaN value gives a NaN or infinite mean (and SE None): never an exception.
    """
    n = len(values)
    if n == 0:
        return None
    scale = max(abs(x) for x in values)
    if not math.isfinite(scale):
        return (math.fsum(values) if not any(math.isnan(x) for x in values) else math.nan), None
    if scale == 0.0:
        return 0.0, (0.0 if n > 1 else None)
    scaled = [x / scale for x in values]
    mean_scaled = math.fsum(scaled) / n
    mean = mean_scaled * scale
    if n < 2:
        return mean, None
    spread = math.fsum((x - mean_scaled) * (x - mean_scaled) for x in scaled) / (n * (n - 1))
    return mean, math.sqrt(spread) * scale


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between order statistics at q (n - 1) (llama.cpp's and
    numpy's default); q = 0.5 is the median (the mean of the middle two for an even count)."""
    if not values:
        return None
    ordered = sorted(values)
    return _interpolated(ordered, q)


def quantiles(values: Sequence[float], qs: Sequence[float]) -> tuple[float | None, ...]:
    """`quantile` at each of `qs`, sorting once."""
    if not values:
        return tuple(None for _ in qs)
    ordered = sorted(values)
    return tuple(_interpolated(ordered, q) for q in qs)


def _interpolated(ordered: Sequence[float], q: float) -> float:
    if q <= 0:
        return ordered[0]
    if q >= 1:
        return ordered[-1]
    position = q * (len(ordered) - 1)
    low = int(position)
    fraction = position - low
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] if fraction == 0 else (1 - fraction) * ordered[low] + fraction * ordered[high]


def rms_se(values: Sequence[float]) -> tuple[float, float | None] | None:
    """(root mean square, its standard error): the SE of the mean square, carried through the square root
    to first order (SE(rms) = SE(mean square) / (2 rms), as llama.cpp's RMS Δp); 0 when every value is 0.

    Computed on the values divided by their largest magnitude (no square overflows), as `mean_se`."""
    if not values:
        return None
    scale = max(abs(x) for x in values)
    if not math.isfinite(scale):
        return (math.inf if not any(math.isnan(x) for x in values) else math.nan), None
    if scale == 0.0:
        return 0.0, (0.0 if len(values) > 1 else None)
    squares = mean_se([(x / scale) * (x / scale) for x in values])
    assert squares is not None
    mean_square, se = squares
    rms = math.sqrt(mean_square)
    if se is None:
        return rms * scale, None
    return rms * scale, (0.5 * se / rms * scale if rms > 0 else 0.0)


def rate_se(hits: int, n: int) -> tuple[float, float | None] | None:
    """(hits / n, binomial standard error sqrt(p (1 - p) / (n - 1))); None for n = 0, SE None for n = 1."""
    if n <= 0:
        return None
    p = hits / n
    return p, (math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None)


#: Discordant pairs up to which McNemar's tail is summed in exact integers.
EXACT_INTEGER_MAX = 2000


def mcnemar_exact(b: int, c: int) -> float:
    """The exact two-sided McNemar p-value of b discordant pairs one way and c the other:
    min(1, 2 P[X <= min(b, c)]) with X ~ Binomial(b + c, 1/2); 1 when there is no discordant pair.

    Up to `EXACT_INTEGER_MAX` discordant pairs the tail is summed in integers (correctly rounded once);
    beyond, in log space from the largest term down (`log_binomial_tail`), in float arithmetic whose
    relative error (about 1e-10 at a million pairs) is far below the printed digits: a million flips take
    a millisecond, where the big-integer sum took minutes.
    """
    if b < 0 or c < 0:
        raise ValueError("McNemar counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    if 2 * k >= n:  # b == c: the tail holds at least half the mass
        return 1.0
    if n <= EXACT_INTEGER_MAX:
        return min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n)
    return min(1.0, 2.0 * math.exp(log_binomial_tail(n, k)))


def log_binomial_tail(n: int, k: int) -> float:
    """log P[X <= k] for X ~ Binomial(n, 1/2), k < n / 2.

    The terms C(n, j) / 2^n grow with j up to k, each the previous times (j + 1) / (n - j): starting
    from the largest, log C(n, k) - n log 2 (`math.lgamma`), the others are summed relative to it
    going down, stopping once a term is below 1e-17 of the sum (it can no longer change a float).
    """
    log_top = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2.0)
    total, term = 1.0, 1.0
    for j in range(k, 0, -1):
        term *= j / (n - j + 1)  # C(n, j-1) / C(n, j)
        total += term
        if term < 1e-17 * total:
            break
    return log_top + math.log(total)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom: exact for 1 and 2, else the
    Cornish-Fisher expansion around the normal quantile (relative error below 1% from df = 3 on at
    p <= 0.995, below 0.2% at p <= 0.975)."""
    from statistics import NormalDist

    if df < 1:
        raise ValueError("df must be >= 1")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
