"""`logitsdump eval` end to end on the embedded tiny model (real model, real files)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from logitsdump.demo import examples
from logitsdump.runner.evaluate import run_eval
from logitsdump.runner.outputs import DEBUG_COLUMNS
from logitsdump.runner.tasks import get_task

from helpers import eval_options, task_table_rows

TASKS = examples.shipped_task_names()
#: The supported rows of docs/tasks.md's table of modeltest's tasks: each is evaluated below.
SUPPORTED_ROWS = [row for row in task_table_rows() if row.supported]


def evaluate(tmp_path: Path, task: str, dtype: str = "fp32", batch_size: int = 1):
    return run_eval(eval_options(tmp_path, task, dtype, batch_size=batch_size, save_debug=True))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_task_is_shipped():
    assert set(TASKS) >= {
        "boolq", "gsm8k", "mmlu_few_shots", "mmlu_zero_shot", "ceval_few_shots", "ceval_zero_shot", "humaneval",
    }


@pytest.mark.slow
@pytest.mark.parametrize("row", SUPPORTED_ROWS, ids=lambda row: row.id)
def test_full_evaluation_writes_modeltest_files(tmp_path, row):
    """Every task docs/tasks.md says is supported runs its sample YAML on the sample data."""
    result = evaluate(tmp_path, Path(row.sample_yaml).stem)
    task = row.task_name  # boolq_edge.yaml runs task boolq, and its folders are named so
    base = Path("CPU/precision_test") / task / "fp32" / "tiny_llama"
    debug = tmp_path / "debug" / base / f"{task}_pa_batch1_tp1_debug_info.csv"
    assert debug == result.layout.debug_file and debug.is_file()
    assert (tmp_path / "results" / base / f"{task}_pa_batch1_tp1_result.csv").is_file()
    rows = read_csv(debug)
    assert tuple(rows[0]) == DEBUG_COLUMNS
    assert len(rows) == len(result.outcomes) >= 5
    for row in rows:
        assert row["input_token_ids"].startswith("[") and row["output_token_ids"].startswith("[")
    if task == "humaneval":
        bad = read_csv(result.layout.bad_case_file)
        assert [r["key"] for r in bad] == [f"HumanEval/{i}" for i in range(len(bad))]
        assert {r["passed"] for r in bad} <= {"True", "False"}
    elif task == "humanevalx":  # keys CPP/N, Go/N, ...: checked in test_humanevalx.py
        assert [r["key"] for r in rows] == [r["key"] for r in read_csv(result.layout.bad_case_file)]
    else:
        assert [r["key"] for r in rows] == [str(i) for i in range(len(rows))]
    total = read_csv(result.layout.result_file)[-1]
    assert total["subject"] == "total" and int(total["total"]) == len(rows)
    assert {r["pass"] for r in rows} <= {*get_task(task).pass_labels, "NotJudged"}


@pytest.mark.slow
def test_fp32_and_bf16_disagree_on_some_cases(tmp_path):
    differing = 0
    for task in ("boolq", "mmlu_few_shots", "gsm8k"):
        golden = evaluate(tmp_path / "fp32", task, "fp32").outcomes
        test = evaluate(tmp_path / "bf16", task, "bf16").outcomes
        assert [o.key for o in golden] == [o.key for o in test]
        differing += sum(g.pass_label != t.pass_label for g, t in zip(golden, test, strict=True))
    assert differing > 0


@pytest.mark.slow
def test_batches_match_single_queries(tmp_path):
    single = evaluate(tmp_path / "bs1", "mmlu_zero_shot", batch_size=1)
    batched = evaluate(tmp_path / "bs4", "mmlu_zero_shot", batch_size=4)
    assert batched.layout.debug_file.name == "mmlu_zero_shot_pa_batch4_tp1_debug_info.csv"
    assert [o.key for o in single.outcomes] == [o.key for o in batched.outcomes]
    assert [o.input_token_ids for o in single.outcomes] == [o.input_token_ids for o in batched.outcomes]
    same = sum(a.output_token_ids == b.output_token_ids for a, b in zip(single.outcomes, batched.outcomes, strict=True))
    # left padding changes matmul shapes, which may flip a near-tie in fp32; the rest must agree
    assert same >= 0.8 * len(single.outcomes)
