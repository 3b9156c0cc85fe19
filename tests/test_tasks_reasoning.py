"""AIME 2024 and GPQA: reading their files, queries, answer extraction, evaluation, dump and replay."""

from __future__ import annotations

import csv
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from logitsdump import store
from logitsdump.demo import examples
from logitsdump.errors import DataError
from logitsdump.runner.config import load_task_config, resolve_dataset_root
from logitsdump.runner.evaluate import EvalOptions, run_eval
from logitsdump.runner.tasks import get_task
from logitsdump.runner.tasks.aime2024 import INSTRUCTION, extract_answer
from logitsdump.runner.tasks.base import Case, Generation, pass_label
from logitsdump.runner.tasks.gpqa import arrange, extract_letter

TASKS = ("aime2024", "gpqa")
MODELTEST_YAMLS = Path(__file__).resolve().parent / "data" / "modeltest"  # MindIE-LLM's files, verbatim


def load(name, **changes):
    config = replace(load_task_config(examples.task_config(name)), **changes)
    return config, get_task(name).load_cases(config, resolve_dataset_root(config))


def gen(text: str) -> Generation:
    return Generation(input_ids=(1,), output_ids=(), text=text)


# --- AIME 2024 ---------------------------------------------------------------------------------------


def test_aime_cases_from_the_parquet_file():
    config, cases = load("aime2024")
    assert config.subjects == ["aime_2024_problems.parquet"]
    assert [c.key for c in cases] == [str(i) for i in range(8)]
    assert cases[1].query == (
        "Let $S$ be the sum of all positive divisors of $2024$. Find the remainder when $S$ is divided by "
        "$1000$.\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert cases[1].query.endswith(INSTRUCTION) and cases[1].reference == 320
    assert cases[0].data == {"row": 1, "id": "sample-1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{204}.", "204"),
        ("We get 12.\nThen \\boxed{1,234} is it", "1234"),  # the box keeps the last line
        ("We get 12.\nThen 99 and the text was cut", "12."),  # no box: the last line is dropped
        ("The answer is +7", "7"),  # one line, no box: nothing is dropped
        ("\\boxed{-3.50}", "-3.50"),
        ("\\boxed{12}, found in 2 steps", "2"),  # modeltest's rule: the last number, even after the box
        ("no digits here", None),
        ("", None),
    ],
)
def test_aime_answer_extraction(text, expected):
    assert extract_answer(text) == expected


def test_aime_judge():
    task = get_task("aime2024")
    case = Case(0, "aime_2024_problems.parquet", "0", "q", 320)
    right = task.judge(case, gen("  Sum is 4320, mod 1000: \\boxed{320}"), None)
    assert (right.passed, right.test_result, right.golden_result) == (True, "Sum is 4320, mod 1000: \\boxed{320}", 320)
    assert pass_label(task, right.passed) == "True"
    assert task.judge(case, gen("\\boxed{320.00001}"), None).passed is True  # within 1e-4
    assert task.judge(case, gen("It is 320.\nand then"), None).passed is True  # "320." as modeltest reads it
    assert task.judge(case, gen("\\boxed{321}"), None).passed is False
    empty = task.judge(case, gen(""), None)
    assert (empty.passed, empty.test_result) == (False, "-1")


def test_aime_bad_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = replace(load_task_config(examples.task_config("aime2024")))
    task = get_task("aime2024")
    path = tmp_path / "aime_2024_problems.parquet"
    pq.write_table(pa.table({"Problem": ["p"]}), path)
    with pytest.raises(DataError, match="missing column 'Answer'"):
        task.load_cases(config, tmp_path)
    pq.write_table(pa.table({"Problem": ["p", " "], "Answer": [1, 2]}), path)
    with pytest.raises(DataError, match=r"row 2: 'Problem' must be a non-empty text"):
        task.load_cases(config, tmp_path)
    path.write_text("Problem,Answer\np,1\n")
    with pytest.raises(DataError, match="not a readable parquet file"):
        task.load_cases(config, tmp_path)
    path.unlink()
    with pytest.raises(DataError, match="dataset file not found"):
        task.load_cases(config, tmp_path)


def test_aime_without_pyarrow_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"needs pyarrow; pip install pyarrow") as info:
        load("aime2024")
    assert "\n" not in str(info.value)


# --- GPQA --------------------------------------------------------------------------------------------


def test_gpqa_options_rotate_as_modeltest():
    incorrect = ("w1", "w2", "w3")
    assert arrange(0, "ok", incorrect) == (("ok", "w1", "w2", "w3"), "A")
    assert arrange(1, "ok", incorrect) == (("w1", "w2", "w3", "ok"), "D")
    assert arrange(2, "ok", incorrect) == (("w2", "w3", "ok", "w1"), "C")
    assert arrange(3, "ok", incorrect) == (("w3", "ok", "w1", "w2"), "B")
    assert arrange(4, "ok", incorrect) == arrange(0, "ok", incorrect)


def test_gpqa_cases_and_query():
    config, cases = load("gpqa")
    assert config.subjects == ["diamond"] and {c.subject for c in cases} == {"diamond"}
    assert [c.reference for c in cases] == ["A", "D", "C", "B"] * 2
    assert cases[0].query == (
        "What is the correct answer to this question: Which gas makes up most of the air at sea level?\n"
        "Choices:\n(A)Nitrogen\n(B)Oxygen\n(C)Argon\n(D)Carbon dioxide\n"
        'Format your response as follows: "The correct answer is (insert answer here)"'
    )
    assert "(D)The mitochondrion" not in cases[2].query and "(C)The mitochondrion" in cases[2].query
    assert cases[0].data == {"line": 2, "file": "gpqa_diamond.csv"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The correct answer is (C)", "C"),
        ("After some thought, the answer is **B**.", "B"),
        ("Answer: D", "D"),
        ("The correct answer is: \\boxed{D}", "D"),
        ("答案是B", "B"),
        ("A不对，只有B是对的", "B"),  # modeltest's glued pattern would fall through to the first letter, A
        ("I think (A) or maybe not", "A"),
        ("no letter here", ""),
        ("", ""),
    ],
)
def test_gpqa_letter_extraction(text, expected):
    assert extract_letter(text) == expected


