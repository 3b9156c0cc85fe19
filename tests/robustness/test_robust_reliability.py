"""Reliability under a new user's faults (issue 14): concurrent runs into one folder, names too long,
read-only output folders, a runner batch size other than 1, misleading messages, paths with spaces.

Each test failed before its fix (the closing note of issue 14 says how that was checked).
The input-length guard and the interruptible forward pass are in `test_robust_limits.py`.
"""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from robust_helpers import cli, env, files_under, logits_dir, one_error_line, runner_command, unreadable_preexec

from logitsdump import fsutil
from logitsdump.badcase import RESULT_PREFIX, BcanalyzeOptions, analyze
from logitsdump.compare import CompareOptions, run_compare
from logitsdump.demo import examples
from logitsdump.dump import DumpFolder, DumpResult
from logitsdump.store import DUMP_SUMMARY_NAME, DumpSummary, read_dump_summary

from helpers import fake_programs, fake_record

#: 300 characters: longer than any file system's NAME_MAX (255 bytes).
LONG = "x" * 300
RUNS = 20


def _logits_folders(root: Path, cases: int) -> tuple[Path, Path]:
    """A golden and a test folder with `cases` one-step cases (test slightly off), as dump writes them."""
    golden, mine = root / "golden", root / "mine"
    golden.mkdir(parents=True)
    mine.mkdir()
    values = torch.as_tensor(np.linspace(-3.0, 5.0, 32, dtype=np.float32))
    for key in range(cases):
        torch.save(values, golden / f"logits_boolq_{key}_0.pth")
        torch.save(values + 1e-3 * key, mine / f"logits_boolq_{key}_0.pth")
    return golden, mine


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---- 1. concurrent runs into one output folder -------------------------------------------------


