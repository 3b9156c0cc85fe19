"""Atomic writes, safe names, CSV neutralisation."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logitsdump import csvsafe, fsutil
from logitsdump.errors import UserError


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), fsutil.atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_mode(tmp_path):
    fsutil.atomic_write_text(tmp_path / "a.txt", "x\n")
    assert (tmp_path / "a.txt").read_text() == "x\n"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("name", "safe"),
    [("dev.jsonl", "dev.jsonl"), ("../x", ".._x"), ("..", "_"), ("", "_"), ("a/b", "a_b"), ("ok-1_2", "ok-1_2")],
)
def test_safe_component(name, safe):
    assert fsutil.safe_component(name) == safe


@pytest.mark.parametrize(
    ("value", "expected"),
    [("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1+2", "'+1+2"), ("@SUM(A1)", "'@SUM(A1)"),
     ("-0.5", "-0.5"), ("-x", "'-x"), ("plain", "plain"), (3, 3), ("1;2_3_0.pth", "1;2_3_0.pth")],
)
def test_neutralise(value, expected):
    assert csvsafe.neutralise(value) == expected


def test_csv_text_has_lf_and_neutralised_cells():
    text = csvsafe.rows_to_csv_text(["a", "b"], [["=1+1", "x,y"], {"a": 1, "b": "-cmd"}])
    assert text == "a,b\n'=1+1,\"x,y\"\n1,'-cmd\n"


def test_ensure_writable_dir(tmp_path):
    assert fsutil.ensure_writable_dir(tmp_path / "new").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a folder"):
        fsutil.ensure_writable_dir(tmp_path / "file")


def test_control_characters_survive_a_round_trip():
    import csv
    import io

    cells = ["a\rb", "c\nd", 'q"uote', "x,y", "\x1c\x02", "", " sp "]
    text = csvsafe.rows_to_csv_text([f"c{i}" for i in range(len(cells))], [cells])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1] == cells


def test_interrupt_right_after_the_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    """A Ctrl-C that arrived a moment earlier runs its handler at the first call after the file exists."""
    real_open = os.open

    def open_then_interrupt(*args, **kwargs):
        os.close(real_open(*args, **kwargs))  # the file exists; its name has not come back yet
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt), fsutil.atomic_open(tmp_path / "out.txt") as handle:
        handle.write("never")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


_WRITE_FOREVER = """
import signal, sys
from logitsdump import fsutil
# what is tested is atomic_open under Ctrl-C, not the signal state this child inherits from pytest
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
signal.signal(signal.SIGINT, signal.default_int_handler)
print("ready", flush=True)
i = 0
while True:
    with fsutil.atomic_open(f"{sys.argv[1]}/f{i % 20}.bin", "wb") as handle:
        handle.write(bytes(4096))
    i += 1
"""


def _process_state(pid: int) -> str:
    """The kernel's view of a stuck process (state, what it waits in, its signal masks), for the message."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError as err:
        return f"no /proc entry ({err})"
    wanted = ("State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    lines = [line for line in status.splitlines() if line.split(":")[0] in wanted]
    return "; ".join(lines) + f"; wchan {wchan}"


def test_sigint_at_random_moments_leaves_no_temporary_file(tmp_path):
    """Real signals: 25 writers, each interrupted at a different moment of its write loop."""
    rng = random.Random(4)
    for n in range(25):
        folder = tmp_path / str(n)
        folder.mkdir()
        writer = subprocess.Popen([sys.executable, "-c", _WRITE_FOREVER, str(folder)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            writer.stdout.readline()
            time.sleep(rng.uniform(0.01, 0.1))
            writer.send_signal(signal.SIGINT)
            # generous: the signal is handled when fsync returns, which a disk busy with other writes delays
            try:
                _, stderr = writer.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"writer {n} still running 120 s after SIGINT: {_process_state(writer.pid)}")
        finally:
            writer.kill()
        assert writer.returncode != 0 and "KeyboardInterrupt" in stderr
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")], stderr
