# ruff: noqa: E501  (the coverage table in the docstring)
"""Faults during a real dump (`logitsdump dump -e "logitsdump eval ..."` on the tiny model):
disk full, the runner killed with SIGKILL, SIGINT/SIGTERM to `dump`, and the modes of every file
a full eval + bcanalyze + dump + compare writes.

Already covered elsewhere (not repeated here):
| case | test |
|---|---|
| SIGINT/SIGTERM to dump with a stubborn fake child: group killed, 130/143 | tests/test_dump_cli.py::test_signal_stops_whole_group |
| a crash simulated by hand, then resume | tests/test_dump_runner.py::test_resume_completes_a_partial_dump |
| atomic write leaves nothing on error | tests/test_fsutil.py::test_atomic_open_leaves_nothing_on_error |
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from robust_helpers import (
    children_of,
    cli,
    env,
    files_under,
    group_members,
    logits_dir,
    one_error_line,
    runner_command,
    stop,
    wait_for,
)

from logitsdump import store
from logitsdump.cli import main
from logitsdump.demo import examples
from logitsdump.runner.evaluate import EvalOptions, run_eval

from helpers import alive

pytestmark = pytest.mark.slow  # every test runs the tiny model (a real dump, or eval)

#: Every GSM8K row of the sample dataset, 6 tokens each: 132 files, about 1.5 s of dumping.
KEYS = list(range(22))
TOKENS = 6


def bad_case_csv(folder: Path) -> Path:
    path = folder / "bad.csv"
    path.write_text("key,passed_golden,passed_test\n" + "".join(f"{k},true,false\n" for k in KEYS))
    return path


def pth_names(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.pth")} if folder.is_dir() else set()


def temp_leftovers(root: Path) -> list[Path]:
    return sorted(p for p in files_under(root) if p.name.endswith(".tmp"))


def assert_whole_files(folder: Path, reference: Path) -> None:
    """Every .pth present is a complete file, equal to the uninterrupted run's bit for bit."""
    for name in pth_names(folder):
        saved = torch.load(folder / name, weights_only=True)
        assert torch.equal(saved, torch.load(reference / name, weights_only=True)), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted dump, run in this process (same code, one thread, CPU)."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BAD_CASE_LOGITS_DUMP", "True")
        patch.setenv("LOGITS_DUMP_TOKEN_MAX_LENGTH", str(TOKENS))
        patch.setenv("BAD_CASE_LIST", repr(KEYS))
        result = run_eval(EvalOptions(str(examples.model_config("fp32")), str(examples.task_config("gsm8k")),
                                      output_dir=str(root), device="cpu"))
    folder = result.layout.logits_dir
    assert len(store.read_manifest(folder)) == len(KEYS)
    return folder


def dump_process(tmp_path: Path, *extra: str, preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "logitsdump", "dump", "-e", runner_command("out"), "-bcr",
         str(bad_case_csv(tmp_path)), "-tr", str(TOKENS), *extra],
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=preexec_fn,
    )


# ---- disk full --------------------------------------------------------------------------------


