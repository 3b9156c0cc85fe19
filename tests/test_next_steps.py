"""Stable names for the next step: each stage prints the next command with the real paths, `-bcr` takes
bcanalyze's output folder, `-o/--output-dir` works in every command, and every `--help` shows an example."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from logitsdump.badcase import resolve_bad_case_csv
from logitsdump.cli import build_parser, main
from logitsdump.cli_examples import EXAMPLES
from logitsdump.errors import DataError

from helpers import GOLDEN_CSV, TEST_CSV, fake_programs, fake_record

COMMANDS = ("eval", "bcanalyze", "dump", "compare", "calibrate", "report", "demo", "examples")


def _cli(cwd: Path, *args: str, path: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAD_CASE", "LOGITS", "FAKE_"))}
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return subprocess.run([sys.executable, "-m", "logitsdump", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def _results(folder: Path, *stamps: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, stamp in enumerate(stamps):
        path = folder / f"msit_bad_case_result_{stamp}.csv"
        path.write_text(f"key,passed_golden,passed_test\n{i + 1},true,false\n", encoding="utf-8")
        paths.append(path)
    return paths


def test_bcr_takes_the_newest_result_of_a_folder(tmp_path: Path) -> None:
    """By the time stamp in the name and then the _N suffix, not by the order on disk or mtime."""
    older, newest, same_second = _results(tmp_path / "bad", "20260101120000", "20260102080000",
                                          "20260102080000_2")
    (tmp_path / "bad" / "notes.csv").write_text("key\n9\n", encoding="utf-8")
    assert resolve_bad_case_csv(tmp_path / "bad") == (same_second, 3)
    assert resolve_bad_case_csv(older) == (older, 1)  # a file is taken as given
    same_second.unlink()
    assert resolve_bad_case_csv(tmp_path / "bad") == (newest, 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no msit_bad_case_result_<timestamp>\.csv in this folder"):
        resolve_bad_case_csv(tmp_path / "empty")


def test_dump_with_the_bcanalyze_folder_says_which_file(tmp_path: Path) -> None:
    fake = fake_programs(tmp_path / "bin", "modeltest")
    _, newest = _results(tmp_path / "bad_cases", "20260101120000", "20260102080000")
    done = _cli(tmp_path, "dump", "-e", "modeltest --batch_size 1", "-bcr", "bad_cases", "-tr", "3", path=fake)
    assert done.returncode == 0, done.stderr
    assert f"-bcr bad_cases: the newest of its 2 bad-case file(s): {newest.relative_to(tmp_path)}" in done.stdout
    assert fake_record(fake)["BAD_CASE_LIST"] == "[2]"  # the newest file's key
    empty = _cli(tmp_path, "dump", "-e", "modeltest", "-bcr", "bin", path=fake)
    assert empty.returncode == 1 and "no msit_bad_case_result_<timestamp>.csv" in empty.stderr
    assert empty.stderr.count("\n") == 1  # one line, no traceback


def test_dump_o_is_the_runners_output_dir_and_prints_the_compare(tmp_path: Path) -> None:
    """`dump -o DIR -e CMD`: the runner gets --output_dir DIR; the next line names the folder it wrote."""
    fake = fake_programs(tmp_path / "bin", "modeltest")
    _results(tmp_path / "bad_cases", "20260101120000")
    done = _cli(tmp_path, "dump", "-e", "modeltest --batch_size 1", "-bcr", "bad_cases", "-tr", "2", "-o", "out",
                path=fake, FAKE_MODE="write")
    assert done.returncode == 0, done.stderr
    assert fake_record(fake)["argv"][-2:] == ["--output_dir", "out"]
    folder = tmp_path / "out/data/CPU/precision_test/boolq/fp32/fake/logits"
    assert f"logits folder: {folder} (1 cases, 2 files)" in done.stdout
    # a real modeltest's folder (no manifest) cannot be replayed: the test device's dump runs free too
    assert "free-running as this one (a folder without a manifest, e.g. modeltest's, cannot be replayed)" in done.stdout
    assert "--replay" not in done.stdout
    assert f"logitsdump compare -gp {folder} -mp <the test dump's logits folder> -o out/compare" in done.stdout
    clash = _cli(tmp_path, "dump", "-e", "modeltest --output_dir elsewhere", "-bcr", "bad_cases", "-o", "out",
                 path=fake)
    assert clash.returncode == 2 and "-o out and the runner's --output_dir elsewhere differ" in clash.stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("spelling", ["-o", "--output-dir"])
def test_every_command_takes_o(command: str, spelling: str) -> None:
    required = {
        "eval": ["--model_config_path", "m.yaml", "--task_config_path", "t.yaml"],
        "bcanalyze": ["-gp", "a.csv", "-mp", "b.csv"],
        "dump": ["-e", "modeltest", "-bcr", "bad_cases"],
        "compare": ["-gp", "a", "-mp", "b"],
        "calibrate": ["-gp", "a", "-mp", "b"],
        "report": ["compare"],
    }.get(command, [])
    args = build_parser().parse_args([command, *required, spelling, "DIR"])
    assert (args.workdir if command == "demo" else args.output_dir) == "DIR"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_shows_an_example_that_parses(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert f"example (docs/workflow.md walks through the workflow):\n  {EXAMPLES[command]}\n" in text
    words = shlex.split(EXAMPLES[command])
    assert words[0] == "logitsdump" and words[1] == command
    build_parser().parse_args(words[1:])  # the example's flags exist (argparse exits 2 otherwise)


@pytest.mark.parametrize("command", ["demo", "examples"])
def test_demo_and_examples_have_a_description(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "docs/workflow.md" in capsys.readouterr().out.split("options:")[0]


def test_bcanalyze_prints_the_dump_with_its_folder(tmp_path: Path) -> None:
    (tmp_path / "golden.csv").write_text(GOLDEN_CSV)
    (tmp_path / "test.csv").write_text(TEST_CSV)
    done = _cli(tmp_path, "bcanalyze", "-gp", "golden.csv", "-mp", "test.csv", "-o", "bad_cases")
    assert done.returncode == 0, done.stderr
    assert "logitsdump dump -e" in done.stdout and " -bcr bad_cases -tr 10" in done.stdout
    assert "--replay" in done.stdout


def test_compare_prints_the_report_of_its_folder(tmp_path: Path, capsys) -> None:
    for side in ("golden", "mine"):
        (tmp_path / side).mkdir()
        torch.save(torch.as_tensor(np.linspace(-3.0, 5.0, 16, dtype=np.float32)).reshape(1, -1),
                   tmp_path / side / "logits_boolq_1_0.pth")
    out = tmp_path / "cmp dir"
    assert main(["compare", "-gp", str(tmp_path / "golden"), "-mp", str(tmp_path / "mine"), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"next: logitsdump report {shlex.quote(str(out))}"
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"open in a browser: {(out / 'report.html').as_uri()}"
