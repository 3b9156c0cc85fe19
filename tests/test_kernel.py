"""The C kernels of compare (`logitsdump.compare._kernel`) against the numpy path and exact references.

Where the kernels are not built, or the CPU has neither AVX2 nor AVX-512, these tests skip
(test_metrics.py checks that they are built where CI expects them).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from logitsdump.compare import kernels as K
from logitsdump.compare import metrics as M
from logitsdump.compare import records as R

needs_kernel = pytest.mark.skipif(not K.kernel_lanes(), reason="the C kernels are not built for this CPU")
TH = M.Thresholds()


@pytest.fixture(autouse=True, params=[8, 4], ids=["lanes8", "lanes4"])
def lanes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run every test with the AVX-512 kernels and with the AVX2 ones (each where the CPU has it)."""
    if request.param not in K.USABLE_KERNEL_LANES:
        pytest.skip(f"this CPU cannot run the {request.param}-lane kernels")
    monkeypatch.setenv(K.KERNEL_ENV, str(request.param))
    return request.param


def _kernel():
    from logitsdump.compare import _kernel

    return _kernel


@needs_kernel
def test_env_picks_the_width_or_the_numpy_path(lanes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    assert K.kernel_lanes() == lanes
    monkeypatch.setenv(K.KERNEL_ENV, "auto")
    assert K.kernel_lanes() == K.USABLE_KERNEL_LANES[0]
    monkeypatch.setenv(K.KERNEL_ENV, "0")
    assert K.kernel_lanes() == 0
    g = np.linspace(-3, 3, 100)
    assert K.pair_sums(g, g[::-1].copy()).g_shift == 0.0  # the numpy path: no shift below |max| 64


def _paths(g: np.ndarray, m: np.ndarray) -> tuple[R.PairMetrics, R.PairMetrics]:
    """pair_metrics with the kernels the `lanes` fixture chose, then with the numpy path."""
    old = os.environ.get(K.KERNEL_ENV)
    try:
        kernel = M.pair_metrics(g, m, TH)
        os.environ[K.KERNEL_ENV] = "0"
        numpy = M.pair_metrics(g, m, TH)
    finally:
        if old is None:
            os.environ.pop(K.KERNEL_ENV, None)
        else:
            os.environ[K.KERNEL_ENV] = old
    return kernel, numpy


def _assert_close(kernel: R.PairMetrics, numpy: R.PairMetrics) -> None:
    assert kernel.cosine_similarity == pytest.approx(numpy.cosine_similarity, abs=2e-10)  # both rounded to 10
    assert kernel.kl_divergence == pytest.approx(numpy.kl_divergence, rel=1e-9, abs=1e-14)
    assert kernel.l1_norm == pytest.approx(numpy.l1_norm, rel=1e-12, abs=1e-15)
    assert kernel.max_abs_diff == numpy.max_abs_diff  # a max: no rounding at all
    assert (kernel.ulp_max_diff, kernel.ulp, kernel.golden_top1, kernel.my_top1, kernel.topk_overlap) == (
        numpy.ulp_max_diff, numpy.ulp, numpy.golden_top1, numpy.my_top1, numpy.topk_overlap)
    assert kernel.passed == numpy.passed


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 63, 64, 65, 1023, 1024, 1025, 4099, 128256])
def test_kernel_agrees_with_numpy_path(dtype: type, size: int) -> None:
    """Every length around the lane, block and top-k block sizes, every dtype, logits far from 0 too."""
    rng = np.random.default_rng(size)
    for offset, noise in ((0.0, 1e-3), (70.0, 0.05), (-90.0, 1.0)):
        g = (rng.standard_normal(size) * 4 + offset).astype(dtype)
        m = (g + rng.standard_normal(size) * noise).astype(dtype)
        _assert_close(*_paths(g, m))


