"""`logitsdump bcanalyze`: the installed command, as msit's `msit llm bcanalyze`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import BCANALYZE_EXPECTED, GOLDEN_CSV, RESULT_HEADER, TEST_CSV


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "logitsdump", "bcanalyze", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    golden, test = tmp_path / "golden.csv", tmp_path / "test.csv"
    golden.write_text(GOLDEN_CSV)
    test.write_text(TEST_CSV)
    return golden, test


def test_default_folder_and_msit_output(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    golden, test = inputs
    result = run(tmp_path, "-gp", str(golden), "-mp", str(test))
    assert result.returncode == 0, result.stderr
    files = list((tmp_path / "msit_bad_case" / "analyzer").iterdir())
    assert len(files) == 1 and re.fullmatch(r"msit_bad_case_result_\d{14}\.csv", files[0].name)
    assert files[0].read_bytes() == BCANALYZE_EXPECTED.encode()
    assert "2 bad case(s) of 3 compared" in result.stdout and str(files[0].name) in result.stdout
    # key 1 fail->pass, key 2 pass->fail, key 3 passes on both: balanced, p = 1
    assert ("golden passed 2/3, test 2/3; flips pass->fail 1, fail->pass 1, McNemar exact p = 1"
            in result.stdout)


def test_output_dir_and_no_overwrite(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    golden, test = inputs
    for _ in range(2):
        assert (
            run(tmp_path, "--golden-path", str(golden), "--my-path", str(test), "-o", "out").returncode == 0
        )
    files = sorted((tmp_path / "out").iterdir())
    assert len(files) == 2 and all(f.read_bytes() == BCANALYZE_EXPECTED.encode() for f in files)


def test_no_difference(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    golden, _ = inputs
    result = run(tmp_path, "-gp", str(golden), "-mp", str(golden), "-o", "out")
    assert result.returncode == 0 and "no difference" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_keys_are_warned(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    golden, _ = inputs
    test = tmp_path / "short.csv"
    test.write_text(RESULT_HEADER + "2,q2,[9],[10],b,a,False\n")
    result = run(tmp_path, "-gp", str(golden), "-mp", str(test), "-o", "out")
    assert result.returncode == 0
    assert "2 golden case(s) not found" in result.stderr and "keys 1, 3" in result.stderr


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("test.txt", TEST_CSV, "not a .csv file"),
        ("missing.csv", None, "does not exist"),
        ("test.csv", "key,queries\n1,q\n", "has no 'passed' column"),
        ("test.csv", "queries,pass\nq,True\n", "has no 'key' column"),
        ("test.csv", "", "empty (0 bytes)"),
    ],
)
def test_bad_input(
    tmp_path: Path, inputs: tuple[Path, Path], name: str, text: str | None, message: str
) -> None:
    golden, _ = inputs
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    result = run(tmp_path, "-gp", str(golden), "-mp", str(path))
    assert result.returncode == 1 and message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_flag_is_usage_error(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    assert run(tmp_path, "-gp", str(inputs[0])).returncode == 2
