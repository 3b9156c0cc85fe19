"""`logitsdump demo`: the whole workflow on the embedded tiny model, offline, on the CPU.

fp32 stands in for the golden device and bf16 for the device under test (or any two model YAML
files, e.g. a model with a planted defect). Each step is the real one: evaluation (the library call
behind `logitsdump eval`), `bcanalyze`, `logitsdump dump -e "logitsdump eval ..."` as a subprocess
for each device (the golden side with its control arm, `--control impl`: the same cases in bf16
through the other attention implementation; the device under test replaying the golden tokens),
`compare` (which judges each case against the control), and the report.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from logitsdump.demo import examples
from logitsdump.errors import UserError
from logitsdump.fsutil import ensure_writable_dir
from logitsdump.logs import get_logger
from logitsdump.runner.outputs import control_dir_of

#: The tasks the demo runs: those whose fp32 and bf16 verdicts differ on the tiny model.
DEMO_TASKS = ("boolq", "mmlu_zero_shot", "ceval_zero_shot", "gsm8k")
TOKENS = 8
#: Dumps run side by side (this many processes at once).
PARALLEL_DUMPS = 2


@dataclass(frozen=True)
class Side:
    """One 'device' of the comparison: a name for its folders, and its model YAML."""

    name: str  # "golden" or "test"
    model_yaml: Path

    @property
    def label(self) -> str:
        from logitsdump.runner.config import load_model_config

        config = load_model_config(self.model_yaml)
        return f"{config.model_name} {config.data_type}"


@dataclass(frozen=True)
class DemoOptions:
    workdir: str | None = None
    tasks: tuple[str, ...] = DEMO_TASKS
    tokens: int = TOKENS
    golden_model: Path = field(default_factory=lambda: examples.model_config("fp32"))
    test_model: Path = field(default_factory=lambda: examples.model_config("bf16"))
    #: the device under test replays the golden tokens (`dump --replay`)
    replay: bool = True
    report: bool = True
    #: the golden side's control arm (`dump --control`: impl or dtype; None: none), compare's noise reference
    control: str | None = "impl"
    #: a noise floor for the cases without a control (a tolerances file; None: compare's dtype default)
    tolerances: Path | None = None


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
    #: what compare judged against (`control.Reference.description`)
    floor: str = ""


#: The script the demo writes into its folder: the commands it ran, as `logitsdump` command lines.
COMMANDS_NAME = "commands.sh"


@dataclass(frozen=True)
class DemoResult:
    workdir: Path
    runs: tuple[TaskRun, ...]
    report: Path | None
    seconds: float
    #: `COMMANDS_NAME` in the work folder
    commands: Path | None = None

    def verdict_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runs:
            for name, count in run.verdicts.items():
                counts[name] = counts.get(name, 0) + count
        return counts


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
    golden, test = Side("golden", Path(options.golden_model)), Side("test", Path(options.test_model))
    say(f"logitsdump demo: golden = {golden.label}, under test = {test.label}, on the CPU; working in {workdir}")
    runs = [TaskRun(task) for task in options.tasks]
    get_logger().setLevel(max(get_logger().level, logging.WARNING))  # the steps' own info lines
    commands = Commands(workdir / COMMANDS_NAME)
    report = None
    try:
        with _step("[1/5] evaluate both 'devices' (logitsdump eval)"):
            commands.section("1. the accuracy runs: golden (fp32) and the device under test (bf16)")
            for run in runs:
                for side in (golden, test):
                    _evaluate(run, side, workdir, commands)
        with _step("[2/5] find the bad cases (logitsdump bcanalyze)"):
            commands.section("2. the cases whose pass/fail differs")
            for run in runs:
                _bcanalyze(run, golden, test, workdir, commands)
        how = "the device under test replays the golden tokens" if options.replay else "both decode freely"
        with _step(f"[3/5] dump the bad cases' logits, {options.tokens} tokens each "
                   f"(logitsdump dump -e \"logitsdump eval ...\"; {how})"):
            commands.section("3. the bad cases' logits: golden first, then the device under test"
                             + (" replaying it" if options.replay else ""))
            _dump_all([r for r in runs if r.bad_cases], golden, test, workdir, options, commands)
        with _step("[4/5] compare the two devices' logits (logitsdump compare)"):
            commands.section("4. the verdict of each case")
            for run in runs:
                if len(run.logits_dirs) == 2:
                    _compare(run, golden, test, workdir, options.tolerances, commands)
            for run in runs:
                if run.floor:
                    say(f"  {run.task:<16} judged against the {run.floor}")
        if options.report and any(r.compare_json for r in runs):
            with _step("[5/5] write the report (logitsdump report)"):
                commands.section("5. one page for every task")
                report = _report(workdir, runs, commands)
    finally:
        commands.write()  # what ran, also when a step failed
    seconds = time.monotonic() - started
    _print_summary(runs, golden, test, report, seconds)
    say(f"the commands it ran: {commands.path} (a template for two real devices: docs/workflow.md)")
    return DemoResult(workdir, tuple(runs), report, seconds, commands.path)


class Commands:
    """The demo's steps as `logitsdump` command lines, written as a shell script into the work folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = ["#!/bin/sh", "# The commands `logitsdump demo` ran (its own steps run in-process; these are",
                      "# the same steps as commands). Run again, they write into the same folders.", "set -e"]

    def section(self, title: str) -> None:
        self.lines += ["", f"# {title}"]

    def add(self, argv: Sequence[str]) -> None:
        self.lines.append(shlex.join(str(a) for a in argv))

    def write(self) -> None:
        from logitsdump.fsutil import atomic_write_text

        atomic_write_text(self.path, "\n".join(self.lines) + "\n")
        self.path.chmod(0o755)