@needs_kernel
def test_kernel_and_numpy_sums_match_float64_references() -> None:
    rng = np.random.default_rng(5)
    g = rng.standard_normal(5000).astype(np.float32) * 6
    m = (g + rng.standard_normal(5000) * 0.01).astype(np.float32)
    g64, m64 = g.astype(np.float64), m.astype(np.float64)
    numpy_sums = K.pair_sums_numpy(g, m, None, g_max=float(g.max()), m_max=float(m.max()))
    for s in (K.pair_sums(g, m), numpy_sums):
        e_g = np.exp(g64 - s.g_shift)
        references = {
            "gg": math.fsum(g64 * g64), "mm": math.fsum(m64 * m64), "gm": math.fsum(g64 * m64),
            "abs_g": math.fsum(np.abs(g64)), "abs_m": math.fsum(np.abs(m64)),
            "z_g": math.fsum(e_g), "z_m": math.fsum(np.exp(m64 - s.m_shift)),
            "weighted": math.fsum(e_g * (g64 - m64)),
        }
        for name, exact in references.items():
            assert getattr(s, name) == pytest.approx(exact, rel=1e-14), name
        assert s.abs_diff_max == np.max(np.abs(g64 - m64))
    assert K.pair_sums(g, m).g_shift == float(g.max())  # the kernels always subtract the maximum


@needs_kernel
def test_kernel_exp_within_two_ulps_and_zero_below_minus_708(lanes: int) -> None:
    kernel = _kernel()
    xs = np.concatenate([np.linspace(-708.0, 0.0, 3001), -np.geomspace(1e-12, 700, 500), [0.0, -0.0]])
    for x in xs:
        z = kernel.pair_sums(np.array([x]), np.array([0.0]), 8, 0.0, 0.0, lanes)[5]
        exact = math.exp(x)
        assert abs(z - exact) <= 2 * math.ulp(exact), x
    for x in (-708.5, -745.2, -1e300, -math.inf):
        assert kernel.pair_sums(np.array([x]), np.array([0.0]), 8, 0.0, 0.0, lanes)[5] == 0.0


@needs_kernel
def test_kernel_is_deterministic_across_calls_and_threads() -> None:
    rng = np.random.default_rng(9)
    g = rng.standard_normal(128256).astype(np.float32) * 4
    m = (g + rng.standard_normal(128256) * 0.05).astype(np.float32)
    first = K.pair_sums(g, m)
    results: list[K.PairSums] = []

    def work() -> None:
        for _ in range(5):
            results.append(K.pair_sums(g, m))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and all(r == first for r in results)


@needs_kernel
def test_kernel_handles_strided_and_big_endian_input() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal(2000).astype(np.float32)
    g, m = base[::2], (base[::2] + 0.01).astype(">f4")  # not contiguous; not native byte order
    assert K.pair_sums(g, m) == K.pair_sums(np.ascontiguousarray(g), np.ascontiguousarray(m, dtype="<f4"))
    _assert_close(*_paths(g, m))


@needs_kernel
def test_kernel_rejects_bad_buffers(lanes: int) -> None:
    kernel = _kernel()
    with pytest.raises(ValueError):
        kernel.pair_sums(np.zeros(3), np.zeros(4), 8, 0.0, 0.0, lanes)
    with pytest.raises(ValueError):
        kernel.pair_sums(np.zeros(0), np.zeros(0), 8, 0.0, 0.0, lanes)
    with pytest.raises(ValueError):
        kernel.pair_sums(np.zeros(3, np.int16), np.zeros(3, np.int16), 2, 0.0, 0.0, lanes)
    with pytest.raises(ValueError):
        kernel.pair_sums(np.zeros(3), np.zeros(3), 8, 0.0, 0.0, 16)  # no such width
    with pytest.raises(ValueError):
        kernel.top_k(np.zeros(3), 8, 4, lanes)
    with pytest.raises(ValueError):
        kernel.top_k(np.zeros(3), 8, 0, lanes)


# ---- top-k and the finiteness scan ---------------------------------------------------------------