def test_gpqa_judge():
    task = get_task("gpqa")
    case = Case(0, "diamond", "0", "q", "C")
    verdict = task.judge(case, gen("The correct answer is (C)"), None)
    assert (verdict.passed, verdict.test_result, verdict.golden_result) == (True, "C", "C")
    assert pass_label(task, verdict.passed) == "Correct"
    assert pass_label(task, task.judge(case, gen("nothing"), None).passed) == "Wrong"


def test_gpqa_short_rows_are_refused(tmp_path):
    config = load_task_config(examples.task_config("gpqa"))
    path = tmp_path / "gpqa_diamond.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match=r"gpqa_diamond\.csv, line 1: expected at least 12 columns, found 3"):
        get_task("gpqa").load_cases(config, tmp_path)


@pytest.mark.parametrize(("name", "file"), [("aime2024", "aime_2024_problems.parquet"), ("gpqa", "gpqa_diamond.csv")])
def test_modeltest_aime_and_gpqa_yaml_read_the_sample_in_modeltest_layout(tmp_path, monkeypatch, caplog, name, file):
    """modeltest's own YAML (32768 new tokens: too long to run here) finds data/<name>/<file> and builds
    the same cases as our sample YAML, but for gpqa's prompt: single-quoted there, its \\n stay two characters."""
    shutil.copytree(examples.DATASETS / name, tmp_path / "data" / name)
    assert (tmp_path / "data" / name / file).is_file()
    monkeypatch.chdir(tmp_path)
    theirs = load_task_config(MODELTEST_YAMLS / f"{name}.yaml")
    assert theirs.requested_max_output_length == 32768
    ours = load_task_config(examples.task_config(name))
    task = get_task(theirs.task_name)
    their_cases = task.load_cases(theirs, resolve_dataset_root(theirs))
    our_cases = task.load_cases(ours, resolve_dataset_root(ours))
    assert [c.reference for c in their_cases] == [c.reference for c in our_cases]
    assert [c.subject for c in their_cases] == [c.subject for c in our_cases]
    assert [c.query.replace("\\n", "\n") for c in their_cases] == [c.query for c in our_cases]
    assert all(("\\n" in c.query) == (name == "gpqa") for c in their_cases)
    assert ("the prompt holds a backslash and an n" in caplog.text) == (name == "gpqa")


# --- evaluation, dump and replay through the tiny model ----------------------------------------------


def options(folder, task, dtype="fp32"):
    return EvalOptions(str(examples.model_config(dtype)), str(examples.task_config(task)),
                       output_dir=str(folder), device="cpu", save_debug=True)  # fmt: skip


def dump_env(monkeypatch, chosen, tokens, replay=None):
    monkeypatch.setenv("BAD_CASE_LOGITS_DUMP", "True")
    monkeypatch.setenv("LOGITS_DUMP_TOKEN_MAX_LENGTH", str(tokens))
    monkeypatch.setenv("BAD_CASE_LIST", repr(chosen))
    if replay is None:
        monkeypatch.delenv("LOGITSDUMP_REPLAY_DIR", raising=False)
    else:
        monkeypatch.setenv("LOGITSDUMP_REPLAY_DIR", str(replay))
        monkeypatch.setenv("LOGITSDUMP_REPLAY_MODE", "step")


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_evaluate_dump_and_replay(tmp_path, monkeypatch, task):
    plain = run_eval(options(tmp_path / "plain", task))
    with open(plain.layout.debug_file, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["key"] for r in rows] == [str(i) for i in range(8)]
    assert {r["pass"] for r in rows} <= set(get_task(task).pass_labels)
    assert all(len(o.output_token_ids) >= 1 for o in plain.outcomes)
    chosen = [6, 1]
    dump_env(monkeypatch, chosen, 4)
    golden = run_eval(options(tmp_path / "golden", task))
    assert [o.key for o in golden.outcomes] == ["1", "6"]
    records = {r.index: r for r in store.read_manifest(golden.layout.logits_dir)}
    assert sorted(records) == [1, 6]
    for index, record in records.items():
        assert record.subject == plain.outcomes[index].subject
        assert record.output_token_ids == plain.outcomes[index].output_token_ids  # the same tokens re-inferred
        assert list(record.files) == [store.logits_file_name(record.subject, index, t)
                                for t in range(min(4, len(record.output_token_ids)))]  # fmt: skip
    # replay in bf16 on the fp32 golden dump: the golden tokens are fed, each step has its file
    dump_env(monkeypatch, chosen, 4, replay=golden.layout.logits_dir)
    replayed = run_eval(options(tmp_path / "replay", task, dtype="bf16"))
    for record in store.read_manifest(replayed.layout.logits_dir):
        gold = records[record.index]
        assert record.files == gold.files
        assert record.output_token_ids == gold.output_token_ids[: len(record.files)]
        assert record.extra["replay"]["golden_dir"] == str(golden.layout.logits_dir.resolve())
        first = torch.load(replayed.layout.logits_dir / record.files[0], weights_only=True)
        assert first.shape == (1, 259) and first.dtype == torch.bfloat16
