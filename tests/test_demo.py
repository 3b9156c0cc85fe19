"""`logitsdump demo`: the whole flow on the embedded default, as a user runs it."""

from __future__ import annotations

import subprocess

import pytest

from logitsdump.demo.run import COMMANDS_NAME, DEMO_TASKS, DemoOptions, run_demo

from helpers import cli_env, run_cli

pytestmark = pytest.mark.slow  # both run the demo on the tiny model


def test_demo_command_runs_the_whole_flow(tmp_path):
    workdir = tmp_path / "demo"
    done = run_cli("demo", "-o", str(workdir))
    assert done.returncode == 0, done.stderr[-3000:]
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "summary", "open the report"):
        assert step in done.stdout
    report = workdir / "report.html"
    assert report.is_file() and "<svg" in report.read_text(encoding="utf-8")
    assert "(replaying golden)" in done.stdout
    assert "its control arm:" in done.stdout and "judged against the control arm" in done.stdout
    assert list((workdir / "dump" / "test").rglob("manifest.jsonl"))
    # step 3: each task's two lines together, in the demo's task order (the dumps run two at a time)
    step3 = [line for line in done.stdout[done.stdout.index("[3/5]"):done.stdout.index("[4/5]")].splitlines()[1:-2]
             if "its control arm" not in line]
    assert [line.split()[0] for line in step3] == [task for task in DEMO_TASKS for _ in range(2)]
    assert [line.split()[1].rstrip(":") for line in step3] == ["golden", "test"] * len(DEMO_TASKS)
    # the commands it ran, as a script: every stage's command; its compare and report lines run as written
    script = workdir / COMMANDS_NAME
    assert f"the commands it ran: {script}" in done.stdout
    text = script.read_text(encoding="utf-8")
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    lines = [line for line in text.splitlines() if line.startswith("logitsdump ")]
    assert [line.split()[1] for line in lines] == (["eval"] * 8 + ["bcanalyze"] * 4 + ["dump"] * 8 + ["compare"] * 4
                                                   + ["report"])
    assert sum("--replay" in line for line in lines) == 4
    last = text[text.index("# 4."):]
    rerun = subprocess.run(["sh", "-e", "-c", last], capture_output=True, text=True, env=cli_env(), check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(list((workdir / "compare" / "boolq").glob("logits_cmp_cases_*.json"))) == 2
    again = run_cli("demo", "--workdir", str(workdir))
    assert again.returncode == 1 and "not an empty folder" in again.stderr


def test_free_running_demo_shows_first_divergences(tmp_path, capsys):
    result = run_demo(DemoOptions(workdir=str(tmp_path / "free"), tasks=("mmlu_zero_shot",), replay=False))
    counts = result.verdict_counts()
    assert sum(counts.values()) > 0
    assert set(counts) <= {"identical", "consistent", "tie-flip", "divergent", "incomplete"}  # free-run verdicts
    assert result.report is not None and result.report.is_file()
    assert "replaying" not in capsys.readouterr().out