def _together(run: Callable[[int], Any]) -> dict[int, Any]:
    """`run(0)` .. `run(RUNS - 1)` in RUNS threads released at once; their results by number."""
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(RUNS)

    def one(i: int) -> None:
        try:
            start.wait()
            results[i] = run(i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(RUNS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_concurrent_compares_in_the_same_second_keep_every_result_set(tmp_path: Path) -> None:
    """20 compares of different folders, all stamped with the same second, into one -o."""
    out = tmp_path / "out"
    now = datetime(2026, 12, 3, 12, 0, 0)
    inputs = [_logits_folders(tmp_path / f"run{i}", i + 1) for i in range(RUNS)]
    summaries = _together(lambda i: run_compare(
        CompareOptions(golden_path=inputs[i][0], my_path=inputs[i][1], output_dir=out), now=now))
    paths = {s.csv_path for s in summaries.values()} | {s.cases_json_path for s in summaries.values()}
    assert len(paths) == 2 * RUNS  # distinct names
    assert len(list(out.iterdir())) == 3 * RUNS  # three files per run, nothing else, nothing lost
    for i, summary in summaries.items():
        assert summary.rows == i + 1  # each run's own summary ...
        assert len(_rows(summary.csv_path)) == i + 1  # ... and its own files, complete
        assert len(_rows(summary.cases_csv_path)) == i + 1
        document = json.loads(summary.cases_json_path.read_text())
        assert document["summary"]["rows"] == i + 1 and len(document["cases"]) == i + 1


def test_concurrent_compare_commands_each_print_their_own_summary(tmp_path: Path) -> None:
    """20 `logitsdump compare` processes started together (most in the same second) into one -o."""
    out = tmp_path / "out"
    inputs = [_logits_folders(tmp_path / f"run{i}", i + 1) for i in range(RUNS)]
    processes = [
        subprocess.Popen([sys.executable, "-m", "logitsdump", "compare", "-gp", str(g), "-mp", str(m), "-o", str(out)],
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for g, m in inputs
    ]
    printed = []
    for i, process in enumerate(processes):
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert f"token pairs: {i + 1} " in stdout  # its own summary
        results = Path(next(line.split(maxsplit=1)[1] for line in stdout.splitlines() if line.startswith("results:")))
        assert len(_rows(results)) == i + 1  # the file it names is its own
        printed.append(results)
    assert len(set(printed)) == RUNS
    assert len(list(out.iterdir())) == 3 * RUNS


def test_concurrent_bcanalyze_in_the_same_second_keep_every_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("logitsdump.badcase.timestamp", lambda: "20261203120000")
    out = tmp_path / "out"
    for i in range(RUNS):
        flips = i + 1
        (tmp_path / f"g{i}.csv").write_text("key,pass\n" + "".join(f"{k},True\n" for k in range(RUNS + 1)))
        (tmp_path / f"t{i}.csv").write_text(
            "key,pass\n" + "".join(f"{k},{k >= flips}\n" for k in range(RUNS + 1)))

    results = _together(lambda i: analyze(BcanalyzeOptions(tmp_path / f"g{i}.csv", tmp_path / f"t{i}.csv", out)))
    assert len({r.output_path for r in results.values()}) == RUNS == len(list(out.iterdir()))
    for i, result in results.items():
        assert result.bad_cases == i + 1 and len(_rows(result.output_path)) == i + 1


# ---- 2. names too long --------------------------------------------------------------------------


def _long_name_cases(tmp_path: Path) -> dict[str, list[str]]:
    golden, mine = _logits_folders(tmp_path, 1)
    (tmp_path / "g.csv").write_text("key,pass\n1,True\n")
    (tmp_path / "t.csv").write_text("key,pass\n1,False\n")
    return {
        "compare -o": ["compare", "-gp", str(golden), "-mp", str(mine), "-o", LONG],
        "compare -o, nested": ["compare", "-gp", str(golden), "-mp", str(mine), "-o", f"a/{LONG}/b"],
        "compare -gp": ["compare", "-gp", LONG, "-mp", str(mine), "-o", "out"],
        "bcanalyze -o": ["bcanalyze", "-gp", "g.csv", "-mp", "t.csv", "-o", LONG],
        "bcanalyze -gp": ["bcanalyze", "-gp", f"{LONG}.csv", "-mp", "t.csv", "-o", "out"],
        "report COMPARE_OUTPUT": ["report", LONG],
        "report -o": ["report", "out", "-o", f"{LONG}.html"],
        "dump -bcr": ["dump", "-e", "logitsdump eval", "-bcr", f"{LONG}.csv"],
        "a path over PATH_MAX": ["compare", "-gp", str(golden), "-mp", str(mine), "-o", "/".join(["y" * 200] * 21)],
        "compare --tolerances": ["compare", "-gp", str(golden), "-mp", str(mine), "-o", "out", "--tolerances",
                                 f"{LONG}.json"],
        "dump --replay": ["dump", "-e", "logitsdump eval", "-bcr", "t.csv", "--replay", LONG],
        "dump --from-samples": ["dump", "--from-samples", f"{LONG}.jsonl", "-bcr", "t.csv",
                                "--model_config_path", "m.yaml"],
    }


@pytest.mark.parametrize("case", ["compare -o", "compare -o, nested", "compare -gp", "bcanalyze -o", "bcanalyze -gp",
                                  "report COMPARE_OUTPUT", "report -o", "dump -bcr", "a path over PATH_MAX",
                                  "compare --tolerances", "dump --replay", "dump --from-samples"])
def test_a_name_too_long_is_one_line_before_any_work(tmp_path: Path, case: str) -> None:
    args = _long_name_cases(tmp_path)[case]
    before = files_under(tmp_path)
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done, args[0])
    assert "choose a shorter" in line and len(line) < 400
    if case.startswith("dump --"):
        assert f"error: {case.split()[1]} " in line  # the flag at fault is named
    assert files_under(tmp_path) == before  # nothing written, no folder created


def test_eval_with_a_300_character_model_name_fails_before_the_model_loads(tmp_path: Path) -> None:
    model_yaml = tmp_path / "model.yaml"
    text = examples.model_config("fp32").read_text().replace("model_name: tiny_llama", f"model_name: {LONG}")
    model_dir = examples.model_config("fp32").parent
    model_yaml.write_text(text.replace("model_path: ", f"model_path: {model_dir}/"))
    done = cli("eval", "--model_config_path", str(model_yaml), "--task_config_path", str(examples.task_config("gsm8k")),
               "--output_dir", "out", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 1
    line = one_error_line(done, "eval")
    assert "model_name from" in line and "300 bytes long" in line and "(300 characters)" in line
    assert "gsm8k" not in done.stderr.replace(line, "")  # no progress bar: nothing was evaluated
    assert not (tmp_path / "out" / "results").exists()
    # a long --output_dir is blamed on --output_dir, not on the model YAML
    done = cli("eval", "--model_config_path", str(examples.model_config("fp32")), "--task_config_path",
               str(examples.task_config("gsm8k")), "--output_dir", LONG, "--device", "cpu", cwd=tmp_path)
    line = one_error_line(done, "eval")
    assert done.returncode == 1 and "error: --output_dir " in line and "model_name" not in line, line


# ---- 3. read-only output folders ------------------------------------------------------------------


def _read_only_or_skip(tmp_path: Path):
    try:
        return unreadable_preexec(tmp_path)  # as root, mode bits only bind without CAP_DAC_OVERRIDE
    except RuntimeError as err:
        pytest.skip(str(err))


def test_dump_into_a_read_only_output_folder_is_refused_before_the_runner_starts(tmp_path: Path) -> None:
    preexec = _read_only_or_skip(tmp_path)
    bin_dir = fake_programs(tmp_path / "bin", "modeltest")
    (tmp_path / "bad.csv").write_text("key\n1\n")
    (tmp_path / "ro").mkdir(mode=0o555)
    done = cli("dump", "-e", "modeltest --output_dir ro", "-bcr", "bad.csv", cwd=tmp_path, preexec_fn=preexec,
               PATH=f"{bin_dir}:{env()['PATH']}")
    assert done.returncode == 1
    assert "cannot write in output folder" in one_error_line(done, "dump") and "Permission denied" in done.stderr
    assert not (bin_dir / "record.json").exists()  # the runner never started


@pytest.mark.slow
def test_runner_that_cannot_create_its_logits_folder_prints_one_line(tmp_path: Path) -> None:
    """The output folder is writable but its data/ area is not: the child says so in one line."""
    preexec = _read_only_or_skip(tmp_path)
    (tmp_path / "bad.csv").write_text("key\n1\n")
    (tmp_path / "out" / "data").mkdir(parents=True, mode=0o555)
    done = cli("dump", "-e", runner_command(tmp_path / "out"), "-bcr", "bad.csv", cwd=tmp_path, preexec_fn=preexec)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    child = [line for line in done.stderr.splitlines() if line.startswith("logitsdump eval: error:")]
    assert len(child) == 1 and "cannot create folder" in child[0] and "Permission denied" in child[0]
    assert "the child command exited with status 1" in one_error_line(done, "dump")
    assert "--resume" not in done.stderr  # nothing was dumped: nothing to resume


# ---- 5. a runner batch size other than 1 ------------------------------------------------------------


@pytest.mark.parametrize("command", [
    "modeltest --model_config_path m.yaml --batch_size 4",
    "modeltest --batch-size=2 --tp 1",
    "torchrun --nproc_per_node 2 --no-python logitsdump eval --batch_size 8",
    "logitsdump eval --batch_size 0",
    "logitsdump eval --batch_size x",
])
def test_dump_refuses_a_batch_size_other_than_1(tmp_path: Path, command: str) -> None:
    bin_dir = fake_programs(tmp_path / "bin", "modeltest", "torchrun", "logitsdump")
    (tmp_path / "bad.csv").write_text("key\n1\n")
    done = cli("dump", "-e", command, "-bcr", "bad.csv", cwd=tmp_path, PATH=f"{bin_dir}:{env()['PATH']}")
    assert done.returncode == 2
    assert "needs --batch_size 1" in one_error_line(done, "dump")
    assert not (bin_dir / "record.json").exists()  # nothing launched


def test_dump_accepts_batch_size_1(tmp_path: Path) -> None:
    bin_dir = fake_programs(tmp_path / "bin", "modeltest")
    (tmp_path / "bad.csv").write_text("key\n1\n")
    done = cli("dump", "-e", "modeltest --batch_size 1", "-bcr", "bad.csv", cwd=tmp_path,
               PATH=f"{bin_dir}:{env()['PATH']}")
    assert done.returncode == 0, done.stderr
    assert fake_record(bin_dir)["argv"][1:] == ["--batch_size", "1"]


# ---- 6. messages ----------------------------------------------------------------------------------


def test_report_permission_error_has_no_resume_hint(tmp_path: Path) -> None:
    preexec = _read_only_or_skip(tmp_path)
    golden, mine = _logits_folders(tmp_path, 1)
    assert cli("compare", "-gp", str(golden), "-mp", str(mine), "-o", "cmp", cwd=tmp_path).returncode == 0
    (tmp_path / "ro").mkdir(mode=0o555)
    done = cli("report", "cmp", "-o", "ro/page.html", cwd=tmp_path, preexec_fn=preexec)
    assert done.returncode == 1
    line = one_error_line(done, "report")
    assert "Permission denied" in line and "resume" not in line


def test_eval_into_a_read_only_folder_fails_before_the_model_loads_without_resume_hint(tmp_path: Path) -> None:
    preexec = _read_only_or_skip(tmp_path)
    (tmp_path / "ro").mkdir(mode=0o555)
    done = cli("eval", "--model_config_path", str(examples.model_config("fp32")), "--task_config_path",
               str(examples.task_config("gsm8k")), "--output_dir", "ro", "--device", "cpu", cwd=tmp_path,
               preexec_fn=preexec)
    assert done.returncode == 1
    line = one_error_line(done, "eval")
    assert "cannot write in output folder ro: Permission denied" in line and "resume" not in line


def test_bcanalyze_into_a_read_only_folder_fails_before_any_work(tmp_path: Path) -> None:
    preexec = _read_only_or_skip(tmp_path)
    (tmp_path / "g.csv").write_text("key,pass\n1,True\n")
    (tmp_path / "t.csv").write_text("key,pass\n1,False\n")
    (tmp_path / "ro").mkdir(mode=0o555)
    for out in ("ro", "ro/new"):  # the folder itself, or one it would create
        done = cli("bcanalyze", "-gp", "g.csv", "-mp", "t.csv", "-o", out, cwd=tmp_path, preexec_fn=preexec)
        assert done.returncode == 1
        assert "cannot write in output folder" in one_error_line(done, "bcanalyze")
        assert "McNemar" not in done.stderr + done.stdout  # nothing was analysed
    assert list((tmp_path / "ro").iterdir()) == []


def test_examples_into_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    preexec = _read_only_or_skip(tmp_path)
    (tmp_path / "ro").mkdir(mode=0o555)
    done = cli("examples", "ro/ex", cwd=tmp_path, preexec_fn=preexec)
    assert done.returncode == 1
    assert "Permission denied" in one_error_line(done, "examples") and "Traceback" not in done.stderr
    assert list((tmp_path / "ro").iterdir()) == []


def test_examples_cut_short_by_a_full_disk_leave_nothing(tmp_path: Path, monkeypatch) -> None:
    import errno
    import shutil

    from logitsdump.errors import WriteError

    plain = shutil.copyfile

    def fills_the_disk(source, destination, *args, **kwargs):
        if "datasets" in Path(destination).relative_to(tmp_path / "ex").parts:  # the model is copied first
            raise OSError(errno.ENOSPC, "No space left on device")
        return plain(source, destination, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", fills_the_disk)
    with pytest.raises(WriteError, match="No space left on device: free some space"):
        examples.copy_examples(tmp_path / "ex")
    assert not (tmp_path / "ex").exists()


def test_examples_try_line_quotes_a_path_with_spaces(tmp_path: Path) -> None:
    done = cli("examples", "my examples", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    try_line = next(line for line in done.stdout.splitlines() if line.startswith("try: "))
    argv = shlex.split(try_line[len("try: "):])
    assert argv[:2] == ["logitsdump", "eval"]
    assert Path(argv[argv.index("--model_config_path") + 1]).is_file()
    assert Path(argv[argv.index("--task_config_path") + 1]).is_file()


def test_model_path_at_a_folder_that_holds_no_model(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    model_yaml = tmp_path / "model.yaml"
    text = examples.model_config("fp32").read_text()
    model_yaml.write_text("\n".join(
        f"model_path: {tmp_path / 'notes'}" if line.startswith("model_path:") else line for line in text.splitlines()))
    done = cli("eval", "--model_config_path", str(model_yaml), "--task_config_path", str(examples.task_config("gsm8k")),
               "--output_dir", "out", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 1
    line = one_error_line(done, "eval")
    assert "is not a model folder: no config.json and no tokenizer files" in line


def _folder(summary: DumpSummary | None, cases: int) -> DumpFolder:
    return DumpFolder(Path("logits"), cases, cases, summary)


def test_shortfall_says_which_cases_match_no_row_and_which_failed() -> None:
    assert DumpResult(50_000, (_folder(DumpSummary(50_000, 22, 22), 22),)).shortfall_lines() == [
        "49978 of the 50000 bad cases match no row of the dataset (the runner lists them above): nothing to "
        "dump for them"]
    lines = DumpResult(10, (_folder(DumpSummary(10, 8, 6), 6),)).shortfall_lines()
    assert len(lines) == 2 and "2 of the 10" in lines[0] and "2 of the 8 bad cases found" in lines[1]
    assert DumpResult(3, (_folder(DumpSummary(3, 3, 3), 3),)).shortfall_lines() == []
    assert "failed or match no dataset row" in DumpResult(3, (_folder(None, 1),)).shortfall_lines()[0]


@pytest.mark.parametrize("text", ["{", "[]", '{"requested": 1}', '{"requested": -1, "matched": 0, "complete": 0}',
                                  '{"requested": true, "matched": 0, "complete": 0}'])
def test_a_crafted_dump_summary_is_ignored(tmp_path: Path, text: str) -> None:
    (tmp_path / DUMP_SUMMARY_NAME).write_text(text)
    assert read_dump_summary(tmp_path) is None


@pytest.mark.slow
def test_50k_keys_over_a_small_dataset_say_no_case_failed(tmp_path: Path) -> None:
    """Also item 7: the runner command quotes an output folder with a space, run without a shell."""
    (tmp_path / "bad.csv").write_text("key\n" + "\n".join(map(str, range(50_000))) + "\n")
    out = tmp_path / "my outputs"
    command = runner_command(shlex.quote(str(out)))
    done = cli("dump", "-e", command, "-bcr", "bad.csv", "-tr", "1", cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    dataset = examples.DATASETS / "gsm8k" / "GSM8K.jsonl"
    rows = sum(1 for line in dataset.read_text().splitlines() if line.strip())
    assert f"dumped {rows} of 50000 bad cases" in done.stdout
    assert f"{50_000 - rows} of the 50000 bad cases match no row of the dataset" in done.stderr
    assert "failed" not in done.stderr
    summary = read_dump_summary(logits_dir(out))
    assert summary is not None and (summary.requested, summary.matched, summary.complete) == (50_000, rows, rows)


# ---- 7. quoted paths inside -e --------------------------------------------------------------------


def test_quoted_arguments_reach_the_runner_as_single_words(tmp_path: Path) -> None:
    bin_dir = fake_programs(tmp_path / "bin", "modeltest")
    (tmp_path / "bad.csv").write_text("key\n1\n")
    command = """modeltest --model_config_path "my models/a (1).yaml" --task_config_path 'tasks/x; y.yaml' --z a\\ b"""
    done = cli("dump", "-e", command, "-bcr", "bad.csv", cwd=tmp_path, PATH=f"{bin_dir}:{env()['PATH']}")
    assert done.returncode == 0, done.stderr
    assert fake_record(bin_dir)["argv"][1:] == [
        "--model_config_path", "my models/a (1).yaml", "--task_config_path", "tasks/x; y.yaml", "--z", "a b"]


@pytest.mark.parametrize(("command", "needle"), [
    ('modeltest --x "unclosed', "No closing quotation"),
    ("modeltest --x a;b", "unsafe character(s) ';'"),
    ('modeltest "--x" $HOME', "unsafe character(s) '$'"),
])
def test_unquoted_shell_syntax_and_broken_quotes_are_usage_errors(tmp_path: Path, command: str, needle: str) -> None:
    bin_dir = fake_programs(tmp_path / "bin", "modeltest")
    (tmp_path / "bad.csv").write_text("key\n1\n")
    done = cli("dump", "-e", command, "-bcr", "bad.csv", cwd=tmp_path, PATH=f"{bin_dir}:{env()['PATH']}")
    assert done.returncode == 2
    assert needle in one_error_line(done, "dump")
    assert not (bin_dir / "record.json").exists()


def test_output_name_allowance_covers_every_name_we_create() -> None:
    from logitsdump.compare.outputs import run_names

    longest = max(len(name) for name in run_names("20261203120000_9999"))
    assert longest < len(fsutil.OUTPUT_NAME_ALLOWANCE)
    assert len(f"{RESULT_PREFIX}20261203120000_{fsutil.MAX_SUFFIX}.csv") < len(fsutil.OUTPUT_NAME_ALLOWANCE)
