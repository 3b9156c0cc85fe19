# ruff: noqa: E501  (the coverage table in the docstring)
"""Formula-like text (`=`, `+`, `-`, `@`, tab, CR at the start) in every CSV we write is neutralised:
eval's debug and result CSVs, bcanalyze's output, compare's row and case CSVs.

Already covered elsewhere:
| case | covered by |
|---|---|
| csvsafe.neutralise on each start character, numbers left alone | tests/test_fsutil.py::test_neutralise |
| bcanalyze: `=HYPERLINK(...)` in queries | tests/test_badcase.py::test_formula_cells_are_neutralised |
| compare: `=HYPERLINK(x)` subject and `=cmd_1;2_3_0.pth` (msit §5.6) | tests/test_compare.py::test_formula_file_names_are_neutralised |
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from logitsdump.badcase import bcanalyze
from logitsdump.cli import main
from logitsdump.demo import examples
from logitsdump.runner import outputs
from logitsdump.store import write_vocab

FORMULAS = ("=HYPERLINK(\"http://x\",\"y\")", "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)*cmd",
            "\t=1+1", "\r=1+1")


def assert_inert(path: Path) -> list[list[str]]:
    """No cell of `path` starts like a formula unless it is a plain number."""
    rows = list(csv.reader(path.open(encoding="utf-8", newline="")))
    for row in rows:
        for cell in row:
            if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                float(cell)  # numbers such as -0.5 stay numbers; anything else fails here
    return rows


@pytest.mark.slow
def test_eval_debug_and_result_csvs(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    subject = "=HYPERLINK(1).jsonl"
    (data / subject).write_text("".join(json.dumps({"question": f, "answer": "#### 1"}) + "\n" for f in FORMULAS))
    task = tmp_path / "t.yaml"
    task.write_text(f"task_name: gsm8k\nlocal_dataset_path: {data}\nrequested_max_output_length: 2\n"
                    f"subject_mapping:\n  {json.dumps(subject)}: {{}}\n")
    assert main(["eval", "--model_config_path", str(examples.model_config("fp32")), "--task_config_path",
                 str(task), "--output_dir", str(tmp_path / "out"), "--save_debug_enable", "--device", "cpu"]) == 0
    debug = next((tmp_path / "out").glob("debug/**/*_debug_info.csv"))
    rows = assert_inert(debug)
    assert [row[1] for row in rows[1:]] == ["'" + f for f in FORMULAS]
    result = next((tmp_path / "out").glob("results/**/*_result.csv"))
    assert "'" + subject in result.read_text()
    assert_inert(result)


def test_eval_outputs_written_by_the_model(tmp_path: Path) -> None:
    """Generated text, extracted answers and references are model/dataset text: neutralised too."""
    layout = outputs.OutputLayout(tmp_path, "CPU", "gsm8k", "fp32", "m", "pa", 1, 1)
    outcomes = [outputs.CaseOutcome(str(i), "s", "q", (1,), (2,), f, f, f, False, "False")
                for i, f in enumerate(FORMULAS)]
    outputs.write_debug_csv(layout, outcomes)
    rows = assert_inert(layout.debug_file)
    assert {row[4] for row in rows[1:]} == {"'" + f for f in FORMULAS}


def test_bcanalyze_every_column(tmp_path: Path) -> None:
    header = ["key", "queries", "input_token_ids", "output_token_ids", "test_result", "golden_result", "pass"]
    for name, verdict in (("g.csv", "True"), ("t.csv", "False")):
        with (tmp_path / name).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_ALL)  # else a lone CR splits rows
            writer.writerow(header)
            writer.writerows([i, f, f, f, "x", "y", verdict] for i, f in enumerate(FORMULAS))
    path = bcanalyze(tmp_path / "g.csv", tmp_path / "t.csv", tmp_path / "out")
    rows = assert_inert(path)
    assert len(rows) == 1 + len(FORMULAS) and rows[1][1:5] == ["'" + FORMULAS[0]] * 4


def test_bcanalyze_matches_our_neutralised_queries_with_raw_ones(tmp_path: Path) -> None:
    """A golden debug CSV from modeltest (raw `-x` query) and a test one from us (`'-x`) are the same case."""
    (tmp_path / "g.csv").write_text("key,queries,pass\n1,-ism -- a passage,True\n")
    (tmp_path / "t.csv").write_text("key,queries,pass\n1,'-ism -- a passage,False\n")
    path = bcanalyze(tmp_path / "g.csv", tmp_path / "t.csv", tmp_path / "out")
    assert path is not None and len(assert_inert(path)) == 2


@pytest.mark.parametrize("start", ["=", "+", "-", "@"])
def test_compare_row_and_case_csvs(tmp_path: Path, start: str) -> None:
    golden, mine = tmp_path / "golden", tmp_path / "mine"
    logits = np.zeros(8, dtype=np.float32)
    logits[3] = 5.0
    for folder in (golden, mine):
        folder.mkdir()
        torch.save(torch.from_numpy(logits).unsqueeze(0), folder / f"logits_{start}cmd_1_0.pth")
        torch.save(torch.from_numpy(logits).unsqueeze(0), folder / f"{start}1+1_2_0.pth")
        write_vocab(folder, [f"{start}tok{i}" for i in range(8)])
    (mine / f"{start}only_7_0.pth").write_bytes(b"")
    assert main(["compare", "-gp", str(golden), "-mp", str(mine), "-o", str(tmp_path / "out")]) == 0
    rows = assert_inert(next((tmp_path / "out").glob("logits_cmp_res_*.csv")))
    assert f"'{start}only_7_0.pth" in {row[0] for row in rows}
    cases = assert_inert(next((tmp_path / "out").glob("logits_cmp_cases_*.csv")))
    assert any(row[0] == f"'{start}cmd" for row in cases)