def _stable_top(x: np.ndarray, k: int) -> list[int]:
    return np.argsort(-x.astype(np.float64), kind="stable")[:k].tolist()


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("size", [1, 5, 63, 64, 65, 200, 4096, 128256])
def test_top_k_matches_a_stable_sort_with_ties(dtype: type, size: int) -> None:
    rng = np.random.default_rng(size)
    ascending = np.linspace(-50.0, 50.0, size)  # in float16 many become ties
    for values in (rng.standard_normal(size), rng.integers(-3, 4, size).astype(np.float64), np.zeros(size),
                   ascending, ascending[::-1].copy()):
        x = values.astype(dtype)
        for k in sorted({1, 2, 10, size}):
            k = min(k, size)
            assert K.top_k(x, k).tolist() == _stable_top(x, k) == K.top_k_numpy(x, k).tolist()


@needs_kernel
def test_top_k_never_picks_nan_and_falls_back_on_minus_inf(lanes: int) -> None:
    x = np.array([1.0, np.nan, 3.0, -np.inf, 2.0, np.nan] * 20, dtype=np.float32)
    found, finite = _kernel().top_k(x, 4, 3, lanes)
    assert found == (2, 8, 14) and finite is False
    y = np.full(130, -np.inf, dtype=np.float32)
    y[7], y[100] = 1.0, 5.0
    found, finite = _kernel().top_k(y, 4, 4, lanes)
    assert found == (100, 7) and finite is False  # -inf is never chosen: fewer than k ...
    assert K.top_k(y, 4).tolist() == [100, 7, 0, 1]  # ... so metrics.top_k asks the numpy path


@needs_kernel
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 63, 64, 1000, 1029])  # first block, block edge, middle, tail
def test_scan_finds_every_non_finite_value(bad: float, where: int) -> None:
    x = np.random.default_rng(where).standard_normal(1030).astype(np.float32)
    clean = K.scan(x, 10)
    assert clean.finite and clean.top is not None and clean.top.tolist() == _stable_top(x, 10)
    x[where] = bad
    result = K.scan(x, 10)
    assert not result.finite and result.top is None
    assert not K.all_finite(x)


@needs_kernel
@settings(max_examples=150, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e4, 1e4, width=32)),
    st.floats(0, 10, width=32),
    st.integers(0, 2**32 - 1),
)
def test_kernel_agrees_with_numpy_on_arbitrary_vectors(g: np.ndarray, noise: float, seed: int) -> None:
    m = (g + np.random.default_rng(seed).standard_normal(g.size) * noise).astype(np.float32)
    kernel, numpy = _paths(g, m)
    assert kernel.cosine_similarity == pytest.approx(numpy.cosine_similarity, abs=2e-10)
    assert kernel.kl_divergence == pytest.approx(numpy.kl_divergence, rel=1e-8, abs=1e-12)
    assert kernel.l1_norm == pytest.approx(numpy.l1_norm, rel=1e-11, abs=1e-14)
    assert (kernel.max_abs_diff, kernel.golden_top1, kernel.my_top1) == (
        numpy.max_abs_diff, numpy.golden_top1, numpy.my_top1)


@needs_kernel
def test_large_k_goes_to_numpy_and_small_k_to_the_c_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """k above KERNEL_TOPK_MAX is never given to the C scan (its cost grows with k: bench/topk_crossover.py)."""
    calls: list[int] = []
    real = K._kernel

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def top_k(self, values, itemsize, k, lanes):
            calls.append(k)
            return real.top_k(values, itemsize, k, lanes)

    monkeypatch.setattr(K, "_kernel", Spy())
    x = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    expected = np.argsort(-x.astype(np.float64), kind="stable")
    for k in (K.KERNEL_TOPK_MAX, K.KERNEL_TOPK_MAX + 1, x.size):
        assert K.top_k(x, k).tolist() == expected[:k].tolist()
        assert K.scan(x, k).top.tolist() == expected[:k].tolist()
    assert calls == [K.KERNEL_TOPK_MAX, K.KERNEL_TOPK_MAX]