@contextlib.contextmanager
def _step(title: str) -> Iterator[None]:
    say(f"\n{title}")
    started = time.monotonic()
    yield
    say(f"  ({time.monotonic() - started:.1f} s)")


def _layout(workdir: Path, area: str, side: Side, task: str):
    from logitsdump.runner.config import load_model_config
    from logitsdump.runner.outputs import OutputLayout

    config = load_model_config(side.model_yaml)
    return OutputLayout(workdir / area / side.name, "CPU", task, config.data_type, config.model_name,
                        config.model_type, 1, 1)


def _evaluate(run: TaskRun, side: Side, workdir: Path, commands: Commands) -> None:
    from logitsdump.runner.evaluate import EvalOptions, run_eval

    options = EvalOptions(
        model_config_path=str(side.model_yaml),
        task_config_path=str(examples.task_config(run.task)),
        output_dir=str(workdir / "eval" / side.name),
        save_debug=True,
        device="cpu",
    )
    commands.add(["logitsdump", "eval", "--model_config_path", options.model_config_path, "--task_config_path",
                  options.task_config_path, "--output_dir", options.output_dir, "--save_debug_enable",
                  "--device", options.device])
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_eval(options)
    total = result.scores[-1]
    run.cases = total.total
    run.accuracy[side.name] = total.accuracy
    say(f"  {run.task:<16} {side.name:<6}: {total.total} cases, accuracy {total.accuracy:6.1%}  "
        f"-> {result.layout.debug_file.relative_to(workdir)}")


def _bcanalyze(run: TaskRun, golden: Side, test: Side, workdir: Path, commands: Commands) -> None:
    from logitsdump.badcase import BcanalyzeOptions, analyze

    options = BcanalyzeOptions(
        str(_layout(workdir, "eval", golden, run.task).debug_file),
        str(_layout(workdir, "eval", test, run.task).debug_file),
        str(workdir / "bcanalyze" / run.task),
    )
    commands.add(["logitsdump", "bcanalyze", "-gp", options.golden_path, "-mp", options.test_path,
                  "-o", options.output_dir])
    result = analyze(options)
    run.bad_cases = result.bad_cases if result.output_path else 0
    run.bad_case_csv = result.output_path
    where = f"-> {result.output_path.relative_to(workdir)}" if result.output_path else "(nothing to dump)"
    say(f"  {run.task:<16} {run.bad_cases} bad case(s) of {result.compared} {where}")
    say(f"  {'':<16} {result.flips.describe()}")


