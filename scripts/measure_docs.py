"""Re-measure the timings and counts that README.md and docs/ quote and are cheap enough to rerun.

    .venv/bin/python scripts/measure_docs.py                  # demo (time, counts), the free-run summary
    .venv/bin/python scripts/measure_docs.py --setup          # also a fresh scripts/setup.sh, timed
    .venv/bin/python scripts/measure_docs.py --png docs/report.png   # also the report's picture (chromium)

Each figure is printed beside the place that quotes it; copy what moved into the docs. Run it on an idle
machine when timings matter (the demo's time is wall-clock: a busy CPU makes it longer). Figures from the
benchmarks under bench/ (compare.md's throughput, vllm.md, distributed.md, compare.md's SmolLM2 table)
take minutes to hours and are rerun with their own commands, named beside them in the docs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The report picture's window, as docs/report.png has it.
PNG_SIZE = (1280, 1250)


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_COLOR="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _say(where: str, text: str) -> None:
    print(f"{where}: {text}", flush=True)


def measure_setup() -> None:
    """A plain `scripts/setup.sh` into a new virtual environment, timed (README's set-up line)."""
    with tempfile.TemporaryDirectory(prefix="measure-setup-") as tmp:
        started = time.monotonic()
        done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], cwd=ROOT, capture_output=True, text=True,
                              env={**_env(), "VENV": str(Path(tmp) / "venv")}, check=False)
        seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"scripts/setup.sh failed ({done.returncode}):\n{done.stderr[-2000:]}")
    _say("README.md (set-up)", f"scripts/setup.sh into a new venv: {seconds:.0f} s")


def measure_demo(work: Path, png: Path | None) -> None:
    """`logitsdump demo`, timed as a user runs it, and the counts its output folder holds."""
    from logitsdump.report import load_compares

    folder = work / "demo"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "logitsdump", "demo", "-o", str(folder)], capture_output=True,
                          text=True, env=_env(), check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"logitsdump demo failed ({done.returncode}):\n{done.stderr[-2000:]}")
    said = next((line for line in done.stdout.splitlines() if line.startswith("done in ")), "?")
    _say("README.md (demo)", f"logitsdump demo: {seconds:.0f} s wall-clock, the demo says '{said}' "
         f"({os.cpu_count()} CPU cores)")
    merged = load_compares(sorted(folder.glob("compare/*/logits_cmp_cases_*.json")))
    counts = ", ".join(f"{name} {count}" for name, count in merged.verdict_counts().items())
    steps = merged.document.stats.kld_steps if merged.document.stats is not None else "?"
    pth = sum(1 for _ in folder.glob("dump/*/data/*/precision_test/*/*/*/logits/*.pth"))
    _say("docs/report.md, report.png", f"demo: {len(merged.cases)} cases ({counts}); "
         f"{merged.summary.get('rows', '?')} token pairs; {steps} judged steps; {pth} logits files dumped")
    if png is not None:
        _screenshot(folder / "report.html", png)


def _screenshot(page: Path, png: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("--png needs chromium (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="measure-png-") as profile:
        done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--user-data-dir={profile}", f"--window-size={PNG_SIZE[0]},{PNG_SIZE[1]}",
                               f"--screenshot={png.resolve()}", page.as_uri()],
                              capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not png.is_file():
        sys.exit(f"chromium failed ({done.returncode}):\n{done.stderr[-2000:]}")
    _say("README.md (picture)", f"{png} from {page} ({PNG_SIZE[0]}x{PNG_SIZE[1]})")


def measure_free_run(work: Path) -> None:
    """docs/report.md's terminal summary: the demo's flow on mmlu_zero_shot, both sides free-running."""
    from logitsdump.demo.run import DemoOptions, run_demo
    from logitsdump.report import format_summary, load_compares

    result = run_demo(DemoOptions(workdir=str(work / "free"), tasks=("mmlu_zero_shot",), replay=False,
                                  report=False))
    (run,) = result.runs
    text = format_summary(load_compares([run.compare_json]), color=False)
    _say("docs/report.md (terminal summary)", "`logitsdump report` of the free run of mmlu_zero_shot prints:")
    print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="also time a fresh scripts/setup.sh (a few minutes)")
    parser.add_argument("--png", type=Path, default=None, help="also write the demo report's picture here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this new folder")
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    work = args.keep or Path(tempfile.mkdtemp(prefix="measure-docs-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.setup:
            measure_setup()
        measure_demo(work, args.png)
        measure_free_run(work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
