"""Load benchmarks of issue 6 (run by hand, not a timed test):

1. a 100,000-row bad-case CSV read, turned into the dump request and passed on to the runner
   (the BAD_CASE_LIST literal, too long for the environment, goes in the list file) and parsed
   back on the runner side: target under 2 s in all;
2. compare over 1,000 and over 10,000 small file pairs, each in a fresh process: peak RSS
   (getrusage) and peak traced Python/numpy memory (tracemalloc), side by side, to show that
   memory stays flat in the number of files.

Run: python bench/load.py [--pairs 1000 10000] [--vocab 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = 100_000


def bad_case_load(folder: Path) -> None:
    from logitsdump import protocol
    from logitsdump.badcase import read_bad_case_request

    path = folder / "bad.csv"
    header = "key,queries,input_token_ids_golden,input_token_ids_test,output_token_ids_golden,"
    header += "output_token_ids_test,passed_golden,passed_test\n"
    # 99,999 distinct cases (modeltest's limit) in 100,000 rows: one key appears twice
    body = "".join(f'{i % 99_999},question {i}?,"[1, 2, 3]","[1, 2, 3]","[4, 5]","[4, 6]",true,false\n'
                   for i in range(ROWS, 0, -1))
    path.write_text(header + body, encoding="utf-8")
    start = time.perf_counter()
    request = read_bad_case_request(path, 10)
    parsed = time.perf_counter()
    literal = request.list_literal()
    fits = protocol.list_fits_environment(request)
    list_file = folder / "list.txt"
    list_file.write_text(literal, encoding="utf-8")
    child = protocol.child_environment({}, request, list_file=None if fits else list_file)
    passed = time.perf_counter()
    back = protocol.read_request(child)
    done = time.perf_counter()
    assert back is not None and back.indices == request.indices
    total = done - start
    print(f"bad-case CSV, {ROWS:,} rows -> {len(request.indices):,} cases "
          f"(literal {len(literal) / 1024:.0f} KiB, {'environment' if fits else 'list file'}):")
    print(f"  read + parse {parsed - start:.3f} s | build literal + env {passed - parsed:.3f} s | "
          f"runner parses it back {done - passed:.3f} s | total {total:.3f} s "
          f"({'under' if total < 2 else 'OVER'} the 2 s target)")


def _make_pairs(root: Path, count: int, vocab: int) -> tuple[Path, Path]:
    import torch

    golden, mine = root / f"golden_{count}", root / f"mine_{count}"
    golden.mkdir()
    mine.mkdir()
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(1, vocab, generator=generator)
    torch.save(base, root / "g.pth")
    torch.save(base + 1e-4 * torch.randn(1, vocab, generator=generator), root / "m.pth")
    g_bytes, m_bytes = (root / "g.pth").read_bytes(), (root / "m.pth").read_bytes()
    for i in range(count):
        name = f"logits_bench.jsonl_{i // 4}_{i % 4}.pth"
        (golden / name).write_bytes(g_bytes)
        (mine / name).write_bytes(m_bytes)
    return golden, mine


def _child(golden: str, mine: str, out: str) -> None:
    """Run one compare in this (fresh) process; print its peaks as JSON."""
    import tracemalloc

    from logitsdump.compare import CompareOptions, run_compare

    tracemalloc.start()
    start = time.perf_counter()
    summary = run_compare(CompareOptions(golden, mine, out))
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rows": summary.rows, "seconds": seconds, "traced_peak": traced_peak, "rss_kib": rss_kib}))


def compare_memory(folder: Path, counts: list[int], vocab: int) -> None:
    results = []
    for count in counts:
        golden, mine = _make_pairs(folder, count, vocab)
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(golden), str(mine), str(folder / f"out_{count}")],
            capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        results.append((count, json.loads(done.stdout.strip().splitlines()[-1])))
    print(f"compare, {vocab}-logit fp32 files, each size in a fresh process:")
    print(f"  {'pairs':>7} | {'time':>7} | {'pairs/s':>8} | {'peak RSS':>9} | {'peak traced':>11}")
    for count, r in results:
        print(f"  {count:>7,} | {r['seconds']:6.2f}s | {count / r['seconds']:8.0f} | "
              f"{r['rss_kib'] / 1024:7.1f}MB | {r['traced_peak'] / 2**20:9.1f}MB")
    (small, a), (large, b) = results[0], results[-1]
    print(f"  {large // small}x the pairs: peak RSS x{b['rss_kib'] / a['rss_kib']:.2f} "
          f"(+{(b['rss_kib'] - a['rss_kib']) / 1024:.1f} MB), peak traced x{b['traced_peak'] / a['traced_peak']:.2f} "
          f"(+{(b['traced_peak'] - a['traced_peak']) / 2**20:.1f} MB, "
          f"{(b['traced_peak'] - a['traced_peak']) / (large - small):.0f} B a pair: the row records kept for the CSV)")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--vocab", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logitsdump-bench-") as name:
        folder = Path(name)
        bad_case_load(folder)
        compare_memory(folder, sorted(args.pairs), args.vocab)


if __name__ == "__main__":
    main()