def _dump_all(runs: Sequence[TaskRun], golden: Side, test: Side, workdir: Path, options: DemoOptions,
              commands: Commands) -> None:
    """Every task's golden dump, then (after it, when replaying) its test dump; two processes at a time.
    Each task's lines are printed together, in task order, once its dumps are done."""
    env = _child_env()
    queue: deque[_DumpJob] = deque(_dump_job(run, golden, workdir, options, None) for run in runs)
    if not options.replay:
        queue.extend(_dump_job(run, test, workdir, options, None) for run in runs)
    running: list[_DumpJob] = []
    done: dict[str, list[_DumpJob]] = {run.task: [] for run in runs}
    shown = 0
    while queue or running:
        while queue and len(running) < PARALLEL_DUMPS:
            job = queue.popleft()
            job.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log_path, "w", encoding="utf-8") as log_file:
                job.process = subprocess.Popen(job.argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            running.append(job)
        time.sleep(0.05)
        for job in [j for j in running if j.process is not None and j.process.poll() is not None]:
            running.remove(job)
            _finish_dump(job, workdir)
            done[job.run.task].append(job)
            if options.replay and job.side is golden:
                queue.appendleft(_dump_job(job.run, test, workdir, options, job.run.logits_dirs[golden.name]))
        while shown < len(runs) and len(done[runs[shown].task]) == 2:  # the next task in order is complete
            for job in sorted(done[runs[shown].task], key=lambda j: j.side is not golden):
                commands.add(["logitsdump", *job.argv[3:]])
                say(job.line)
            shown += 1


@dataclass
class _DumpJob:
    run: TaskRun
    side: Side
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    #: what the demo prints for it, once done
    line: str = ""


def _dump_job(run: TaskRun, side: Side, workdir: Path, options: DemoOptions, replay: Path | None) -> _DumpJob:
    runner = shlex.join([
        "logitsdump", "eval", "--model_config_path", str(side.model_yaml), "--task_config_path",
        str(examples.task_config(run.task)), "--batch_size", "1", "--tp", "1", "--output_dir",
        str(workdir / "dump" / side.name), "--save_debug_enable", "--device", "cpu",
    ])
    argv = [sys.executable, "-m", "logitsdump", "dump", "-bcr", str(run.bad_case_csv), "-tr", str(options.tokens)]
    if replay is not None:
        argv += ["--replay", str(replay)]
    elif side.name == "golden" and options.control is not None:
        argv += ["--control", options.control]
    argv += ["-e", runner]
    return _DumpJob(run, side, argv, workdir / "logs" / f"dump_{run.task}_{side.name}.log")


def _finish_dump(job: _DumpJob, workdir: Path) -> None:
    status = job.process.returncode if job.process is not None else -1
    if status != 0:
        tail = job.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise UserError(f"the {job.side.name} dump of {job.run.task} failed (status {status}): {' '.join(tail)}; "
                        f"see {job.log_path}")
    folder = _layout(workdir, "dump", job.side, job.run.task).logits_dir
    job.run.logits_dirs[job.side.name] = folder
    files = len(list(folder.glob("*.pth")))
    replayed = " (replaying golden)" if "--replay" in job.argv else ""
    job.line = (f"  {job.run.task:<16} {job.side.name:<6}: {files} logits files{replayed} "
                f"-> {folder.relative_to(workdir)}")
    control = control_dir_of(folder)
    if "--control" in job.argv and control.is_dir():
        job.line += (f"\n  {job.run.task:<16} {'':<6}  its control arm: {len(list(control.glob('*.pth')))} logits "
                     f"files -> {control.relative_to(workdir)}")


def _child_env() -> dict[str, str]:
    """This environment, with this interpreter's bin folder first on PATH (so `logitsdump` is found)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _compare(run: TaskRun, golden: Side, test: Side, workdir: Path, tolerances: Path | None,
             commands: Commands) -> None:
    from logitsdump.compare import CompareOptions, run_compare

    options = CompareOptions(  # the ULP dtype: the dumps' own (their manifests), as compare without -d
        golden_path=str(run.logits_dirs[golden.name]),
        my_path=str(run.logits_dirs[test.name]),
        output_dir=str(workdir / "compare" / run.task),
        tolerances_file=tolerances,
    )
    commands.add(["logitsdump", "compare", "-gp", options.golden_path, "-mp", options.my_path, "-o",
                  options.output_dir, *(["--tolerances", str(tolerances)] if tolerances is not None else [])])
    summary = run_compare(options)
    run.compare_json = summary.cases_json_path
    run.floor = summary.reference.description if summary.reference is not None else ""
    run.verdicts = {name: count for name, count in summary.verdicts.items() if count}
    counts = ", ".join(f"{count} {name}" for name, count in run.verdicts.items()) or "no cases"
    cases = len(summary.cases)
    say(f"  {run.task:<16} {cases} case{'' if cases == 1 else 's'} ({summary.compared} token pairs): {counts} "
        f"-> {summary.csv_path.relative_to(workdir)}")


def _report(workdir: Path, runs: Sequence[TaskRun], commands: Commands) -> Path:
    from logitsdump.report import load_compares, print_summary, write_report

    sources = [run.compare_json for run in runs if run.compare_json is not None]
    commands.add(["logitsdump", "report", *(s.parent for s in sources), "-o", workdir / "report.html"])
    merged = load_compares(sources)
    path = write_report(merged, workdir / "report.html")
    say(f"  report -> {path.relative_to(workdir)}")
    say("")
    print_summary(merged)
    return path


def _print_summary(runs: Sequence[TaskRun], golden: Side, test: Side, report: Path | None, seconds: float) -> None:
    verdict_names = sorted({name for run in runs for name in run.verdicts})
    header = (f"{'task':<16} {'cases':>5} {'golden':>7} {'test':>7} {'bad':>4}  " + "  ".join(verdict_names))
    say(f"\nsummary (accuracy: golden = {golden.label}, test = {test.label})")
    say(header)
    for run in runs:
        cells = "  ".join(f"{run.verdicts.get(name, 0):>{len(name)}}" for name in verdict_names)
        say(f"{run.task:<16} {run.cases:>5} {run.accuracy.get(golden.name, 0):>7.1%} "
            f"{run.accuracy.get(test.name, 0):>7.1%} {run.bad_cases:>4}  {cells}")
    say(f"\ndone in {seconds:.0f} s.")
    if report is not None:
        say(f"open the report: {report}")
