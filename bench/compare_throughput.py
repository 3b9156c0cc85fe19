"""Throughput of `compare` against `cat` on the same files, side by side in one run.

Makes 200 and 2000 pairs of [1, 128256] fp32 `.pth` files in a temporary
folder, reads them once to warm the page cache, then times `cat` over all of
them and `run_compare` over the two folders, `--repeat` times in turn (other
processes on the machine disturb single timings; each round is printed, then
the range). Each round times compare twice: with the C kernels (when this CPU
can run them; `kernel_lanes` says which width) and with the numpy path
(LOGITSDUMP_COMPARE_KERNEL=0), so the two are compared on the same files in
the same run. Target: at 2000 pairs compare reads at no less than half the
rate of `cat`.

    python bench/compare_throughput.py [--vocab 128256] [--sizes 200 2000] [--workers N] [--repeat 3]
        [--paths kernel numpy]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_pairs(root: Path, count: int, vocab: int, seed: int = 0) -> tuple[Path, Path]:
    """`count` pairs of golden/test files; the test is golden plus small noise.

    Written by a child process: torch stays out of the timing process, as it stays out of
    `logitsdump compare` (its objects would make Python's garbage collector slower).
    """
    subprocess.run([sys.executable, __file__, "--make-into", str(root), str(count), str(vocab), str(seed)],
                   check=True)
    return root / "golden", root / "mine"


def _write_pairs(root: Path, count: int, vocab: int, seed: int) -> None:
    import torch

    golden, mine = root / "golden", root / "mine"
    golden.mkdir()
    mine.mkdir()
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(vocab, dtype=np.float32) * 4
    for i in range(count):
        g = base + rng.standard_normal(vocab, dtype=np.float32) * 0.1
        m = g + rng.standard_normal(vocab, dtype=np.float32) * 1e-3
        name = f"logits_bench_{i // 8}_{i % 8}.pth"
        torch.save(torch.from_numpy(g).unsqueeze(0), golden / name)
        torch.save(torch.from_numpy(m).unsqueeze(0), mine / name)


def time_cat(files: list[Path]) -> float:
    """Seconds for `cat` to read every file (batched by xargs) into /dev/null."""
    listing = "\0".join(str(f) for f in files).encode()
    start = time.perf_counter()
    subprocess.run(["xargs", "-0", "cat"], input=listing, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def time_compare(golden: Path, mine: Path, out: Path, workers: int | None, path: str) -> float:
    """Seconds for one `run_compare`; `path`: "kernel" (the default choice) or "numpy"."""
    from logitsdump.compare import CompareOptions, run_compare
    from logitsdump.compare.kernels import KERNEL_ENV

    saved = os.environ.pop(KERNEL_ENV, None)
    if path == "numpy":
        os.environ[KERNEL_ENV] = "0"
    try:
        start = time.perf_counter()
        run_compare(CompareOptions(golden, mine, out, workers=workers))
        return time.perf_counter() - start
    finally:
        os.environ.pop(KERNEL_ENV, None)
        if saved is not None:
            os.environ[KERNEL_ENV] = saved


def main() -> None:
    if sys.argv[1:2] == ["--make-into"]:  # the child process of make_pairs
        root, count, vocab, seed = sys.argv[2:6]
        _write_pairs(Path(root), int(count), int(vocab), int(seed))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of cat then compare per size")
    parser.add_argument("--paths", nargs="+", choices=["kernel", "numpy"], default=["kernel", "numpy"],
                        help="compare implementations to time in each round")
    args = parser.parse_args()
    import logitsdump.compare.run  # noqa: F401  (import cost is not part of the timing)
    from logitsdump.compare.kernels import kernel_lanes

    lanes = kernel_lanes()
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"C kernels: {f'{lanes} lanes' if lanes else 'not usable here (kernel = numpy path)'}")
    for count in args.sizes:
        with tempfile.TemporaryDirectory(prefix="logitscmp-bench-") as tmp:
            root = Path(tmp)
            golden, mine = make_pairs(root, count, args.vocab)
            files = sorted(golden.iterdir()) + sorted(mine.iterdir())
            size_mb = sum(f.stat().st_size for f in files) / 1e6
            time_cat(files)  # warm the page cache
            ratios: dict[str, list[float]] = {path: [] for path in args.paths}
            for round_ in range(1, args.repeat + 1):
                cat_s = time_cat(files)
                cat_rate = count / cat_s
                line = f"{count:5d} pairs ({size_mb:.0f} MB) round {round_}: cat {cat_s:.3f} s = {cat_rate:.0f} pairs/s"
                for path in args.paths:
                    cmp_s = time_compare(golden, mine, root / f"out-{path}{round_}", args.workers, path)
                    ratios[path].append(count / cmp_s / cat_rate)
                    line += f"; {path} {cmp_s:.3f} s = {count / cmp_s:.0f} pairs/s ({ratios[path][-1]:.2f} x cat)"
                print(line)
            for path, values in ratios.items():
                values.sort()
                print(f"{count:5d} pairs, {path}: compare/cat over {len(values)} rounds: min {values[0]:.2f}, "
                      f"median {values[len(values) // 2]:.2f}, max {values[-1]:.2f}")


if __name__ == "__main__":
    main()
