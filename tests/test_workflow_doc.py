"""docs/workflow.md's two-machine walkthrough runs as written (issue 30).

The commands come from the doc itself (`scripts/walkthrough.py` extracts its ```bash blocks), two folders
stand for the two machines, and a stand-in `scp` copies between them: a path the doc names that the tools
do not write, or a flag they refuse, fails here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _walkthrough():
    spec = importlib.util.spec_from_file_location("walkthrough", ROOT / "scripts" / "walkthrough.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("walkthrough", module)  # its dataclasses look their module up
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_the_doc_has_a_block_per_stage_on_each_machine():
    blocks = _walkthrough().walkthrough_blocks()
    assert [b.host for b in blocks] == ["golden-host", "test-host", "golden-host", "test-host"]
    commands = " ".join(b.text for b in blocks)
    for stage in ("logitsdump eval", "logitsdump bcanalyze", "logitsdump dump", "--replay", "logitsdump compare",
                  "logitsdump report"):
        assert stage in commands, stage


@pytest.mark.slow
def test_the_walkthrough_runs_as_written_and_ends_in_a_report(tmp_path):
    from helpers import cli_env

    walkthrough = _walkthrough()
    ran, copies = walkthrough.run_walkthrough(tmp_path / "machines", env=cli_env())
    assert len(ran) == 4
    report = tmp_path / "machines" / "test-host" / "out" / "compare" / "report.html"
    assert report.is_file() and report.stat().st_size > 10_000
    # the files that travel: golden's debug CSV, bcanalyze's folder back, golden's logits folder
    assert [(c.host, c.dest) for c in copies] == [
        ("test-host", "work/golden_debug_info.csv"), ("golden-host", "work/bad_cases"),
        ("test-host", "work/golden_logits")]
    assert all(c.bytes > 0 for c in copies)
    # the replayed side compared every step of every bad case on golden's prefix
    cases = json.loads(next((tmp_path / "machines" / "test-host" / "out" / "compare").glob(
        "*cases*.json")).read_text(encoding="utf-8"))["cases"]
    assert cases and all(case.get("replay_mode") for case in cases)
    # each stage printed the next command with the real paths
    assert "logitsdump dump" in ran[1].stdout and "bad_cases" in ran[1].stdout
