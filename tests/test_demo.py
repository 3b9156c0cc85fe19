"""`logitsdump demo`: the whole flow on the embedded default, as a user runs it."""

from __future__ import annotations

import pytest

from logitsdump.demo.run import DemoOptions, run_demo

from helpers import run_cli

pytestmark = pytest.mark.slow  # both run the demo on the tiny model


def test_demo_command_runs_the_whole_flow(tmp_path):
    workdir = tmp_path / "demo"
    done = run_cli("demo", "--workdir", str(workdir))
    assert done.returncode == 0, done.stderr[-3000:]
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "summary", "open the report"):
        assert step in done.stdout
    report = workdir / "report.html"
    assert report.is_file() and "<svg" in report.read_text(encoding="utf-8")
    assert "(replaying golden)" in done.stdout
    assert "its control arm:" in done.stdout and "judged against the control arm" in done.stdout
    assert list((workdir / "dump" / "test").rglob("manifest.jsonl"))
    again = run_cli("demo", "--workdir", str(workdir))
    assert again.returncode == 1 and "not an empty folder" in again.stderr


def test_free_running_demo_shows_first_divergences(tmp_path, capsys):
    result = run_demo(DemoOptions(workdir=str(tmp_path / "free"), tasks=("mmlu_zero_shot",), replay=False))
    counts = result.verdict_counts()
    assert sum(counts.values()) > 0
    assert set(counts) <= {"identical", "consistent", "tie-flip", "divergent", "incomplete"}  # free-run verdicts
    assert result.report is not None and result.report.is_file()
    assert "replaying" not in capsys.readouterr().out
