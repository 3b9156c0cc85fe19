"""Does the parity preflight name each planted set-up difference, in every case it touches, and nothing on a
clean pair? One row per planted difference (`logitsdump.demo.setup_plants`), on the tiny model and SmolLM2-135M.

    python bench/setup_diffs.py [--model tiny|smollm2|both] [--task mmlu_few_shots] [--tokens 4]

Each pair: golden in fp32, the test side in bf16 (the two "devices"; their dtype differs by design and is
no finding), both evaluated with `--save_debug_enable`; the preflight on the two debug CSVs (what bcanalyze
sees); every case dumped on both sides and compared (what compare sees). Truth comes from the outputs,
not from the preflight (`demo/setup_check.py`): a prompt difference touches the cases whose token ids
differ, the others every case. Columns: cases, touched, eval-level hits / touched and false alarms /
untouched, the same at the dump level (compare's `setup-differs` verdict with the planted cause), and
every cause named (case counts).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from logitsdump.demo import examples
from logitsdump.demo.setup_check import Score, run_pair
from logitsdump.demo.setup_plants import CLEAN, KINDS, plant


def models(choice: str) -> list[tuple[str, Path]]:
    found = []
    if choice in ("tiny", "both"):
        found.append(("tiny_llama", examples.TINY_MODEL))
    if choice in ("smollm2", "both"):
        from logitsdump.demo import smollm2

        found.append(("smollm2_135m", smollm2.build_model()))
    return found


def median_length(clean: Path) -> int | None:
    """The median prompt length of the clean pair's golden side (the context-limit difference cuts about half)."""
    import csv
    import json

    found = sorted((clean / "eval" / "golden").rglob("*_debug_info.csv")) if clean.is_dir() else []
    if not found:
        return None
    with open(found[0], encoding="utf-8", newline="") as handle:
        lengths = sorted(len(json.loads(row["input_token_ids"])) for row in csv.DictReader(handle))
    return lengths[len(lengths) // 2]


def rate(hits: int, total: int) -> str:
    return f"{hits}/{total}" + (f" ({hits / total:.0%})" if total else "")


def row(model: str, score: Score) -> str:
    untouched = score.cases - score.touched
    dump_untouched = score.dump_cases - score.touched
    causes = ", ".join(f"{cause} {n}" for cause, n in sorted(score.causes.items())) or "-"
    return (f"| {model} | {score.kind} | {score.cases} | {score.touched} | {rate(score.eval_hits, score.touched)} | "
            f"{rate(score.eval_false, untouched)} | {rate(score.dump_hits, score.touched)} | "
            f"{rate(score.dump_false, dump_untouched)} | {causes} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2", "both"), default="both")
    parser.add_argument("--task", default="mmlu_few_shots", help="a shipped task YAML with few-shot examples")
    parser.add_argument("--tokens", type=int, default=4, help="steps dumped per case")
    parser.add_argument("--test-dtype", default="bf16", help="the test side's data type (golden: fp32)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="setup_diffs_"))
    print("| model | planted | cases | touched | eval: named | eval: false alarms | dump: named | dump: false alarms "
          "| causes named (cases) |")
    print("|---|---|---|---|---|---|---|---|---|")
    findings = []
    started = time.monotonic()
    for name, folder in models(args.model):
        cache: dict[str, Path] = {}  # golden sides shared by several kinds run once
        for kind in (CLEAN, *KINDS):
            task = examples.task_config(args.task)
            planted = plant(kind, folder, task, work / name / kind / "plant", model_name=name,
                            test_dtype=args.test_dtype, context_limit=median_length(work / name / CLEAN))
            score = run_pair(planted, work / name / kind, tokens=args.tokens, cache=cache)
            print(row(name, score), flush=True)
            if score.finding:
                findings.append(f"{name} {kind}: {score.finding}")
    print()
    for line in findings:
        print(f"- {line}")
    print(f"\n{time.monotonic() - started:.0f} s; work in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
