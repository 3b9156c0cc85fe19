"""`logitsdump compare` / `logitscmp` on the command line: flags, exit codes, summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from logitsdump.cli import main


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    golden, mine = tmp_path / "golden", tmp_path / "mine"
    golden.mkdir()
    mine.mkdir()
    values = torch.as_tensor(np.linspace(-3.0, 5.0, 16, dtype=np.float32)).reshape(1, -1)
    for name in ("logits_boolq_1_0.pth", "logits_boolq_1_1.pth"):
        torch.save(values, golden / name)
        torch.save(values, mine / name)
    torch.save(values, golden / "logits_boolq_2_0.pth")
    return golden, mine


@pytest.mark.parametrize("command", ["compare", "logitscmp"])
def test_runs_and_prints_a_summary(tmp_path: Path, capsys, command: str) -> None:
    golden, mine = _dirs(tmp_path)
    out = tmp_path / "out"
    assert main([command, "-gp", str(golden), "-mp", str(mine), "-o", str(out), "-d", "bf16"]) == 0
    text = capsys.readouterr().out
    assert "identical 1" in text and "incomplete 1" in text
    assert "token pairs: 3 (against msit's per-token thresholds: passed 2, failed 0, NA 1)" in text
    assert len(list(out.glob("logits_cmp_res_*.csv"))) == 1
    assert len(list(out.glob("logits_cmp_cases_*.json"))) == 1


@pytest.mark.parametrize(
    "flags",
    [["-cs", "1.5"], ["-cs", "-2"], ["-kl", "-0.1"], ["-kl", "nan"], ["-l1", "-1.5"], ["-d", "int8"],
     ["--topk", "0"], ["--tie-tolerance", "-1"], ["-cs", "abc"]],
)
def test_range_errors_exit_2(tmp_path: Path, capsys, flags: list[str]) -> None:
    golden, mine = _dirs(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["compare", "-gp", str(golden), "-mp", str(mine), "-o", str(tmp_path / "out"), *flags])
    assert info.value.code == 2
    assert "error: argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_boundary_values_are_accepted(tmp_path: Path) -> None:
    golden, mine = _dirs(tmp_path)
    args = ["compare", "-gp", str(golden), "-mp", str(mine), "-o", str(tmp_path / "out")]
    assert main([*args, "-cs", "-1", "-kl", "0", "-l1", "-1", "--tie-tolerance", "0"]) == 0


def test_missing_or_file_path_exits_1(tmp_path: Path, capsys) -> None:
    golden, _ = _dirs(tmp_path)
    file = golden / "logits_boolq_1_0.pth"
    for args in (["-gp", str(golden), "-mp", str(tmp_path / "nope")], ["-gp", str(file), "-mp", str(golden)]):
        assert main(["compare", *args, "-o", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "logitsdump compare: error:" in err


def test_compare_itself_does_not_import_torch(tmp_path: Path) -> None:
    golden, mine = _dirs(tmp_path)
    code = (
        "import sys\n"
        "from logitsdump.cli import main\n"
        f"main(['compare', '-gp', {str(golden)!r}, '-mp', {str(mine)!r}, '-o', {str(tmp_path / 'o')!r}])\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


def test_installed_command(tmp_path: Path) -> None:
    golden, mine = _dirs(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "logitsdump", "logitscmp", "-gp", str(golden), "-mp", str(mine),
         "-o", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "results:" in result.stdout


def test_topk_larger_than_the_vocabulary_is_bounded_by_it(tmp_path: Path, capsys) -> None:
    import csv

    from logitsdump.store import write_vocab

    golden, mine = _dirs(tmp_path)
    write_vocab(golden, [f"t{i}" for i in range(16)])
    out = tmp_path / "out"
    assert main(["compare", "-gp", str(golden), "-mp", str(mine), "-o", str(out), "--topk", "128256"]) == 0
    err = capsys.readouterr().err
    assert "--topk 128256 is larger than the vocabulary (16 tokens in vocab.json): using 16" in err
    with open(next(out.glob("logits_cmp_res_*.csv")), newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["topk_overlap"] != "NA"]
    assert rows and all(r["topk_overlap"] == "1.0" for r in rows)  # the whole vocabulary: full overlap
