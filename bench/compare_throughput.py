"""Throughput of `compare` against `cat` on the same files, side by side in one run.

Makes 200 and 2000 pairs of [1, 128256] fp32 `.pth` files in a temporary
folder, reads them once to warm the page cache, then times `cat` over all of
them and `run_compare` over the two folders, `--repeat` times in turn (other
processes on the machine disturb single timings; each round is printed, then
the range). Target: at 2000 pairs compare reads at no less than half the rate
of `cat`.

    python bench/compare_throughput.py [--vocab 128256] [--sizes 200 2000] [--workers N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def make_pairs(root: Path, count: int, vocab: int, seed: int = 0) -> tuple[Path, Path]:
    """`count` pairs of golden/test files; the test is golden plus small noise."""
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
    return golden, mine


def time_cat(files: list[Path]) -> float:
    """Seconds for `cat` to read every file (batched by xargs) into /dev/null."""
    listing = "\0".join(str(f) for f in files).encode()
    start = time.perf_counter()
    subprocess.run(["xargs", "-0", "cat"], input=listing, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def time_compare(golden: Path, mine: Path, out: Path, workers: int | None) -> float:
    from logitsdump.compare.run import CompareOptions, run_compare

    start = time.perf_counter()
    run_compare(CompareOptions(golden, mine, out, workers=workers))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of cat then compare per size")
    args = parser.parse_args()
    import logitsdump.compare.run  # noqa: F401  (import cost is not part of the timing)

    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for count in args.sizes:
        with tempfile.TemporaryDirectory(prefix="logitscmp-bench-") as tmp:
            root = Path(tmp)
            golden, mine = make_pairs(root, count, args.vocab)
            files = sorted(golden.iterdir()) + sorted(mine.iterdir())
            size_mb = sum(f.stat().st_size for f in files) / 1e6
            time_cat(files)  # warm the page cache
            ratios = []
            for round_ in range(1, args.repeat + 1):
                cat_s = time_cat(files)
                cmp_s = time_compare(golden, mine, root / f"out{round_}", args.workers)
                cat_rate, cmp_rate = count / cat_s, count / cmp_s
                ratios.append(cmp_rate / cat_rate)
                print(
                    f"{count:5d} pairs ({size_mb:7.1f} MB) round {round_}: cat {cat_s:6.3f} s = "
                    f"{cat_rate:8.1f} pairs/s; compare {cmp_s:6.3f} s = {cmp_rate:8.1f} pairs/s; "
                    f"compare/cat = {ratios[-1]:.2f}"
                )
            print(f"{count:5d} pairs: compare/cat over {len(ratios)} rounds: min {min(ratios):.2f}, "
                  f"median {sorted(ratios)[len(ratios) // 2]:.2f}, max {max(ratios):.2f}")


if __name__ == "__main__":
    main()
