"""The metric functions: msit's formulas, our fixes of msit's bugs, and properties."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from logitsdump.compare import kernels as K
from logitsdump.compare import metrics as M

from helpers import ROW7_G, ROW7_M

TH = M.Thresholds()

@pytest.fixture(params=["8", "4", "0"], ids=["kernel-lanes8", "kernel-lanes4", "numpy"])
def pair_sums_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each implementation of `pair_sums` (the C kernels where this CPU runs them)."""
    if request.param != "0" and int(request.param) not in K.USABLE_KERNEL_LANES:
        pytest.skip(f"the {request.param}-lane C kernels are not built or this CPU cannot run them")
    monkeypatch.setenv(K.KERNEL_ENV, request.param)
    return request.param


def test_kernels_built_and_picked_by_cpu_features() -> None:
    """CI sets LOGITSDUMP_EXPECT_KERNEL=1: the optional C kernels must have built, and the widths the
    CPU's flags allow must be usable (a silent build failure would only make compare slower)."""
    if os.environ.get("LOGITSDUMP_EXPECT_KERNEL") != "1":
        pytest.skip("LOGITSDUMP_EXPECT_KERNEL is not set (CI sets it)")
    from logitsdump.compare import _kernel  # ImportError: the extension did not build

    flags: set[str] = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = {f for line in handle if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    expected = []
    if {"avx512f", "avx512dq", "avx512vl", "avx512bw"} <= flags:
        expected.append(8)
    if {"avx2", "fma", "bmi2"} <= flags:
        expected.append(4)
    assert list(_kernel.usable_lanes()) == expected == list(K.USABLE_KERNEL_LANES)


def test_numpy_path_when_the_extension_is_missing() -> None:
    """Without a C compiler the optional extension is absent: compare must import and measure with numpy."""
    code = (
        "import sys; sys.modules['logitsdump.compare._kernel'] = None\n"  # import now raises ImportError
        "import numpy as np\n"
        "from logitsdump.compare import kernels as K\n"
        "from logitsdump.compare import metrics as M\n"
        "from helpers import ROW7_G, ROW7_M\n"
        "m = M.pair_metrics(ROW7_G, ROW7_M, M.Thresholds())\n"
        "print(K.kernel_lanes(), K.USABLE_KERNEL_LANES, m.kl_divergence, K.top_k(np.arange(5.0), 2).tolist())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["0", "()", "0.1400146484375", "[4,", "3]"]


def test_msit_row_7_reproduced_value_for_value(pair_sums_path: str) -> None:
    m = M.pair_metrics(ROW7_G, ROW7_M, TH)
    assert m.cosine_similarity == 0.9863877285
    assert m.kl_divergence == 0.1400146484375
    assert m.l1_norm == 0.015430923412590891
    assert m.ulp_max_diff == 0.6015625
    assert m.ulp == 0.0078125
    assert not m.passed and not m


def test_msit_row_1352_identical() -> None:
    g = np.array([8.5, 1.0, -2.0], dtype=np.float16)
    m = M.pair_metrics(g, g.copy(), TH)
    assert (m.cosine_similarity, m.kl_divergence, m.l1_norm, m.ulp_max_diff, m.ulp) == (1.0, 0.0, 0.0, 0.0, 0.0078125)
    assert m.passed and m.identical and m.top1_match and m.topk_overlap == 1.0


def test_formulas_on_hand_computed_tensors() -> None:
    g, m = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert M.cosine_similarity(g, m) == 0.0
    assert M.kl_divergence(g, m) == pytest.approx(math.tanh(0.5), abs=1e-15)  # p1 - p2 = (e-1)/(e+1)
    assert M.l1_norm(g, m) == 0.0
    assert M.max_abs_diff(g, m) == 1.0
    assert M.l1_norm(np.array([1.0, -1.0]), np.array([3.0, 0.0])) == 0.5
    assert M.cosine_similarity(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == 1.0
    assert M.cosine_similarity(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == -1.0


def test_zero_vectors() -> None:
    zero = np.zeros(3)
    assert M.cosine_similarity(zero, zero) == 1.0
    assert M.cosine_similarity(zero, np.ones(3)) == 0.0
    assert M.l1_norm(zero, zero) == 0.0
    assert M.l1_norm(zero, np.ones(3)) == 1.0


@pytest.mark.parametrize(
    ("top", "dtype", "expected"),
    [(10.0, "fp16", 2.0**-7), (10.0, "bf16", 2.0**-4), (1.0, "fp32", 2.0**-23), (0.75, "fp16", 2.0**-11)],
)
def test_ulp_as_msit_for_positive_max(top: float, dtype: str, expected: float) -> None:
    assert M.ulp(np.array([top, -1.0]), dtype) == expected


def test_ulp_never_nan_for_negative_or_zero_max() -> None:
    assert M.ulp(np.array([-3.0, -5.0]), "fp16") == 2.0**1 * 2.0**-10  # msit: NaN
    assert M.ulp(np.array([0.0, -5.0]), "fp16") == 2.0**-24  # the dtype's spacing at 0
    assert M.ulp(np.array([1e-30, -5.0]), "fp16") == 2.0**-24


def test_identical_all_negative_and_zero_max_pass() -> None:
    for g in (np.array([-3.0, -5.0, -4.0]), np.array([0.0, -5.0, -1.0])):
        assert M.pair_metrics(g, g.copy(), TH).passed  # msit: NA or failed


def test_identical_passes_even_with_strict_thresholds() -> None:
    g = np.array([3.0, 1.0, 2.0], dtype=np.float32)
    assert M.pair_metrics(g, g.copy(), M.Thresholds(cosine=1.0, kl=0.0, l1=-1.0)).passed


def test_signed_l1_does_not_pass_alone() -> None:
    g = np.linspace(-20.0, 20.0, 50)
    m = 0.5 * g  # msit: l1 = -0.5 < 0.01 passes the L1 test
    metrics = M.pair_metrics(g, m, M.Thresholds(cosine=0.0, kl=10.0, l1=0.01))
    assert metrics.l1_norm == pytest.approx(-0.5)
    assert not metrics.passed


def test_top_k_and_margin() -> None:
    x = np.array([1.0, 5.0, 5.0, 3.0, 4.5])
    assert list(K.top_k(x, 3)) == [1, 2, 4]  # ties: lower index first
    assert M.golden_margin(x) == 0.0
    assert M.golden_margin(np.array([2.0, 3.5, 1.0])) == 1.5
    assert M.topk_overlap(x, np.array([5.0, 1.0, 1.0, 4.0, 0.0]), 2) == 0.0


def test_check_pair_messages_as_msit() -> None:
    assert M.check_pair(np.zeros(3), np.zeros(4)) == "data shape doesn't match."
    assert M.check_pair(np.array([np.nan]), np.array([np.inf])) == (
        "golden_data includes NAN or inf. my_data includes NAN or inf."
    )
    assert M.check_pair(np.zeros(2), np.array([0.0, -np.inf])) == "my_data includes NAN or inf."


def test_bitwise_equal() -> None:
    assert not K.bitwise_equal(np.array([0.0]), np.array([-0.0]))
    assert not K.bitwise_equal(np.zeros(2, np.float32), np.zeros(2, np.float64))
    assert K.bitwise_equal(np.array([np.nan]), np.array([np.nan]))


def test_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    g = rng.standard_normal(1000).astype(np.float32) * 5
    m = g + rng.standard_normal(1000).astype(np.float32) * 0.01
    whole = M.pair_metrics(g, m, TH)
    assert M.pair_metrics(g, m, TH) == whole  # deterministic
    monkeypatch.setattr(K, "CHUNK", 64)
    chunked = M.pair_metrics(g, m, TH)
    assert chunked.cosine_similarity == pytest.approx(whole.cosine_similarity, abs=1e-10)
    assert chunked.kl_divergence == pytest.approx(whole.kl_divergence, rel=1e-9, abs=1e-15)


def test_kl_float64_for_identical_fp16() -> None:
    g = np.random.default_rng(2).standard_normal(5000).astype(np.float16) * 8
    m = g.copy()
    m[0] = np.nextafter(m[0], np.float16(np.inf))
    assert M.kl_divergence(g, m) < 1e-6  # msit (fp16 arithmetic) can exceed 1e-4


finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
vectors = st.integers(1, 300).flatmap(lambda n: st.tuples(
    arrays(np.float32, n, elements=finite), arrays(np.float32, n, elements=finite)))


@settings(max_examples=200, deadline=None)
@given(vectors)
def test_properties(pair: tuple[np.ndarray, np.ndarray]) -> None:
    g, m = pair
    same = M.pair_metrics(g, g.copy(), TH)
    assert same.passed and same.cosine_similarity == 1.0 and same.kl_divergence == 0.0
    metrics = M.pair_metrics(g, m, TH)
    assert -1.0 <= metrics.cosine_similarity <= 1.0
    assert metrics.kl_divergence >= 0.0 and math.isfinite(metrics.kl_divergence)
    assert math.isfinite(metrics.ulp) and metrics.ulp > 0
    assert 0.0 <= metrics.topk_overlap <= 1.0


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 2000), elements=st.integers(-3, 3).map(float)), st.integers(1, 20))
def test_top_k_matches_a_stable_sort(x: np.ndarray, k: int) -> None:
    expected = np.argsort(-x, kind="stable")[: min(k, x.size)]
    assert list(K.top_k(x, k)) == list(expected)


def _reference(g: np.ndarray, m: np.ndarray) -> tuple[float, float, float]:
    """cos, KL and l1 in 80-bit long double (about 19 digits on x86-64)."""
    g, m = g.astype(np.longdouble), m.astype(np.longdouble)
    cos = np.sum(g * m) / np.sqrt(np.sum(g * g) * np.sum(m * m))
    log_p = g - g.max() - np.log(np.sum(np.exp(g - g.max())))
    log_q = m - m.max() - np.log(np.sum(np.exp(m - m.max())))
    kl = np.sum(np.exp(log_p) * (log_p - log_q))
    return float(cos), float(kl), float(np.sum(np.abs(m)) / np.sum(np.abs(g)) - 1)


@pytest.mark.skipif(np.finfo(np.longdouble).eps >= 1e-18, reason="needs an 80-bit long double")
@pytest.mark.parametrize(("size", "offset", "noise"), [
    (50_000, 0.0, 1e-3), (50_000, 0.0, 1e-1), (128_256, 20.0, 1e-2), (70_001, 90.0, 1e-2), (40_000, -70.0, 1e-3),
])
def test_float64_results_against_long_double(size: int, offset: float, noise: float) -> None:
    """Both exp paths (unshifted below |max| 64, shifted above), several chunks and BLAS blocks."""
    rng = np.random.default_rng(size)
    g = (rng.standard_normal(size) * 4 + offset).astype(np.float32)
    m = (g + rng.standard_normal(size) * noise).astype(np.float32)
    metrics = M.pair_metrics(g, m, TH)
    cos, kl, l1 = _reference(g, m)
    assert metrics.cosine_similarity == round(cos, 10)
    assert metrics.kl_divergence == pytest.approx(kl, rel=1e-10)
    assert metrics.l1_norm == pytest.approx(l1, rel=1e-9)


def test_dot_is_blocked_and_deterministic() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(3 * K.DOT_BLOCK + 17), rng.standard_normal(3 * K.DOT_BLOCK + 17)
    value = K._dot(a, b)
    assert value == K._dot(a.copy(), b.copy())
    assert value == pytest.approx(math.fsum(a * b), rel=1e-13)


@pytest.mark.parametrize("seed", range(40))
def test_top_k_matches_a_stable_sort_on_long_vectors(seed: int) -> None:
    """Long enough for the column pre-selection (and a ragged tail), with and without many ties."""
    rng = np.random.default_rng(seed)
    size, k = int(rng.integers(2_000, 140_000)), int(rng.integers(1, 41))
    x = rng.integers(-20, 21, size).astype(np.float32) if seed % 2 else rng.standard_normal(size).astype(np.float16)
    expected = np.argsort(-x, kind="stable")[:k]
    assert list(K.top_k(x, k)) == list(expected)


def test_signed_dp_is_the_change_in_golden_tokens_probability() -> None:
    rng = np.random.default_rng(7)
    g = (rng.standard_normal(500) * 3).astype(np.float32)
    m = g + (rng.standard_normal(500) * 0.3).astype(np.float32)
    t = int(np.argmax(g))

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x.astype(np.float64) - x.max())
        return e / e.sum()

    expected = softmax(m)[t] - softmax(g)[t]
    got = M.pair_metrics(g, m, TH).signed_dp
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15) and got != 0.0
    assert M.signed_dp(g, m) == pytest.approx(expected, rel=1e-12)
    assert M.pair_metrics(g, g.copy(), TH).signed_dp == 0.0
    sharper = g.copy()
    sharper[t] += 2.0  # the test is surer of golden's choice
    assert M.pair_metrics(g, sharper, TH).signed_dp > 0 > M.pair_metrics(sharper, g, TH).signed_dp
