"""The metrics of one pair of logits vectors (g = golden, m = mine): pure formulas, no I/O, no logging.

Every metric is computed in float64 from the sums of one pass over the pair
(`kernels.pair_sums`), in a fixed order that does not depend on thread counts
(msit bug 5.11); each formula accepts the sums precomputed. `pair_metrics`
gathers all of them into a `records.PairMetrics`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from logitsdump.compare.kernels import PairSums, Workspace, all_finite, bitwise_equal, pair_sums, rank_of, top_k
from logitsdump.compare.records import PairMetrics
from logitsdump.dtypes import DTYPE_EPS, DTYPE_TINY


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


def signed_dp(g: np.ndarray, m: np.ndarray, sums: PairSums | None = None, top1: int | None = None) -> float:
    """p_m(t) - p_g(t) for golden's top-1 token t (softmax probabilities, float64): how much more (> 0)
    or less (< 0) probable the test makes golden's choice; in [-1, 1]. `top1`: t, when already known."""
    s = sums or pair_sums(g, m)
    t = int(top_k(g, 1)[0]) if top1 is None else top1
    p_g = math.exp(float(g[t]) - s.g_shift) / s.z_g
    p_m = math.exp(float(m[t]) - s.m_shift) / s.z_m
    return p_m - p_g


def topk_overlap(g: np.ndarray, m: np.ndarray, k: int) -> float:
    """|top-k(g) ∩ top-k(m)| / k."""
    g_top, m_top = top_k(g, k), top_k(m, k)
    return np.intersect1d(g_top, m_top, assume_unique=True).size / g_top.size


#: The number of golden's top tokens `perturbation_rms` is taken over (at most the kernels' top-k bound:
#: one scan finds them): enough tokens for a precise scale, the ones a decision depends on.
PERTURBATION_TOKENS = 64


def perturbation_rms(g: np.ndarray, m: np.ndarray, top: np.ndarray) -> float:
    """RMS of (m - g) - mean(m - g) over the indices `top` (golden's top tokens), float64, in logits.

    Centred because adding a constant to every logit changes no probability; over golden's top
    tokens because they carry the decision, and with 64 of them the scale of a step's perturbation
    is known to a few percent (docs/compare.md, "The control arm")."""
    d = m[top].astype(np.float64) - g[top].astype(np.float64)
    d -= d.mean()
    return float(np.sqrt(np.dot(d, d) / d.size))


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


def pair_metrics(
    g: np.ndarray,
    m: np.ndarray,
    thresholds: Thresholds,
    topk: int = 10,
    workspace: Workspace | None = None,
    tops: tuple[np.ndarray, np.ndarray] | None = None,
) -> PairMetrics:
    """Every metric of one pair of equal-shape, finite vectors (see `check_pair`).

    `tops`: golden's top indices (at least `max(topk, 2)`; `PERTURBATION_TOKENS` give `perturbation_rms`
    its full width) and the test's (`max(topk, 2)`), when already known (see `scan`).
    """
    identical = bitwise_equal(g, m)
    if tops is not None:
        g_top, m_top = tops
    else:
        g_top = top_k(g, max(topk, 2, PERTURBATION_TOKENS))
        m_top = g_top if identical else top_k(m, max(topk, 2))
    k = min(topk, g.size)
    g1, m1 = int(g_top[0]), int(m_top[0])
    overlap = np.intersect1d(g_top[:k], m_top[:k], assume_unique=True).size / k
    margin = float(g[g1]) - float(g[g_top[1]]) if g.size > 1 else 0.0
    g_max, m_max = float(g[g1]), float(m[m1])  # the first index of the maximum
    if identical:
        cos, kl, l1, udiff, mad, dp = 1.0, 0.0, 0.0, 0.0, 0.0, 0.0
    else:
        sums = pair_sums(g, m, workspace, g_max=g_max, m_max=m_max)
        cos, kl, l1 = cosine_similarity(g, m, sums), kl_divergence(g, m, sums), l1_norm(g, m, sums)
        udiff, mad = abs(g_max - m_max), max_abs_diff(g, m, sums)
        dp = signed_dp(g, m, sums, top1=g1)
    rms = 0.0 if identical else perturbation_rms(g, m, g_top[:PERTURBATION_TOKENS])
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
        signed_dp=dp,
        flip_margin=float(g[g1]) - float(g[m1]),
        my_flip_margin=float(m[m1]) - float(m[g1]),
        my_top1_rank_in_golden=rank_of(g, m1) if changed else 1,
        golden_top1_rank_in_mine=rank_of(m, g1) if changed else 1,
        perturbation_rms=rms,
    )
