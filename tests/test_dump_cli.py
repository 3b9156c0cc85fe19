"""`logitsdump dump` / `logitsdump logitsdump`: the installed command with a fake modeltest on PATH."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from logitsdump.cli import main
from logitsdump.dump import output_dir_of, snapshot_logits_folders, written_folders
from logitsdump.store import CaseManifest, DumpSummary, append_manifest, write_dump_summary

from helpers import alive, fake_programs, fake_record


@pytest.fixture()
def fake_bin(tmp_path: Path) -> Path:
    return fake_programs(tmp_path / "bin", "modeltest", "torchrun")


def child_env(fake_bin: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAD_CASE", "LOGITS", "FAKE_"))}
    if fake_bin is not None:
        env["PATH"] = f"{fake_bin}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def dump(tmp_path: Path, *args: str, fake_bin: Path | None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "logitsdump", *args],
        cwd=tmp_path,
        env=child_env(fake_bin, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def csv_file(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- the protocol, as msit sets it --------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["10", "2", "5", "1"], "[1, 2, 5, 10]"),
        (["HumanEval/17", "HumanEval/3"], "[3, 17]"),
        (["Python/7", "CPP/1", "Python/3"], "[[1], [], [], [], [3, 7]]"),
    ],
)
def test_child_gets_msit_values(tmp_path: Path, fake_bin: Path, keys: list[str], expected: str) -> None:
    bad = csv_file(tmp_path, "key,passed_golden,passed_test\n" + "".join(f"{k},true,false\n" for k in keys))
    result = dump(
        tmp_path, "dump", "-e", "modeltest --batch_size 1", "-bcr", str(bad), "-tr", "10", fake_bin=fake_bin
    )
    assert result.returncode == 0, result.stderr
    got = fake_record(fake_bin)
    assert got["BAD_CASE_LOGITS_DUMP"] == "True"
    assert got["LOGITS_DUMP_TOKEN_MAX_LENGTH"] == "10"
    assert got["BAD_CASE_LIST"] == expected
    assert got["LOGITSDUMP_RESUME"] is None and got["LOGITSDUMP_LOGITS_FP32"] is None
    assert "hello from the child" in result.stdout


def test_msit_alias_torchrun_and_our_flags(tmp_path: Path, fake_bin: Path) -> None:
    bad = csv_file(tmp_path, "key\n3\n")
    result = dump(
        tmp_path,
        "logitsdump",
        "-e",
        "torchrun --nproc_per_node 1 --no-python modeltest",
        "-bcr",
        str(bad),
        "--resume",
        "--logits-fp32",
        fake_bin=fake_bin,
    )
    assert result.returncode == 0, result.stderr
    got = fake_record(fake_bin)
    assert got["argv"][1:] == ["--nproc_per_node", "1", "--no-python", "modeltest"]
    assert got["BAD_CASE_LIST"] == "[3]" and got["LOGITS_DUMP_TOKEN_MAX_LENGTH"] == "1"
    assert got["LOGITSDUMP_RESUME"] == "1" and got["LOGITSDUMP_LOGITS_FP32"] == "1"


def test_summary_names_folder_and_counts(tmp_path: Path, fake_bin: Path) -> None:
    bad = csv_file(tmp_path, "key\n1\n2\n3\n")
    result = dump(
        tmp_path,
        "dump",
        "-e",
        "modeltest --output_dir out",
        "-bcr",
        str(bad),
        "-tr",
        "2",
        fake_bin=fake_bin,
        FAKE_MODE="write",
        FAKE_LIMIT="1",
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out/data/CPU/precision_test/boolq/fp32/fake/logits"
    assert f"logits folder: {folder} (1 cases, 2 files)" in result.stdout
    assert "dumped 1 of 3 bad cases, 2 logits files" in result.stdout
    assert "only 1 of 3 bad cases were dumped" in result.stderr


# ---- bad input (msit-cli.md §3 item 5) ----------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_bad_token_range(tmp_path: Path, fake_bin: Path, value: str) -> None:
    bad = csv_file(tmp_path, "key\n1\n")
    result = dump(tmp_path, "dump", "-e", "modeltest", "-bcr", str(bad), "-tr", value, fake_bin=fake_bin)
    assert result.returncode == 2 and "--token-range" in result.stderr


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        ("python run.py", 1, "must start with torchrun, modeltest or logitsdump"),
        ("", 1, "the command to run is empty"),
        ("modeltest; rm -rf /", 2, "unsafe character"),
        ("model_test --x", 1, "command not found on PATH: model_test"),
    ],
)
def test_bad_command(tmp_path: Path, fake_bin: Path, command: str, code: int, message: str) -> None:
    bad = csv_file(tmp_path, "key\n1\n")
    result = dump(tmp_path, "dump", "-e", command, "-bcr", str(bad), fake_bin=fake_bin)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_modeltest(tmp_path: Path) -> None:
    bad = csv_file(tmp_path, "key\n1\n")
    result = dump(tmp_path, "dump", "-e", "modeltest", "-bcr", str(bad), fake_bin=None)
    assert result.returncode == 1 and "command not found on PATH: modeltest" in result.stderr


def test_child_failure(tmp_path: Path, fake_bin: Path) -> None:
    bad = csv_file(tmp_path, "key\n1\n")
    result = dump(tmp_path, "dump", "-e", "modeltest", "-bcr", str(bad), fake_bin=fake_bin, FAKE_MODE="exit3")
    assert result.returncode == 1
    assert "child command exited with status 3" in result.stderr
    assert "the child failed" in result.stderr and "hello from the child" in result.stdout


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("nope.csv", None, "does not exist"),
        ("bad.csv", "id\n1\n", "no 'key' column"),
        ("bad.csv", "", "empty (0 bytes)"),
        ("bad.csv", "key,passed\n", "no bad cases"),
        ("bad.csv", "key\nfoo/1\n", "key 'foo/1' on line 2 is not a row index"),
        ("bad.csv", "key\n-1\n", "negative key '-1'"),
        ("bad.csv", "key,passed\n1,true\n,true\n", "empty key cell on line 3"),
        ("bad.csv", "key\n1\nHumanEval/2\n", "mixes int and string keys"),
        ("bad.txt", "key\n1\n", "not a .csv file"),
    ],
)
def test_bad_csv(tmp_path: Path, fake_bin: Path, name: str, text: str | None, message: str) -> None:
    if text is not None:
        csv_file(tmp_path, text, name)
    result = dump(tmp_path, "dump", "-e", "modeltest", "-bcr", str(tmp_path / name), fake_bin=fake_bin)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (fake_bin / "record.json").exists()


# ---- signals and the environment ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "signum", "code"),
    [("sleep", signal.SIGINT, 130), ("sleep", signal.SIGTERM, 143), ("stubborn", signal.SIGINT, 130)],
)
def test_signal_stops_whole_group(tmp_path: Path, fake_bin: Path, mode: str, signum: int, code: int) -> None:
    bad = csv_file(tmp_path, "key\n1\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "logitsdump", "dump", "-e", "modeltest", "-bcr", str(bad)],
        cwd=tmp_path,
        env=child_env(fake_bin, FAKE_MODE=mode),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (fake_bin / "pids.json").exists():
            assert time.monotonic() < deadline and process.poll() is None, "fake modeltest did not start"
            time.sleep(0.05)
        pids = json.loads((fake_bin / "pids.json").read_text())
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)


def test_in_process_run_leaves_environ_alone(tmp_path: Path, fake_bin: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    bad = csv_file(tmp_path, "key\n4\n")
    before = dict(os.environ)
    assert main(["dump", "-e", "modeltest", "-bcr", str(bad), "-tr", "2"]) == 0
    assert dict(os.environ) == before
    assert fake_record(fake_bin)["BAD_CASE_LIST"] == "[4]"
    monkeypatch.setenv("FAKE_MODE", "exit3")
    before = dict(os.environ)
    assert main(["dump", "-e", "modeltest", "-bcr", str(bad)]) == 1
    assert dict(os.environ) == before


# ---- finding what was written -------------------------------------------------------------------


def test_output_dir_of() -> None:
    assert output_dir_of(["modeltest", "--output_dir", "a"]) == "a"
    assert output_dir_of(["modeltest", "--output-dir=b"]) == "b"
    assert output_dir_of(["modeltest", "--tp", "1"]) == ""


def _manifest_record(key: int) -> CaseManifest:
    return CaseManifest(
        task="boolq", subject="dev", key=key, index=key, files=(f"logits_dev_{key}_0.pth",), input_token_ids=(),
        output_token_ids=(), output_tokens=(), output_text="", query="", prompt_sha256="", model_name="m",
        model_path="", dtype="fp32", logits_dtype="fp32", vocab_size=1, device="cpu",
    )


def test_only_the_folders_this_run_wrote_are_counted(tmp_path: Path) -> None:
    """A folder written a moment before the launch (the golden dump into the same output_dir) is not this
    run's; a changed folder without a summary (modeltest's) is; a summary names the run that wrote it."""
    old = tmp_path / "data/CPU/precision_test/boolq/fp32/m/logits"  # the dump just before, same output_dir
    old.mkdir(parents=True)
    (old / "logits_dev_1_0.pth").write_bytes(b"")
    append_manifest(old, _manifest_record(1))
    write_dump_summary(old, DumpSummary(1, 1, 1, "the-golden-run"))
    before = snapshot_logits_folders(tmp_path)
    new = tmp_path / "data/CPU/precision_test/boolq/bf16/m/logits"  # what "the runner" writes now
    new.mkdir(parents=True)
    for name in ("logits_dev_1_0.pth", "logits_dev_1_1.pth", "logits_dev_2_0.pth"):
        (new / name).write_bytes(b"")
    append_manifest(new, _manifest_record(1))
    folders = written_folders(tmp_path, before, "this-run")
    # no summary: changed, so counted; by what its manifest lists (case 1's one file), not every file there
    assert [(f.path, f.cases, f.files) for f in folders] == [(new, 1, 1)]
    write_dump_summary(new, DumpSummary(1, 1, 1, "this-run"))
    assert [f.path for f in written_folders(tmp_path, before, "this-run")] == [new]
    # a dump beside this one into the same output_dir: its folder changed too, but its summary is not ours
    write_dump_summary(old, DumpSummary(1, 1, 1, "a-concurrent-run"))
    assert [f.path for f in written_folders(tmp_path, before, "this-run")] == [new]
    assert [f.path for f in written_folders(tmp_path, before, "a-concurrent-run")] == [old]


def test_a_folder_without_a_manifest_counts_its_logits_files(tmp_path: Path) -> None:
    """A real modeltest writes no manifest: its changed folder counts its logits files and their keys."""
    folder = tmp_path / "data/NPU/precision_test/boolq/fp16/m/logits"
    folder.mkdir(parents=True)
    before = snapshot_logits_folders(tmp_path)
    for name in ("logits_dev_1_0.pth", "logits_dev_1_1.pth", "logits_dev_2_0.pth", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert [(f.cases, f.files) for f in written_folders(tmp_path, before, "this-run")] == [(2, 3)]


@pytest.mark.slow
def test_golden_then_test_into_one_output_dir_count_their_own(tmp_path: Path, model_yaml, task_yaml) -> None:
    """The golden and the test dump share --output_dir and run back to back: the second reports its own
    cases and files (it counted the golden folder too: "dumped 4 of 2 bad cases")."""
    bad = csv_file(tmp_path, "key,passed_golden,passed_test\n2,true,false\n11,false,true\n")
    env_bin = Path(sys.executable).parent
    for dtype in ("fp32", "bf16"):
        for done in (tmp_path / "out/data").glob("*/*/*/*/*/logits"):  # the golden dump finished just now
            os.utime(done)
            os.utime(done / "manifest.jsonl")
        command = (f"logitsdump eval --model_config_path {model_yaml(dtype)} --task_config_path {task_yaml('boolq')} "
                   "--output_dir out --device cpu")
        result = dump(tmp_path, "dump", "-e", command, "-bcr", str(bad), "-tr", "2", fake_bin=env_bin)
        assert result.returncode == 0, result.stderr
        folder = tmp_path / f"out/data/CPU/precision_test/boolq/{dtype}/tiny_llama/logits"
        assert f"logits folder: {folder} (2 cases, 2 files)" in result.stdout
        assert "dumped 2 of 2 bad cases, 2 logits files" in result.stdout, result.stdout
        assert result.stdout.count("logits folder:") == 1


# ---- end to end with our own runner -------------------------------------------------------------


@pytest.mark.slow
def test_dump_with_logitsdump_eval_and_a_long_list(tmp_path: Path, model_yaml, task_yaml) -> None:
    """30,002 keys: BAD_CASE_LIST would not fit the environment, so it travels in a file."""
    keys = [1, 3, *range(1_000_000, 1_030_000)]
    bad = csv_file(tmp_path, "key,passed_golden,passed_test\n" + "".join(f"{k},true,false\n" for k in keys))
    command = (
        f"logitsdump eval --model_config_path {model_yaml('fp32')} --task_config_path {task_yaml('boolq')} "
        "--output_dir out --device cpu"
    )
    env_bin = Path(sys.executable).parent  # the venv's logitsdump script
    leftovers = set(Path(tempfile.gettempdir()).glob("logitsdump-bad-case-list-*"))
    result = dump(tmp_path, "dump", "-e", command, "-bcr", str(bad), "-tr", "2", fake_bin=env_bin)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out/data/CPU/precision_test/boolq/fp32/tiny_llama/logits"
    assert f"logits folder: {folder} (2 cases, 2 files)" in result.stdout
    assert "30000 of the 30002 bad cases match no row of the dataset" in result.stderr
    assert sorted(p.name for p in folder.glob("*.pth")) == [
        "logits_dev.jsonl_1_0.pth",
        "logits_dev.jsonl_3_0.pth",
    ]
    # none of ours is left (another process's may come and go meanwhile: /tmp is shared)
    assert set(Path(tempfile.gettempdir()).glob("logitsdump-bad-case-list-*")) - leftovers == set()
