"""Where the C top-k scan stops beating numpy: both timed side by side for a range of k.

The C scan looks at about k blocks value by value, so its cost grows with k; numpy's
partition-based `top_k_numpy` costs about the same for every k. `kernels.KERNEL_TOPK_MAX`
is the largest k routed to the C scan: this benchmark is how it was chosen. Each k is timed on
the same vectors (random, ascending and constant: the scan's cost must not depend on order),
alternating the two implementations, best of `--repeat`.

    python bench/topk_crossover.py [--vocab 128256] [--ks 2 10 32 64 128 256 1024 128256] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from logitsdump.compare import kernels


def best_of(fn, repeat: int) -> float:
    """The fastest of `repeat` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def c_scan(x: np.ndarray, k: int) -> tuple:
    """The C scan called directly, whatever `KERNEL_TOPK_MAX` says."""
    values = kernels._kernel_input(x)
    return kernels._kernel.top_k(values, values.dtype.itemsize, k, kernels.kernel_lanes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 10, 32, 64, 128, 256, 1024, 8192, 128256])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if kernels._kernel is None or not kernels.kernel_lanes():
        raise SystemExit("the C kernels are not built or not usable on this CPU: nothing to compare")
    rng = np.random.default_rng(0)
    vectors = {
        "random": (rng.standard_normal(args.vocab) * 4).astype(np.float32),
        "ascending": np.linspace(-10, 10, args.vocab, dtype=np.float32),
        "constant": np.full(args.vocab, 0.5, dtype=np.float32),
    }
    print(f"vocab {args.vocab}, kernel width {kernels.kernel_lanes()} lanes, KERNEL_TOPK_MAX "
          f"{kernels.KERNEL_TOPK_MAX}; best of {args.repeat}, milliseconds")
    print(f"{'k':>7}  " + "  ".join(f"{name:>9} C  {name:>9} np  C/np" for name in vectors))
    for k in args.ks:
        k = min(k, args.vocab)
        cells = []
        for x in vectors.values():
            assert list(c_scan(x, k)[0]) == kernels.top_k_numpy(x, k).tolist()  # the same answer
            c_time = best_of(lambda x=x, k=k: c_scan(x, k), args.repeat)
            np_time = best_of(lambda x=x, k=k: kernels.top_k_numpy(x, k), args.repeat)
            cells.append(f"{c_time * 1e3:11.3f}  {np_time * 1e3:12.3f}  {c_time / np_time:4.2f}")
        print(f"{k:>7}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
