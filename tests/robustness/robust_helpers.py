"""Helpers of the robustness suite: running the installed CLI as a user would, reading the tree it left."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from logitsdump.demo import examples
from logitsdump.launch import live_processes

from helpers import cli_env

#: The venv's bin folder: `logitsdump` for `dump -e "logitsdump eval ..."`.
VENV_BIN = Path(sys.executable).parent
#: Linux capabilities that let root read a chmod-000 file.
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_PR_CAPBSET_DROP = 24


def env(**extra: str) -> dict[str, str]:
    """cli_env() with the venv first on PATH (so `logitsdump` resolves to this checkout)."""
    base = cli_env(**extra)
    base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
    return base


def cli(*args: str, cwd: Path, timeout: float = 120, preexec_fn: Callable[[], None] | None = None,
        **extra: str) -> subprocess.CompletedProcess:
    """`python -m logitsdump ARGS` in `cwd`, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "logitsdump", *args], cwd=cwd, env=env(**extra), capture_output=True,
        text=True, timeout=timeout, preexec_fn=preexec_fn,
    )


def one_error_line(done: subprocess.CompletedProcess, command: str) -> str:
    """The one `logitsdump CMD: error: ...` line of stderr; fails on a traceback or extra lines."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith(f"logitsdump {command}: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def runner_command(output_dir: Path | str, task: str = "gsm8k", dtype: str = "fp32",
                   task_yaml: Path | None = None) -> str:
    """`logitsdump eval ...` as `dump -e` takes it (split with shell rules, run without a shell: quote a
    path with spaces, e.g. with shlex.quote)."""
    return (
        f"logitsdump eval --model_config_path {examples.model_config(dtype)} "
        f"--task_config_path {task_yaml or examples.task_config(task)} --output_dir {output_dir} --device cpu"
    )


def logits_dir(output_dir: Path, task: str = "gsm8k", dtype: str = "fp32") -> Path:
    return output_dir / "data" / "CPU" / "precision_test" / task / dtype / "tiny_llama" / "logits"


def files_under(root: Path) -> set[Path]:
    """Every file and symlink under `root` (not following links)."""
    found = set()
    for folder, dirs, files in os.walk(root):
        found.update(Path(folder) / name for name in files)
        found.update(Path(folder) / name for name in dirs if (Path(folder) / name).is_symlink())
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    return [pid for pid, _parent, group in live_processes() if group == pgid]


def children_of(pid: int) -> list[int]:
    """Live direct children of `pid`."""
    return [child for child, parent, _group in live_processes() if parent == pid]


def wait_for(predicate: Callable[[], bool], timeout: float, process: subprocess.Popen | None = None,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def stop(process: subprocess.Popen) -> None:
    """Leave nothing running: kill `process` (and its own group when it leads one)."""
    if process.poll() is None:
        process.kill()
        process.wait()


def _drop_read_override() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unreadable_preexec(probe_dir: Path) -> Callable[[], None] | None:
    """A preexec_fn under which chmod 000 really blocks reads, or None when no change is needed.

    Tests run as root, where permission bits do not stop reads. The child then drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its bounding set before exec, so it is
    root without the right to ignore file modes. Raises `RuntimeError` when that is impossible.
    """
    probe = probe_dir / ".probe-unreadable"
    probe.write_text("x")
    probe.chmod(0)
    try:
        if os.geteuid() != 0:
            return None
        done = subprocess.run(["cat", str(probe)], preexec_fn=_drop_read_override, capture_output=True)
        if done.returncode == 0:
            raise RuntimeError("cannot make a file unreadable for root: the capability drop did not work")
        return _drop_read_override
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"cannot make a file unreadable for root: {err}") from err
    finally:
        probe.unlink()


