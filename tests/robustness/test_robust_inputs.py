# ruff: noqa: E501  (the coverage table in the docstring)
"""Bad input through the real command line: one clear line naming the file (and key or line), the
right exit status (1 runtime, 2 usage), and no output written. One test per case.

Cases msit-cli.md §3 item 5, §4 and §5 list that existing tests already cover (not repeated):
| case | covered by |
|---|---|
| dump `-tr 0` / `-1` / `abc` -> 2 | tests/test_dump_cli.py::test_bad_token_range |
| dump `-e "python run.py"`, `-e ""`, `-e "modeltest; rm -rf /"`, missing `model_test` | tests/test_dump_cli.py::test_bad_command |
| dump: modeltest not on PATH -> 1 "command not found" | tests/test_dump_cli.py::test_missing_modeltest |
| dump: child exits 3 -> 1 with its output | tests/test_dump_cli.py::test_child_failure |
| dump: missing CSV, no key column, 0-byte, header only, `foo/1`, `-1`, empty key cell, mixed keys, `.txt` | tests/test_dump_cli.py::test_bad_csv |
| dump: environment left set (msit §5.10) | tests/test_dump_cli.py::test_in_process_run_leaves_environ_alone |
| bcanalyze: `.txt`, missing file, no passed/key column, 0-byte | tests/test_bcanalyze_cli.py::test_bad_input |
| bcanalyze: dropped rows with empty cells (msit §5.9) | tests/test_badcase.py::test_empty_unrelated_cell_keeps_bad_case |
| compare: `-cs 1.5/-2/abc`, `-kl -0.1/nan`, `-l1 -1.5`, `-d int8`, `--topk 0`, `--tie-tolerance -1` -> 2 | tests/test_compare_cli.py::test_range_errors_exit_2 |
| compare: boundary values accepted | tests/test_compare_cli.py::test_boundary_values_are_accepted |
| compare: missing folder / a file as folder -> 1 | tests/test_compare_cli.py::test_missing_or_file_path_exits_1 |
| compare: output folder checked before work (msit §5.8) | tests/test_compare.py::test_output_problems_found_before_work |
| compare: KL in float64, identical tensors pass, abs(l1) (msit §5.1-5.3) | tests/test_metrics.py::test_kl_float64_for_identical_fp16, ::test_identical_all_negative_and_zero_max_pass, ::test_signed_l1_does_not_pass_alone |
| compare: deterministic row order (msit §5.4) | tests/test_compare.py::test_never_overwrites_and_is_deterministic |
| compare: one bad pair does not stop the run (msit §5.7) | tests/test_compare.py::test_pickled_code_is_not_run_and_the_run_goes_on |
| eval: malformed model YAML, unknown task, missing dataset/model_path, unknown data_type | tests/test_cli_eval.py::test_bad_input_gives_one_line |
| eval: missing dataset file | tests/test_cli_eval.py::test_missing_dataset_file_names_it |
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from robust_helpers import cli, files_under, one_error_line, unreadable_preexec

from logitsdump.demo import examples

# ---- eval: YAML files ---------------------------------------------------------------------------

_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)

#: case -> (model YAML text or None for the shipped one, task YAML text or None, needles of the error line)
YAML_CASES: dict[str, tuple[str | bytes | None, str | None, tuple[str, ...]]] = {
    "model: wrong types, all named at once": (
        "model_path: /x\nblock_size: big\nuse_chat_template: 2\n", None,
        ("m.yaml", "'block_size' must be int", "'use_chat_template' must be bool")),
    "model: env is not a mapping": ("model_path: /x\nenv: [1, 2]\n", None, ("m.yaml", "'env' must be dict")),
    "model: a scalar file": ("just text\n", None, ("m.yaml", "must hold a mapping of keys, found str")),
    "model: an empty file": ("", None, ("m.yaml", "must hold a mapping of keys, found NoneType")),
    "model: not UTF-8": (b"model_path: \xff\xfe\n", None, ("m.yaml", "cannot read")),
    "model: a python tag (would run code under yaml.load)": (
        "model_path: !!python/object/apply:os.system ['touch MARKER']\n", None,
        ("m.yaml", "not valid YAML at line 1")),
    "model: billion laughs": (_LAUGHS + "model_path: *i\n", None, ("m.yaml", "more than 100000 values")),
    "model: nested too deeply": ("model_path: " + "[" * 3000 + "]" * 3000 + "\n", None,
                                 ("m.yaml", "nested too deeply")),
    "task: malformed (tab indentation)": (None, "task_name: boolq\nsubject_mapping:\n\tdev.jsonl: {}\n",
                                          ("t.yaml", "not valid YAML at line")),
    "task: wrong types": (None, "task_name: boolq\nsubject_mapping: [a, b]\nshots: -1\n",
                          ("t.yaml", "'subject_mapping' must be dict", "'shots' must be >= 0")),
    "task: task_name missing": (None, "local_dataset_path: .\n", ("t.yaml", "'task_name' is required")),
    "task: billion laughs in choices": (None, _LAUGHS + "task_name: boolq\nchoices: *i\n",
                                        ("t.yaml", "more than 100000 values")),
}


def _eval_with(tmp_path: Path, model: str | bytes | None, task: str | None, *extra: str):
    model_path, task_path = examples.model_config("fp32"), examples.task_config("boolq")
    if model is not None:
        model_path = tmp_path / "m.yaml"
        model_path.write_bytes(model if isinstance(model, bytes) else model.encode())
    if task is not None:
        task_path = tmp_path / "t.yaml"
        task_path.write_text(task)
    return cli("eval", "--model_config_path", str(model_path), "--task_config_path", str(task_path),
               "--output_dir", str(tmp_path / "out"), "--device", "cpu", *extra, cwd=tmp_path, timeout=60)


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_eval_bad_yaml(tmp_path: Path, case: str) -> None:
    model, task, needles = YAML_CASES[case]
    done = _eval_with(tmp_path, model, task)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done, "eval")
    assert all(n in line for n in needles), line
    assert not (tmp_path / "out").exists() and not (tmp_path / "MARKER").exists()


def test_eval_unknown_keys_are_named_with_their_file(tmp_path: Path) -> None:
    """Unknown keys are ignored (as modeltest), and logged with the file and key names."""
    done = _eval_with(tmp_path, None, "task_name: boolq\nlocal_dataset_path: nope\nshotz: 5\n", "-l", "debug")
    assert done.returncode == 1
    assert any("t.yaml" in line and "ignoring unknown keys shotz" in line for line in done.stderr.splitlines())


def test_eval_unknown_task_name_names_the_file(tmp_path: Path) -> None:
    done = _eval_with(tmp_path, None, "task_name: ../../boolq\nlocal_dataset_path: .\n")
    assert done.returncode == 1
    assert "t.yaml" in one_error_line(done, "eval")


# ---- eval: dataset files ------------------------------------------------------------------------

GSM8K_OK = '{"question": "q?", "answer": "#### 1"}\n'
#: case -> (task, dataset file name, content, needles of the error line)
DATASET_CASES: dict[str, tuple[str, str, bytes, tuple[str, ...]]] = {
    "bad JSON line": ("gsm8k", "GSM8K.jsonl", (GSM8K_OK * 2 + '{"question": "q\n').encode(),
                      ("GSM8K.jsonl, line 3: not valid JSON",)),
    "missing field": ("gsm8k", "GSM8K.jsonl", (GSM8K_OK + '{"question": "q?"}\n').encode(),
                      ("GSM8K.jsonl, line 2: missing field 'answer'",)),
    "a line that is not an object": ("gsm8k", "GSM8K.jsonl", (GSM8K_OK + "[1, 2]\n").encode(),
                                     ("GSM8K.jsonl, line 2: expected a JSON object, found list",)),
    "not UTF-8": ("gsm8k", "GSM8K.jsonl", GSM8K_OK.encode() + b'{"question": "\xff"}\n',
                  ("GSM8K.jsonl", "cannot read dataset file")),
    "wrong field type": ("boolq", "dev.jsonl",
                         b'{"question": "q", "title": "t", "passage": "p", "answer": "yes"}\n',
                         ("dev.jsonl, line 1: field 'answer' must be true or false",)),
    "a folder where the file should be": ("gsm8k", "GSM8K.jsonl", b"", ("is not a file: it is a folder", "GSM8K.jsonl")),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_eval_bad_dataset(tmp_path: Path, case: str) -> None:
    task, name, content, needles = DATASET_CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    if case.startswith("a folder"):
        (data / name).mkdir()
    else:
        (data / name).write_bytes(content)
    text = examples.task_config(task).read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith("local_dataset_path"))
    task_yaml = tmp_path / "t.yaml"
    task_yaml.write_text(text + f"\nlocal_dataset_path: {data}\n")
    done = cli("eval", "--model_config_path", str(examples.model_config("fp32")), "--task_config_path",
               str(task_yaml), "--output_dir", str(tmp_path / "out"), "--device", "cpu", cwd=tmp_path, timeout=60)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done, "eval")
    assert all(n in line for n in needles), line
    assert not (tmp_path / "out").exists()


# ---- bcanalyze ----------------------------------------------------------------------------------

GOLDEN = "key,queries,pass\n1,q1,True\n2,q2,False\n"
TEST = "key,queries,pass\n1,q1,False\n2,q2,False\n"
#: case -> (test-file name, content (None: create nothing, "DIR": a folder), exit status, needle)
BCANALYZE_CASES: dict[str, tuple[str, bytes | str | None, int, str]] = {
    "a folder named .csv": ("t.csv", "DIR", 1, "is not a file"),
    "not UTF-8": ("t.csv", b"key,pass\n" + b"1,true\n" * 3000 + b"2,\xff\xfe\n", 1, "is not UTF-8 text"),
    "binary header": ("t.csv", b"\xff\xd8\xff\xe0\x00\x10JFIF", 1, "is not UTF-8 text"),
    "an unterminated quote (would swallow the rest)": (
        "t.csv", 'key,queries,pass\n1,"q\n2,q2,False\n', 1, "the row starting on line 2 is not valid CSV"),
    "text after a closing quote": ("t.csv", 'key,queries,pass\n1,"q"x,False\n', 1,
                                   "the row starting on line 2 is not valid CSV"),
    "blank header line": ("t.csv", "\n\n", 1, "has no header line"),
    "a dangling symlink": ("t.csv", None, 1, "does not exist"),
}


@pytest.mark.parametrize("case", list(BCANALYZE_CASES))
def test_bcanalyze_bad_input(tmp_path: Path, case: str) -> None:
    name, content, code, needle = BCANALYZE_CASES[case]
    (tmp_path / "g.csv").write_text(GOLDEN)
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif case == "a dangling symlink":
        path.symlink_to(tmp_path / "gone.csv")
    done = cli("bcanalyze", "-gp", "g.csv", "-mp", name, "-o", "out", cwd=tmp_path)
    assert done.returncode == code, done.stderr
    line = one_error_line(done, "bcanalyze")
    assert needle in line and name in line, line
    assert not (tmp_path / "out").exists()


def test_bcanalyze_header_only_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text(GOLDEN)
    (tmp_path / "t.csv").write_text("key,queries,pass\n")
    done = cli("bcanalyze", "-gp", "g.csv", "-mp", "t.csv", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0 and "2 golden case(s) not found" in done.stderr
    assert not (tmp_path / "out").exists()


def test_bcanalyze_output_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text(GOLDEN)
    (tmp_path / "t.csv").write_text(TEST)
    (tmp_path / "out").write_text("keep me")
    done = cli("bcanalyze", "-gp", "g.csv", "-mp", "t.csv", "-o", "out", cwd=tmp_path)
    assert done.returncode == 1 and "exists and is not a folder" in one_error_line(done, "bcanalyze")
    assert (tmp_path / "out").read_text() == "keep me"


def test_bcanalyze_unreadable_input(tmp_path: Path) -> None:
    preexec = _unreadable_or_skip(tmp_path)
    (tmp_path / "g.csv").write_text(GOLDEN)
    (tmp_path / "t.csv").write_text(TEST)
    (tmp_path / "t.csv").chmod(0)
    done = cli("bcanalyze", "-gp", "g.csv", "-mp", "t.csv", "-o", "out", cwd=tmp_path, preexec_fn=preexec)
    assert done.returncode == 1
    assert "cannot read t.csv: Permission denied" in one_error_line(done, "bcanalyze")
    assert not (tmp_path / "out").exists()


def test_bcanalyze_unwritable_output(tmp_path: Path) -> None:
    preexec = _unreadable_or_skip(tmp_path)
    (tmp_path / "g.csv").write_text(GOLDEN)
    (tmp_path / "t.csv").write_text(TEST)
    (tmp_path / "out").mkdir(mode=0o555)
    done = cli("bcanalyze", "-gp", "g.csv", "-mp", "t.csv", "-o", "out", cwd=tmp_path, preexec_fn=preexec)
    assert done.returncode == 1
    assert "cannot write in output folder out: Permission denied" in one_error_line(done, "bcanalyze")
    assert not list((tmp_path / "out").iterdir())


def _unreadable_or_skip(tmp_path: Path):
    try:
        return unreadable_preexec(tmp_path)
    except RuntimeError as err:
        pytest.skip(str(err))


# ---- dump ---------------------------------------------------------------------------------------

#: case -> (CSV text (None: a folder named bad.csv), -e command, exit status, needle)
DUMP_CASES: dict[str, tuple[str | bytes | None, str, int, str]] = {
    "a folder without a bad-case CSV": (None, "logitsdump eval", 1, "no msit_bad_case_result_<timestamp>.csv in this folder"),
    "not UTF-8": (b"key\n1\n\xff\n", "logitsdump eval", 1, "is not UTF-8 text"),
    "a key too long for an int": ("key\n" + "9" * 40 + "\n", "logitsdump eval", 1, "is not a row index"),
    "a key with a sign": ("key\n+1\n", "logitsdump eval", 1, "key '+1' on line 2 is not a row index"),
    "a negative HumanEval key": ("key\nHumanEval/-3\n", "logitsdump eval", 1, "negative key 'HumanEval/-3'"),
    "HumanEval mixed with HumanEval-X": ("key\nHumanEval/1\nPython/2\n", "logitsdump eval", 1,
                                         "mixes HumanEval and HumanEval-X keys"),
    "100,000 cases (modeltest's limit)": ("key\n" + "\n".join(map(str, range(100_000))) + "\n",
                                          "logitsdump eval", 1, "split the CSV"),
    "a white-space command": ("key\n1\n", "   ", 1, "the command to run is empty"),
    "a redirection": ("key\n1\n", "logitsdump eval > /tmp/x", 2, "unsafe character"),
    "a relative path to a missing program": ("key\n1\n", "./modeltest --x", 1, "command not found on PATH"),
}


@pytest.mark.parametrize("case", list(DUMP_CASES))
def test_dump_bad_input(tmp_path: Path, case: str) -> None:
    text, command, code, needle = DUMP_CASES[case]
    bad = tmp_path / "bad.csv"
    if text is None:
        bad.mkdir()
    elif isinstance(text, bytes):
        bad.write_bytes(text)
    else:
        bad.write_text(text)
    before = files_under(tmp_path)
    done = cli("dump", "-e", command, "-bcr", "bad.csv", cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert needle in one_error_line(done, "dump")
    assert files_under(tmp_path) == before  # nothing launched, nothing written


def test_dump_unreadable_csv(tmp_path: Path) -> None:
    preexec = _unreadable_or_skip(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("key\n1\n")
    bad.chmod(0)
    done = cli("dump", "-e", "logitsdump eval", "-bcr", "bad.csv", cwd=tmp_path, preexec_fn=preexec)
    assert done.returncode == 1
    assert "cannot read bad.csv: Permission denied" in one_error_line(done, "dump")


# ---- compare ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [["-cs", "nan"], ["-cs", "inf"], ["-kl", "inf"], ["-l1", "nan"], ["-l1", "inf"], ["--topk", "-3"],
     ["--topk", "2.5"], ["--tie-tolerance", "nan"], ["--tie-tolerance", "inf"], ["-d", "FP16"], ["-cs", ""]],
    ids=lambda flags: " ".join(flags) or "empty",
)
def test_compare_flag_out_of_range(tmp_path: Path, flags: list[str]) -> None:
    for side in ("g", "m"):
        (tmp_path / side).mkdir()
    done = cli("compare", "-gp", "g", "-mp", "m", "-o", "out", *flags, cwd=tmp_path)
    assert done.returncode == 2 and "error: argument" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_compare_unwritable_output_found_before_work(tmp_path: Path) -> None:
    preexec = _unreadable_or_skip(tmp_path)
    for side in ("g", "m"):
        (tmp_path / side).mkdir()
    (tmp_path / "out").mkdir(mode=0o555)
    done = cli("compare", "-gp", "g", "-mp", "m", "-o", "out", cwd=tmp_path, preexec_fn=preexec)
    assert done.returncode == 1
    assert "cannot write in output folder out: Permission denied" in one_error_line(done, "compare")


def test_compare_unlistable_input_folder(tmp_path: Path) -> None:
    preexec = _unreadable_or_skip(tmp_path)
    for side in ("g", "m"):
        (tmp_path / side).mkdir()
    (tmp_path / "m").chmod(0)
    done = cli("compare", "-gp", "g", "-mp", "m", "-o", "out", cwd=tmp_path, preexec_fn=preexec)
    (tmp_path / "m").chmod(0o755)
    assert done.returncode == 1
    assert "cannot list m: Permission denied" in one_error_line(done, "compare")


def test_compare_symlink_loop_as_folder(tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    done = cli("compare", "-gp", "g", "-mp", "loop", "-o", "out", cwd=tmp_path)
    assert done.returncode == 1 and "-mp/--my-path" in one_error_line(done, "compare")
