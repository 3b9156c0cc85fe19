"""compare/stats.py and compare/distribution.py: llama.cpp's estimators against numpy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logitsdump.compare.distribution import STATISTICS_FIELDS, summarize
from logitsdump.compare.stats import mcnemar_exact, mean_se, quantile, quantiles, rate_se, rms_se

finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, allow_infinity=False)


def test_mean_and_standard_error_by_hand() -> None:
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; SE = sqrt(5 / (4 * 3))
    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 12), rel=1e-15)
    assert mean_se([7.0]) == (7.0, None) and mean_se([]) is None
    assert mean_se([0.25] * 20) == (0.25, 0.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=2, max_size=300))
def test_standard_error_is_numpys_sample_std_over_sqrt_n(values: list[float]) -> None:
    mean, se = mean_se(values)
    array = np.array(values)
    assert mean == pytest.approx(array.mean(), abs=1e-12)
    assert se == pytest.approx(array.std(ddof=1) / math.sqrt(len(values)), rel=1e-9, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=300), st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 0.999, 1]))
def test_quantiles_are_numpys_linear_interpolation(values: list[float], q: float) -> None:
    assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), abs=1e-12)


def test_quantiles_by_hand() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert quantile(values, 0.5) == 2.5  # the mean of the middle two (llama.cpp's median)
    assert quantile(values, 0.9) == pytest.approx(3.7)  # position 0.9 * 3 = 2.7: 3 + 0.7 * (4 - 3)
    assert quantile([5.0, 1.0, 9.0], 0.5) == 5.0
    assert quantiles(values, [0.0, 1.0]) == (1.0, 4.0) and quantiles([], [0.5]) == (None,)
    assert quantile([], 0.5) is None


def test_rms_and_its_standard_error_by_hand() -> None:
    values = [0.1, -0.1, 0.3, -0.3]
    rms, se = rms_se(values)
    squares = np.array(values) ** 2  # 0.01, 0.01, 0.09, 0.09: mean 0.05
    assert rms == pytest.approx(math.sqrt(0.05), rel=1e-15)
    se_square = squares.std(ddof=1) / 2  # sqrt(n) = 2
    assert se == pytest.approx(0.5 * se_square / math.sqrt(0.05), rel=1e-12)
    assert rms_se([0.0, 0.0, 0.0]) == (0.0, 0.0) and rms_se([]) is None and rms_se([0.5]) == (0.5, None)


def test_binomial_rate_by_hand() -> None:
    p, se = rate_se(9, 10)
    assert p == 0.9 and se == pytest.approx(math.sqrt(0.9 * 0.1 / 9), rel=1e-15)
    assert rate_se(3, 3) == (1.0, 0.0) and rate_se(1, 1) == (1.0, None) and rate_se(0, 0) is None


def test_mcnemar_exact_by_hand() -> None:
    assert mcnemar_exact(5, 0) == 2 / 32  # P[X <= 0] for Bin(5, 1/2) = 1/32, two-sided
    assert mcnemar_exact(8, 2) == 2 * (1 + 10 + 45) / 1024
    assert mcnemar_exact(2, 8) == mcnemar_exact(8, 2)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(0, 1) == 1.0
    assert mcnemar_exact(20, 0) == pytest.approx(2 / 2**20, rel=1e-15)
    assert 0.0 <= mcnemar_exact(4000, 3000) < 1e-20  # big counts: exact integers, no overflow
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_mcnemar_matches_a_binomial_pmf_summed_in_floats() -> None:
    def pmf(k: int, n: int) -> float:  # log-gamma, an independent route to the same tail
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2))

    for b, c in [(1, 7), (12, 5), (30, 18), (100, 80), (9, 9)]:
        expected = min(1.0, 2 * sum(pmf(k, b + c) for k in range(min(b, c) + 1)))
        assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_summarize_matches_numpy_on_a_known_sample() -> None:
    rng = np.random.default_rng(7)
    kl = rng.exponential(1e-3, size=1000)
    dp = rng.normal(-1e-3, 2e-3, size=1000)
    same = rng.random(1000) < 0.97
    my_rank = np.where(same, 1, rng.integers(2, 9, size=1000))
    golden_rank = np.where(same, 1, rng.integers(2, 9, size=1000))
    s = summarize(kl.tolist(), dp.tolist(), same.tolist(), my_rank.tolist(), golden_rank.tolist())
    assert s is not None and s.kld_steps == s.dp_steps == 1000
    assert s.kld_mean == pytest.approx(kl.mean(), rel=1e-12)
    assert s.kld_mean_se == pytest.approx(kl.std(ddof=1) / math.sqrt(1000), rel=1e-9)
    for name, q in [("median", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999)]:
        assert getattr(s, f"kld_{name}") == pytest.approx(np.quantile(kl, q), rel=1e-12)
    assert s.kld_max == kl.max()
    for name, q in [("p1", 0.01), ("p5", 0.05), ("p10", 0.1), ("p25", 0.25), ("median", 0.5), ("p75", 0.75),
                    ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)]:
        assert getattr(s, f"dp_{name}") == pytest.approx(np.quantile(dp, q), rel=1e-12, abs=1e-15)
    assert (s.dp_min, s.dp_max) == (dp.min(), dp.max())
    assert s.dp_mean == pytest.approx(dp.mean(), rel=1e-12)
    assert s.dp_rms == pytest.approx(math.sqrt((dp**2).mean()), rel=1e-12)
    assert s.same_top == same.mean() and s.same_top_se == pytest.approx(
        math.sqrt(same.mean() * (1 - same.mean()) / 999), rel=1e-12)
    assert s.my_top1_in_golden_top5 == (my_rank <= 5).mean()
    assert s.golden_top1_in_my_top5 == (golden_rank <= 5).mean()
    assert s.my_top1_in_golden_top5 > s.same_top  # a changed pick ranked 2..5 by the other side still counts
    assert tuple(s.to_dict()) == STATISTICS_FIELDS


def test_summarize_without_steps_or_without_dp() -> None:
    assert summarize([], [], [], [], []) is None
    s = summarize([0.0, 0.5], [], [True, False], [1, 7], [1, 2])
    assert s is not None and s.dp_steps == 0 and s.dp_mean is None and s.dp_p1 is None and s.dp_rms is None
    assert (s.same_top, s.my_top1_in_golden_top5, s.golden_top1_in_my_top5) == (0.5, 0.5, 1.0)
    assert s.kld_median == 0.25 and s.kld_max == 0.5
    with pytest.raises(ValueError):
        summarize([0.0], [], [True, False], [1], [1])
