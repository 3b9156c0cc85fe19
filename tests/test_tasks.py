"""The tasks: cases from the sample datasets, queries as modeltest builds them, and judging."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from logitsdump.demo import examples
from logitsdump.errors import ConfigError, DataError
from logitsdump.runner.config import TaskConfig, load_task_config, resolve_dataset_root
from logitsdump.runner.tasks import get_task
from logitsdump.runner.tasks.base import Case, Generation, pass_label
from logitsdump.runner.tasks.boolq import choice_token_ids
from logitsdump.runner.tasks.common import extract_choice, first_letter, read_csv_rows, subject_words
from logitsdump.runner.tasks.gsm8k import last_number, numbers_equal
from logitsdump.runner.tasks.humaneval import clean_completion

VOCAB = 259


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(examples.TINY_MODEL))


def load(name: str) -> tuple[TaskConfig, list[Case]]:
    config = load_task_config(examples.task_config(name))  # name: the YAML's; boolq_edge runs task boolq
    return config, get_task(config.task_name).load_cases(config, resolve_dataset_root(config))


def gen(text: str, logits: torch.Tensor | None = None) -> Generation:
    return Generation(input_ids=(1,), output_ids=(), text=text, first_logits=logits)


# --- BoolQ -------------------------------------------------------------------------------------------


def test_boolq_cases_and_query():
    _, cases = load("boolq")
    assert len(cases) >= 20
    assert [c.index for c in cases] == list(range(len(cases)))
    assert [c.key for c in cases] == [str(i) for i in range(len(cases))]
    first = cases[0]
    assert first.subject == "dev.jsonl"
    assert first.reference is True
    assert first.query == (
        "Lighthouse -- A lighthouse is a tower with a bright lamp at its top. Sailors use its light to "
        "find the coast and avoid rocks after dark.\nQuestion: is a lighthouse meant to guide ships at "
        "night?\nAnswer:"
    )


def test_boolq_choice_ids_are_the_last_byte(tokenizer):
    # byte-level tokenizer: bytes sit at ids 3..258
    assert choice_token_ids(tokenizer) == (3 + ord("s"), 3 + ord("o"))


@pytest.mark.parametrize("yes_wins", [True, False])
@pytest.mark.parametrize("shape", [(VOCAB,), (1, VOCAB), (1, 4, VOCAB)])
def test_boolq_judged_from_logits(tokenizer, yes_wins, shape):
    task = get_task("boolq")
    yes, no = choice_token_ids(tokenizer)
    logits = torch.zeros(shape, dtype=torch.bfloat16)
    logits[..., yes] = 2.0 if yes_wins else -1.0
    logits[..., no] = 1.0
    case = Case(0, "dev.jsonl", "0", "q", True)
    verdict = task.judge(case, gen("", logits), tokenizer)
    assert verdict.test_result is yes_wins
    assert verdict.golden_result is True
    assert verdict.passed is yes_wins
    assert pass_label(task, verdict.passed) == ("True" if yes_wins else "False")
    other = task.judge(replace(case, reference=False), gen("", logits), tokenizer)
    assert other.passed is not yes_wins


def test_boolq_tie_is_false(tokenizer):
    verdict = get_task("boolq").judge(Case(0, "d", "0", "q", False), gen("", torch.zeros(VOCAB)), tokenizer)
    assert verdict.test_result is False and verdict.passed is True


def test_boolq_without_logits_is_a_bug(tokenizer):
    with pytest.raises(ValueError, match="logits"):
        get_task("boolq").judge(Case(0, "d", "0", "q", True), gen("yes"), tokenizer)


def test_boolq_answer_must_be_bool(tmp_path):
    (tmp_path / "dev.jsonl").write_text(
        json.dumps({"question": "q", "title": "t", "passage": "p", "answer": "yes"}) + "\n"
    )
    config = TaskConfig(task_name="boolq", prompt="{title}{passage}{text}", subject_mapping={"dev.jsonl": {}})
    with pytest.raises(DataError, match=r"dev\.jsonl, line 1: field 'answer' must be true or false, not"):
        get_task("boolq").load_cases(config, tmp_path)


def test_bad_prompt_placeholder_is_a_config_error(tmp_path):
    (tmp_path / "dev.jsonl").write_text(
        json.dumps({"question": "q", "title": "t", "passage": "p", "answer": True}) + "\n"
    )
    config = TaskConfig(task_name="boolq", prompt="{question}", subject_mapping={"dev.jsonl": {}})
    with pytest.raises(ConfigError, match="'prompt' cannot be filled"):
        get_task("boolq").load_cases(config, tmp_path)


# --- GSM8K -------------------------------------------------------------------------------------------


def test_gsm8k_cases():
    _, cases = load("gsm8k")
    assert len(cases) >= 20
    assert cases[0].query == "Tom has 3 apples. He eats 1 apple. How many apples does he have left?"
    assert cases[0].reference.endswith("#### 2")


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("so the answer is 42.", "42."),
        ("#### 1,234", "1234"),
        ("she pays $1,234,567.50 in total", "1234567.50"),
        ("12,34", "34"),
        ("1,2345", "2345"),
        ("it drops to -3 degrees", "-3"),
        ("+7 more", "7"),
        ("about .5 of it", ".5"),
        ("3 apples and 4.25 pears", "4.25"),
        ("1234", "1234"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_gsm8k_last_number(text, number):
    assert last_number(text) == number


@pytest.mark.parametrize(
    ("golden", "predicted", "equal"),
    [("42", "42.", True), ("42", "42.00005", True), ("42", "42.001", False), ("-3", "-3.0", True),
     ("3", "-3", False), ("2500", "2500", True), ("1", None, False), (None, "1", False)],
)  # fmt: skip
def test_gsm8k_numbers_equal(golden, predicted, equal):
    assert numbers_equal(golden, predicted) is equal


def test_gsm8k_judge(tokenizer):
    task = get_task("gsm8k")
    case = Case(0, "GSM8K.jsonl", "0", "q", "1,200 + 1,300 = 2,500 cups.\n#### 2,500")
    right = task.judge(case, gen("  They sell 2500 cups.\nThe answer is 2,500"), tokenizer)
    assert right.passed is True
    assert right.test_result == "They sell 2500 cups.\nThe answer is 2,500"
    assert right.golden_result == case.reference
    assert task.judge(case, gen("2,500 first, then 12"), tokenizer).passed is False
    empty = task.judge(case, gen(""), tokenizer)
    assert empty.passed is False and empty.test_result == "-1"


# --- MMLU / C-Eval -----------------------------------------------------------------------------------


def test_subject_words_keep_modeltest_leading_space():
    assert subject_words("college_biology") == " college biology"


def test_mmlu_few_shot_prompt_shape():
    config, cases = load("mmlu_few_shots")
    assert len(cases) >= 15
    assert config.shots == 5
    first = cases[0]
    assert first.subject == "astronomy" and first.reference == "B"
    head = "The following are multiple choice questions (with answers) about  astronomy.\n\n"
    shot = "What force keeps the planets in orbit around the sun?\nA. Magnetism\n"
    assert first.query.startswith(head + shot)
    assert first.query.count("\nAnswer: ") == 5
    assert first.query.count("\nAnswer:") == 6
    assert first.query.endswith(
        "Which planet is closest to the sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars\nAnswer:"
    )
    blocks = first.query[len(head) :].split("\n\n")
    assert len(blocks) == 6
    for block in blocks:
        lines = block.splitlines()
        assert [line[:3] for line in lines[1:5]] == ["A. ", "B. ", "C. ", "D. "]
        assert lines[5].startswith("Answer:")
    # the global index runs on across subjects
    subjects = [c.subject for c in cases]
    assert subjects == sorted(subjects, key=list(config.subject_mapping).index)
    assert cases[6].subject == "college_biology" and cases[6].key == "6"


def test_ceval_few_shot_skips_header_id_and_explanation():
    _, cases = load("ceval_few_shots")
    assert len(cases) >= 15
    first = cases[0]
    assert first.query.startswith(
        "The following are multiple choice questions (with answers) about  computer network.\n\n以太网使用"
    )
    assert "id" not in first.query.split("\n")[2]
    assert "questionA" not in first.query and "explanation" not in first.query
    assert "带冲突检测" not in first.query  # the explanation column is not part of the shot
    assert first.query.endswith("D. 传输层\nAnswer:")
    assert first.reference == "C"


def test_zero_shot_queries():
    _, mmlu = load("mmlu_zero_shot")
    assert mmlu[0].query == (
        "\nThere is a single choice question about astronomy. Answer the question by replying A, B, C or D."
        "\nQ: Which planet is closest to the sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars"
        "\nLet's think step by step. A: "
    )
    biology = next(c for c in mmlu if c.subject == "college_biology")
    assert "question about college biology." in biology.query
    _, ceval = load("ceval_zero_shot")
    assert ceval[0].query.startswith("\n以下是中国关于计算机网络考试的单项选择题")
    assert ceval[0].query.endswith("D. 传输层\n让我们一步一步思考。答案: ")


def test_ceval_zero_shot_needs_name_ch():
    config = load_task_config(examples.task_config("ceval_zero_shot"))
    broken = replace(config, subject_mapping={"computer_network": {"name": "Computer Network"}})
    with pytest.raises(ConfigError, match=r"subject_mapping\.computer_network needs a 'name_ch'"):
        get_task("ceval_zero_shot").load_cases(broken, resolve_dataset_root(config))


@pytest.mark.parametrize(
    ("text", "letter"),
    [(" B. Mercury", "B"), ("\n\nC", "C"), ("   ", "-1"), ("", "-1"), ("x", "x")],
)
def test_few_shot_prediction_is_first_letter(text, letter):
    assert first_letter(text) == letter


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is (C).", "C"),
        ("the correct answer is option D", "D"),
        ("答案是B。", "B"),
        ("答案：A", "A"),
        ("故选C", "C"),
        ("分析如下，因此D。", "D"),
        ("I pick C", "C"),
        ("B is right", "B"),
        ("nothing useful", ""),
        ("", ""),
    ],
)
def test_zero_shot_extraction(text, letter):
    assert extract_choice(text) == letter


def test_choice_judging_and_labels(tokenizer):
    few, zero = get_task("mmlu_few_shots"), get_task("ceval_zero_shot")
    case = Case(0, "astronomy", "0", "q", "B", {"options": "ABCD"})
    right = few.judge(case, gen(" B\n\nQuestion"), tokenizer)
    assert (right.passed, right.test_result, right.golden_result) == (True, "B", "B")
    assert pass_label(few, right.passed) == "Correct"
    wrong = few.judge(case, gen("A"), tokenizer)
    assert pass_label(few, wrong.passed) == "Wrong"
    assert zero.judge(case, gen("让我们想想。答案是B"), tokenizer).passed is True
    assert zero.judge(case, gen("???"), tokenizer).test_result == ""


def test_shots_beyond_dev_rows(tmp_path):
    config = load_task_config(examples.task_config("mmlu_few_shots"))
    with pytest.raises(DataError, match="has 5 examples, but shots is 6"):
        get_task("mmlu_few_shots").load_cases(replace(config, shots=6), resolve_dataset_root(config))


# --- HumanEval ---------------------------------------------------------------------------------------


def test_humaneval_cases():
    _, cases = load("humaneval")
    assert [c.key for c in cases] == [f"HumanEval/{i}" for i in range(10)]
    assert [c.index for c in cases] == list(range(10))
    first = cases[0]
    assert first.query == first.data["prompt"].strip()
    assert first.query.endswith('"""') and first.reference.startswith("    return")
    assert set(first.data) >= {"test", "entry_point", "prompt"}


