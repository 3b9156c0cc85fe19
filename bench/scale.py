"""Scale benchmarks of issue 27 (run by hand, not a timed test), each command in a fresh process:

1. `bcanalyze` on two result CSVs of N rows (default 1,000,000; about half the cases flip): wall time
   and peak RSS (target: under 10 s);
2. `compare` on C cases x S steps of small logits files with manifests and a vocabulary (default 20,000
   x 4), then `report` of that run: wall time, peak RSS, the page's size and the seconds headless chromium
   takes to load it and run its script (target: under 300 MB and a page a browser opens quickly), beside
   the same for C / 4 cases to show the memory is flat.

Run: nice -n 10 python bench/scale.py [--rows 1000000] [--cases 20000] [--steps 4] [--vocab 256]
     [--skip-bcanalyze] [--skip-report]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(argv: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in MB) of one `logitsdump` command in a fresh process, and its result (its
    CPU seconds, user + system, in `.cpu`: on a shared machine they move less than the wall time)."""
    script = ("import resource, subprocess, sys, json, time\n"
              "t = time.perf_counter()\n"
              "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
              "wall = time.perf_counter() - t\n"
              "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
              "print(json.dumps({'wall': wall, 'rss': usage.ru_maxrss / 1024, 'cpu': usage.ru_utime + usage.ru_stime, "
              "'rc': done.returncode, 'out': done.stdout, 'err': done.stderr[-3000:]}))\n")
    done = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "logitsdump", *argv], cwd=cwd,
                          capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    record = json.loads(done.stdout)
    result = subprocess.CompletedProcess(argv, record["rc"], record["out"], record["err"])
    result.cpu = record["cpu"]  # type: ignore[attr-defined]
    if record["rc"] != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({record['rc']}):\n{record['err']}")
    return record["wall"], record["rss"], result


def bcanalyze(folder: Path, rows: int) -> None:
    rng = random.Random(0)
    header = "key,queries,input_token_ids,output_token_ids,test_result,golden_result,pass\n"
    with open(folder / "g.csv", "w") as golden, open(folder / "t.csv", "w") as test:
        golden.write(header)
        test.write(header)
        for i in range(rows):
            a = rng.random() < 0.5
            b = a if rng.random() < 0.5 else not a
            golden.write(f'{i},question {i}?,"[1, 2, 3]","[4, 5]",A,B,{a}\n')
            test.write(f'{i},question {i}?,"[1, 2, 3]","[4, 6]",A,B,{b}\n')
    wall, rss, done = _run(["bcanalyze", "-gp", "g.csv", "-mp", "t.csv", "-o", "bc"], folder)
    size = (folder / "g.csv").stat().st_size / 2**20
    first = done.stdout.splitlines()[0]
    print(f"bcanalyze, {rows:,} rows a side ({size:.0f} MB each): {wall:.2f} s ({done.cpu:.2f} s CPU), peak RSS "
          f"{rss:.0f} MB ({'under' if wall < 10 else 'OVER'} the 10 s target)\n  {first}")


def _dump_folders(root: Path, cases: int, steps: int, vocab: int) -> tuple[Path, Path]:
    """A golden and a test folder as our runner writes them: logits files, manifest, vocabulary. A third of
    the cases are identical, a third slightly off, a third change their argmax at a random step."""
    import numpy as np
    import torch

    from logitsdump.store import CaseManifest, logits_file_name

    golden, mine = root / f"golden_{cases}", root / f"mine_{cases}"
    golden.mkdir()
    mine.mkdir()
    generator = np.random.default_rng(0)
    base = generator.standard_normal(vocab).astype(np.float32)
    variants = {"same": base, "noise": base + 1e-3 * generator.standard_normal(vocab).astype(np.float32)}
    swapped = base.copy()
    top = np.argsort(base)[-2:]
    swapped[top[0]], swapped[top[1]] = base[top[1]], base[top[0]]
    variants["flip"] = swapped
    blobs = {}
    for name, values in {"base": base, **variants}.items():
        path = root / f"{name}.pth"
        torch.save(torch.as_tensor(values).unsqueeze(0), path)
        blobs[name] = path.read_bytes()
    rng = random.Random(0)
    tokens = [f"tok{i}" for i in range(vocab)]
    for folder in (golden, mine):
        (folder / "vocab.json").write_text(json.dumps(tokens))
    manifests: dict[str, list[str]] = {"golden": [], "test": []}
    for key in range(cases):
        kind = ("same", "noise", "flip")[key % 3]
        flip_at = rng.randrange(steps)
        names = [logits_file_name("bench", key, t) for t in range(steps)]
        for t, name in enumerate(names):
            (golden / name).write_bytes(blobs["base"])
            test_kind = kind if kind != "flip" or t == flip_at else "same"
            (mine / name).write_bytes(blobs[test_kind])
        for side in ("golden", "test"):
            record = CaseManifest(
                task="bench", subject="bench", key=key, index=key, files=tuple(names),
                input_token_ids=tuple(range(40)), output_token_ids=tuple(rng.randrange(vocab) for _ in range(steps)),
                output_tokens=tuple(f"tok{t}" for t in range(steps)), output_text="an answer " * 4,
                query=f"question {key}: " + "some words of the prompt " * 8, prompt_sha256="0" * 64,
                model_name="bench", model_path="/models/bench", dtype="fp32" if side == "golden" else "bf16",
                logits_dtype="float32", vocab_size=vocab, device="cpu")
            manifests[side].append(json.dumps(record.to_dict(), sort_keys=True))
    (golden / "manifest.jsonl").write_text("\n".join(manifests["golden"]) + "\n")
    (mine / "manifest.jsonl").write_text("\n".join(manifests["test"]) + "\n")
    return golden, mine


_CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync")


def browser_seconds(page: Path, profile: Path) -> tuple[float, float] | None:
    """(seconds to the first screen, seconds to the whole DOM) of headless chromium on `page`, browser start
    included: a 1280x900 screenshot, then `--dump-dom` (which also checks that the page's script ran to its
    end: it marks `data-ready="1"` on the body; serialising the DOM is part of that time). None without
    chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return None
    times = []
    for args in ([f"--screenshot={profile}.png", "--window-size=1280,900"], ["--dump-dom"]):
        started = time.perf_counter()
        done = subprocess.run([chromium, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                              capture_output=True, text=True, timeout=300, check=False)
        times.append(time.perf_counter() - started)
        if done.returncode != 0 or (args == ["--dump-dom"] and 'data-ready="1"' not in done.stdout):
            raise SystemExit(f"chromium did not finish the page {page}: {done.stderr[-2000:]}")
    return times[0], times[1]


def report(folder: Path, cases: int, steps: int, vocab: int) -> None:
    results = []
    for count in sorted({max(1, cases // 4), cases}):
        golden, mine = _dump_folders(folder, count, steps, vocab)
        out = folder / f"cmp_{count}"
        c_wall, c_rss, c_done = _run(["compare", "-gp", str(golden), "-mp", str(mine), "-o", str(out)], folder)
        progress = sum(1 for line in c_done.stderr.splitlines() if "measuring" in line)
        r_wall, r_rss, r_done = _run(["report", str(out)], folder)
        page = out / "report.html"
        text = page.read_text(encoding="utf-8")
        results.append((count, c_wall, c_rss, progress, r_wall, r_rss, page.stat().st_size / 2**20,
                        text.count('class="case v-'), browser_seconds(page, folder / f"profile_{count}"),
                        r_done.cpu))
    print(f"compare + report, {steps} steps a case, {vocab}-logit files, each command in a fresh process:")
    print(f"  {'cases':>7} | {'compare':>8} | {'RSS':>7} | {'progress lines':>14} | {'report (CPU)':>14} | "
          f"{'peak RSS':>8} | {'page':>8} | {'detailed':>8} | {'browser':>15}")
    for count, c_wall, c_rss, progress, r_wall, r_rss, size, detailed, browser, r_cpu in results:
        shown = f"{browser[0]:5.1f}s / {browser[1]:5.1f}s" if browser is not None else "            n/a"
        print(f"  {count:>7,} | {c_wall:7.1f}s | {c_rss:5.0f}MB | {progress:>14} | {r_wall:5.1f}s ({r_cpu:4.1f}s) | "
              f"{r_rss:6.0f}MB | {size:6.1f}MB | {detailed:>8} | {shown}")
    print("  (browser: headless chromium, start-up included: first screen (screenshot) / whole DOM with the page's "
          "script run to its end (--dump-dom))")
    if len(results) > 1:
        small, large = results[0], results[-1]
        print(f"  {large[0] // small[0]}x the cases: report peak RSS x{large[5] / small[5]:.2f}, "
              f"time x{large[4] / small[4]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--skip-bcanalyze", action="store_true")
    parser.add_argument("--skip-report", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logitsdump-scale-") as name:
        folder = Path(name)
        if not args.skip_bcanalyze:
            bcanalyze(folder, args.rows)
        if not args.skip_report:
            report(folder, args.cases, args.steps, args.vocab)
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end)")


if __name__ == "__main__":
    main()
