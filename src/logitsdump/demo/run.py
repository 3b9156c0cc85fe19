"""`logitsdump demo`: the whole workflow on the embedded tiny model, offline, on the CPU.

fp32 stands in for the golden device and bf16 for the device under test. Each
step is the real one: evaluation (the library call behind `logitsdump eval`),
`bcanalyze`, `logitsdump dump -e "logitsdump eval ..."` as a subprocess for each
device, `compare`, and the HTML report.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from logitsdump.demo import examples
from logitsdump.errors import UserError
from logitsdump.fsutil import ensure_writable_dir
from logitsdump.logs import get_logger

#: The tasks the demo runs: those whose fp32 and bf16 verdicts differ on the tiny model.
DEMO_TASKS = ("boolq", "mmlu_zero_shot", "ceval_zero_shot", "gsm8k")
GOLDEN_DTYPE = "fp32"
TEST_DTYPE = "bf16"
TOKENS = 8


@dataclass(frozen=True)
class DemoOptions:
    workdir: str | None = None
    tasks: tuple[str, ...] = DEMO_TASKS
    tokens: int = TOKENS


@dataclass
class TaskRun:
    """What the demo did for one task."""

    task: str
    cases: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)
    bad_case_csv: Path | None = None
    bad_cases: int = 0
    logits_dirs: dict[str, Path] = field(default_factory=dict)
    compare_json: Path | None = None
    verdicts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoResult:
    workdir: Path
    runs: tuple[TaskRun, ...]
    report: Path | None
    seconds: float


def say(message: str) -> None:
    print(message, flush=True)


def prepare_workdir(requested: str | None) -> Path:
    """The given folder (new or empty), or a new timestamped folder under ./logitsdump-demo."""
    if requested is None:
        base = Path("logitsdump-demo") / datetime.now().strftime("%Y%m%d-%H%M%S")
        workdir = base
        suffix = 1
        while workdir.exists():
            workdir = base.with_name(f"{base.name}_{suffix}")
            suffix += 1
    else:
        workdir = Path(requested)
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            raise UserError(f"--workdir {workdir} exists and is not an empty folder: choose a new one")
    return ensure_writable_dir(workdir).resolve()


def run_demo(options: DemoOptions) -> DemoResult:
    """Run the whole flow; print what each step did; return where everything went."""
    started = time.monotonic()
    workdir = prepare_workdir(options.workdir)
    say(f"logitsdump demo: golden = {GOLDEN_DTYPE}, under test = {TEST_DTYPE}, on the CPU; working in {workdir}")
    runs = [TaskRun(task) for task in options.tasks]

    get_logger().setLevel(max(get_logger().level, logging.WARNING))  # the steps' own info lines
    with _step("[1/5] evaluate both 'devices' (logitsdump eval)"):
        for run in runs:
            _evaluate(run, workdir)
    with _step("[2/5] find the bad cases (logitsdump bcanalyze)"):
        for run in runs:
            _bcanalyze(run, workdir)
    with _step(f"[3/5] dump the bad cases' logits, {options.tokens} tokens each "
               "(logitsdump dump -e \"logitsdump eval ...\", both devices side by side)"):
        for run in runs:
            if run.bad_cases:
                _dump(run, workdir, options.tokens)
    with _step("[4/5] compare the two devices' logits (logitsdump compare)"):
        for run in runs:
            if run.logits_dirs:
                _compare(run, workdir)
    with _step("[5/5] write the report (logitsdump report)"):
        report = _report(workdir, runs) if any(r.compare_json for r in runs) else None
    seconds = time.monotonic() - started
    _print_summary(runs, report, seconds)
    return DemoResult(workdir, tuple(runs), report, seconds)


@contextlib.contextmanager
def _step(title: str) -> Iterator[None]:
    say(f"\n{title}")
    started = time.monotonic()
    yield
    say(f"  ({time.monotonic() - started:.1f} s)")


def _evaluate(run: TaskRun, workdir: Path) -> None:
    from logitsdump.runner.evaluate import EvalOptions, run_eval

    for dtype in (GOLDEN_DTYPE, TEST_DTYPE):
        options = EvalOptions(
            model_config_path=str(examples.model_config(dtype)),
            task_config_path=str(examples.task_config(run.task)),
            output_dir=str(workdir / "eval" / dtype),
            save_debug=True,
            device="cpu",
        )
        with contextlib.redirect_stdout(io.StringIO()):
            result = run_eval(options)
        total = result.scores[-1]
        run.cases = total.total
        run.accuracy[dtype] = total.accuracy
        say(f"  {run.task:<16} {dtype}: {total.total} cases, accuracy {total.accuracy:6.1%}  "
            f"-> {result.layout.debug_file.relative_to(workdir)}")


def _debug_csv(workdir: Path, task: str, dtype: str) -> Path:
    from logitsdump.runner.outputs import OutputLayout

    layout = OutputLayout(workdir / "eval" / dtype, "CPU", task, dtype, "tiny_llama", "pa", 1, 1)
    return layout.debug_file


def _bcanalyze(run: TaskRun, workdir: Path) -> None:
    from logitsdump.badcase import BcanalyzeOptions, analyze

    options = BcanalyzeOptions(
        str(_debug_csv(workdir, run.task, GOLDEN_DTYPE)),
        str(_debug_csv(workdir, run.task, TEST_DTYPE)),
        str(workdir / "bcanalyze" / run.task),
    )
    result = analyze(options)
    run.bad_cases = result.bad_cases if result.output_path else 0
    run.bad_case_csv = result.output_path
    where = f"-> {result.output_path.relative_to(workdir)}" if result.output_path else "(nothing to dump)"
    say(f"  {run.task:<16} {run.bad_cases} bad case(s) of {result.compared} {where}")


def _dump(run: TaskRun, workdir: Path, tokens: int) -> None:
    """Both devices' dumps run at once, each as `logitsdump dump` in its own process."""
    env = _child_env()
    children = {}
    for dtype in (GOLDEN_DTYPE, TEST_DTYPE):
        runner = (
            f"logitsdump eval --model_config_path {examples.model_config(dtype)} "
            f"--task_config_path {examples.task_config(run.task)} --batch_size 1 --tp 1 "
            f"--output_dir {workdir / 'dump' / dtype} --save_debug_enable --device cpu"
        )
        argv = [sys.executable, "-m", "logitsdump", "dump", "-bcr", str(run.bad_case_csv), "-tr", str(tokens),
                "-e", runner]
        log_path = workdir / "logs" / f"dump_{run.task}_{dtype}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        children[dtype] = (subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env), handle, log_path)
    for dtype, (child, handle, log_path) in children.items():
        status = child.wait()
        handle.close()
        if status != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            raise UserError(f"the {dtype} dump of {run.task} failed (status {status}): {' '.join(tail)}; "
                            f"see {log_path}")
        folder = _logits_dir(workdir, run.task, dtype)
        run.logits_dirs[dtype] = folder
        files = len(list(folder.glob("*.pth")))
        say(f"  {run.task:<16} {dtype}: {files} logits files -> {folder.relative_to(workdir)}")