def test_humaneval_public_file_name(tmp_path):
    source = examples.DATASETS / "humaneval" / "human-eval.jsonl"
    (tmp_path / "HumanEval.jsonl").write_text(source.read_text())
    config = load_task_config(examples.task_config("humaneval"))
    assert len(get_task("humaneval").load_cases(config, tmp_path)) == 10


@pytest.mark.parametrize(
    ("completion", "cleaned"),
    [
        ("\n    return a + b\n\ndef other():\n    pass\n", "\n    return a + b\n"),
        ("\n    return a + b\nprint(add_two(1, 2))", "\n    return a + b"),
        ("\n    return a + b\nif __name__ == '__main__':\n    main()", "\n    return a + b"),
        ("\n    return a + b\n# a comment", "\n    return a + b"),
        ("\n    x = 1\n\n\n    return x\n\n\n", "\n    x = 1\n\n\n    return x"),
        ("\n    return a + b", "\n    return a + b"),
        ("garbage\n    return 1", ""),
    ],
)
def test_humaneval_cleaning(completion, cleaned):
    assert clean_completion(completion) == cleaned


def test_humaneval_judge(tokenizer):
    task = get_task("humaneval")
    _, cases = load("humaneval")
    case = cases[0]
    good = task.judge(case, gen("\n    return a + b\n\n\nprint('extra')"), tokenizer)
    assert good.passed is True and good.test_result == "\n    return a + b\n\n"
    assert pass_label(task, good.passed) == "True"
    assert task.judge(case, gen("\n    return a - b\n"), tokenizer).passed is False
    assert task.judge(case, gen("\n    import sys; sys.exit(0)\n"), tokenizer).passed is False
    assert task.writes_bad_case_csv is True