def _file_size_limit() -> None:
    # vocab.json (1.7 KB) and each .pth (2.6 KB) fit; manifest.jsonl (1.5 KB a case) outgrows it at case 3
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_dump_file_size_limit_mid_dump_then_resume(tmp_path: Path, reference: Path) -> None:
    process = dump_process(tmp_path, preexec_fn=_file_size_limit)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        stop(process)
    assert process.returncode == 1, stderr
    assert "File too large" in stderr and "manifest.jsonl" in stderr and "dump --resume" in stderr
    assert "Traceback" not in stderr
    assert "logitsdump dump: error: the child command exited with status 1" in stderr
    folder = logits_dir(tmp_path / "out")
    written = pth_names(folder)
    assert written and written < pth_names(reference)  # it stopped in the middle
    assert_whole_files(folder, reference)
    assert not temp_leftovers(tmp_path)
    complete = store.read_manifest(folder)  # the cut last line is ignored
    assert complete and all((folder / f).is_file() for r in complete for f in r.files)
    # space is back: --resume completes it, equal to an uninterrupted run
    done = cli("dump", "-e", runner_command("out"), "-bcr", str(tmp_path / "bad.csv"), "-tr", str(TOKENS),
               "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert pth_names(folder) == pth_names(reference)
    assert_whole_files(folder, reference)
    assert [r.index for r in store.read_manifest(folder)] == KEYS


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def test_dump_disk_full_on_a_small_tmpfs(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if not _mount_tmpfs(out, "96k"):
        pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN (the RLIMIT_FSIZE test covers the rest)")
    try:
        process = dump_process(tmp_path)
        try:
            _, stderr = process.communicate(timeout=120)
        finally:
            stop(process)
        assert process.returncode == 1, stderr
        assert "No space left on device" in stderr and "Traceback" not in stderr
        folder = logits_dir(out)
        assert pth_names(folder), "the disk filled up before the first file: make the tmpfs larger"
        assert_whole_files(folder, reference)
        assert not temp_leftovers(out)
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


# ---- SIGKILL to the runner, then --resume -------------------------------------------------------


def test_runner_sigkill_leaves_whole_files_and_resume_completes(tmp_path: Path, reference: Path) -> None:
    folder = logits_dir(tmp_path / "out")
    process = dump_process(tmp_path)
    try:
        wait_for(lambda: len(pth_names(folder)) >= 3, 90, process, "the first logits files")
        # dump's children: the runner and the watchdog that stops the runner's group if dump dies (procguard)
        runners = [pid for pid in children_of(process.pid) if b"eval" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(runners) == 1
        os.kill(runners[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
    finally:
        stop(process)
    assert process.returncode == 1, stderr
    assert "the child command was killed by signal SIGKILL" in stderr
    written = pth_names(folder)
    assert written < pth_names(reference), "the runner finished before it was killed"
    assert_whole_files(folder, reference)
    # temporary files the kill left (if any) are not data to compare ...
    leftovers = temp_leftovers(tmp_path / "out")
    out = tmp_path / "cmp"
    assert main(["compare", "-gp", str(reference), "-mp", str(folder), "-o", str(out)]) == 0
    rows = (next(out.glob("logits_cmp_res_*.csv"))).read_text()
    assert ".tmp" not in rows
    # ... and --resume removes them and completes the dump, equal to an uninterrupted run
    done = cli("dump", "-e", runner_command("out"), "-bcr", str(tmp_path / "bad.csv"), "-tr", str(TOKENS),
               "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert pth_names(folder) == pth_names(reference)
    assert_whole_files(folder, reference)
    assert not [p for p in leftovers if p.exists()] and not temp_leftovers(folder)
    assert [r.index for r in store.read_manifest(folder)] == KEYS


# ---- SIGINT / SIGTERM to dump, with a real runner -------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_dump_stops_real_runner(tmp_path: Path, reference: Path, signum: int, code: int) -> None:
    folder = logits_dir(tmp_path / "out")
    process = dump_process(tmp_path)
    try:
        wait_for(lambda: len(pth_names(folder)) >= 3, 90, process, "the first logits files")
        runner = children_of(process.pid)[0]
        sent = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        stop(process)
    assert process.returncode == code, stderr
    assert took < 10, f"dump took {took:.1f} s to stop"  # 5 s grace, then SIGKILL
    assert f"interrupted by {signal.Signals(signum).name}" in one_error_line(
        subprocess.CompletedProcess([], process.returncode, "", stderr), "dump")
    assert not alive(runner) and not group_members(runner)  # the runner's whole group is gone
    assert pth_names(folder) < pth_names(reference)
    assert_whole_files(folder, reference)
    assert not temp_leftovers(tmp_path / "out"), stderr


# ---- modes of everything we write ---------------------------------------------------------------


def test_nothing_written_is_world_writable_even_under_umask_0(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    debug = "debug/CPU/precision_test/boolq/{0}/tiny_llama/boolq_pa_batch1_tp1_debug_info.csv"
    old = os.umask(0)
    try:
        for dtype in ("fp32", "bf16"):
            assert main(["eval", "--model_config_path", str(examples.model_config(dtype)), "--task_config_path",
                         str(examples.task_config("boolq")), "--output_dir", str(tmp_path / dtype),
                         "--save_debug_enable", "--device", "cpu"]) == 0
        golden, test = (tmp_path / dtype / debug.format(dtype) for dtype in ("fp32", "bf16"))
        bad = tmp_path / "bad"
        assert main(["bcanalyze", "-gp", str(golden), "-mp", str(test), "-o", str(bad)]) == 0
        bad_csv = next(bad.glob("msit_bad_case_result_*.csv"), None)
        if bad_csv is None:  # the sample data has flips today; stay meaningful if that changes
            bad.mkdir(exist_ok=True)
            bad_csv = bad / "keys.csv"
            bad_csv.write_text("key\n1\n2\n")
        assert main(["dump", "-e", runner_command(tmp_path / "dump", "boolq"), "-bcr", str(bad_csv)]) == 0
        folder = logits_dir(tmp_path / "dump", "boolq")
        assert main(["compare", "-gp", str(folder), "-mp", str(folder), "-o", str(tmp_path / "cmp")]) == 0
    finally:
        os.umask(old)
    written = files_under(tmp_path)
    assert {".csv", ".jsonl", ".json", ".pth"} <= {p.suffix for p in written}
    folders = {Path(f) for f, _, _ in os.walk(tmp_path)} - {tmp_path}
    loose = [p for p in written | folders if p.lstat().st_mode & stat.S_IWOTH]
    assert not loose, sorted(map(str, loose))