def _child_env() -> dict[str, str]:
    """This environment, with this interpreter's bin folder first on PATH (so `logitsdump` is found)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _logits_dir(workdir: Path, task: str, dtype: str) -> Path:
    from logitsdump.runner.outputs import OutputLayout

    return OutputLayout(workdir / "dump" / dtype, "CPU", task, dtype, "tiny_llama", "pa", 1, 1).logits_dir


def _compare(run: TaskRun, workdir: Path) -> None:
    from logitsdump.compare import CompareOptions, run_compare

    options = CompareOptions(
        golden_path=str(run.logits_dirs[GOLDEN_DTYPE]),
        my_path=str(run.logits_dirs[TEST_DTYPE]),
        output_dir=str(workdir / "compare" / run.task),
        dtype=TEST_DTYPE,
    )
    summary = run_compare(options)
    run.compare_json = summary.cases_json_path
    run.verdicts = {name: count for name, count in summary.verdicts.items() if count}
    counts = ", ".join(f"{count} {name}" for name, count in run.verdicts.items()) or "no cases"
    say(f"  {run.task:<16} {summary.compared} token pairs: {counts} -> {summary.csv_path.relative_to(workdir)}")


def _report(workdir: Path, runs: Sequence[TaskRun]) -> Path:
    from logitsdump.report import load_compares, print_summary, write_report

    sources = [run.compare_json for run in runs if run.compare_json is not None]
    path = write_report(sources, workdir / "report.html")
    say(f"  report -> {path.relative_to(workdir)}")
    say("")
    print_summary(load_compares(sources))
    return path


def _print_summary(runs: Sequence[TaskRun], report: Path | None, seconds: float) -> None:
    verdict_names = sorted({name for run in runs for name in run.verdicts})
    header = f"{'task':<16} {'cases':>5} {'fp32 acc':>8} {'bf16 acc':>8} {'bad':>4}  " + "  ".join(verdict_names)
    say("\nsummary")
    say(header)
    for run in runs:
        cells = "  ".join(f"{run.verdicts.get(name, 0):>{len(name)}}" for name in verdict_names)
        say(f"{run.task:<16} {run.cases:>5} {run.accuracy.get(GOLDEN_DTYPE, 0):>8.1%} "
            f"{run.accuracy.get(TEST_DTYPE, 0):>8.1%} {run.bad_cases:>4}  {cells}")
    say(f"\ndone in {seconds:.0f} s.")
    if report is not None:
        say(f"open the report: {report}")