# --- dataset errors ----------------------------------------------------------------------------------


def test_missing_file_names_path_and_expectation(tmp_path):
    config = load_task_config(examples.task_config("gsm8k"))
    with pytest.raises(DataError) as err:
        get_task("gsm8k").load_cases(config, tmp_path)
    message = str(err.value)
    assert str(tmp_path / "GSM8K.jsonl") in message and "question, answer" in message
    assert "\n" not in message


def test_bad_json_names_file_and_line(tmp_path):
    (tmp_path / "GSM8K.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n\n{"question": oops}\n')
    config = load_task_config(examples.task_config("gsm8k"))
    with pytest.raises(DataError, match=r"GSM8K\.jsonl, line 3: not valid JSON"):
        get_task("gsm8k").load_cases(config, tmp_path)


def test_missing_field_names_file_line_and_field(tmp_path):
    (tmp_path / "GSM8K.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    config = load_task_config(examples.task_config("gsm8k"))
    with pytest.raises(DataError, match=r"GSM8K\.jsonl, line 2: missing field 'answer'"):
        get_task("gsm8k").load_cases(config, tmp_path)


def test_humaneval_field_types(tmp_path):
    row = {"task_id": "HumanEval/0", "prompt": "p", "canonical_solution": "s", "test": "t", "entry_point": 3}
    (tmp_path / "human-eval.jsonl").write_text(json.dumps(row) + "\n")
    config = load_task_config(examples.task_config("humaneval"))
    with pytest.raises(DataError, match=r"line 1: field 'entry_point' must be a string"):
        get_task("humaneval").load_cases(config, tmp_path)


def test_short_csv_row_names_file_and_line(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('q1,a,b,c,d,A\n"multi\nline",a,b,c,d,B\n\nq4,a,b,c,d,C\n')
    assert [line for line, _ in read_csv_rows(path, 6, "x")] == [1, 2, 5]  # a quoted newline spans lines
    path.write_text(path.read_text() + "q6,a,b\n")
    with pytest.raises(DataError, match=r"x\.csv, line 6: expected at least 6 columns, found 3"):
        read_csv_rows(path, 6, "x")


def test_missing_mmlu_subject_file(tmp_path):
    config = load_task_config(examples.task_config("mmlu_zero_shot"))
    with pytest.raises(DataError, match=r"astronomy_test\.csv \(expected a CSV file of question, 4 options"):
        get_task("mmlu_zero_shot").load_cases(config, tmp_path)


def test_every_shipped_task_is_case_indexed():
    for name in examples.shipped_task_names():
        _, cases = load(name)
        if name == "humanevalx":  # indices count per language (the five-list BAD_CASE_LIST form)
            cases = [c for c in cases if c.key.startswith("CPP/")]
        assert [c.index for c in cases] == list(range(len(cases))), name
        assert all(isinstance(c.key, str) for c in cases)


def test_tasks_satisfy_the_protocol():
    for name in examples.shipped_task_names():
        task = get_task(load_task_config(examples.task_config(name)).task_name)
        assert len(task.pass_labels) == 2 and isinstance(task.writes_bad_case_csv, bool)
        assert callable(task.load_cases) and callable(task.judge)
