"""Running untrusted generated code (Python, or a compiler and its program) in a separate,
limited process.

`run_python` writes the code to a fresh temporary folder and runs it with this
interpreter in isolated mode (`-I`: no user site, no PYTHON* variables, no current
folder on the path), a minimal environment, its own session (so a timeout kills its
whole process group) and resource limits: address space, CPU seconds, file size and,
where the kernel enforces it for this user, the number of processes. The limits are set
by a small bootstrap inside the child, not by `preexec_fn`, which is unsafe in a
threaded parent such as a process running torch.

`run_command` does the same for any program (g++, a compiled binary, go, javac/java, node):
the same bootstrap sets the limits and then replaces itself with the program (`os.execv`).

This is a guard against accidents (endless loops, memory hogs, stray files), not a
security boundary: the code still runs as the current user, with network access.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: Default address-space limit of the child (bytes).
MEMORY_LIMIT = 1 << 30
#: Default limit on the size of any file the child writes, its captured output included (bytes).
FILE_SIZE_LIMIT = 16 << 20
#: How much of stdout / stderr is kept in the result (characters, the end is kept).
OUTPUT_TAIL = 4000

#: The start of both bootstraps: read the limits from argv[1:5]; `cap` lowers one, never above the hard limit.
_CAP = """\
mem, cpu, fsize, nproc = (int(v) for v in sys.argv[1:5])
def cap(kind, value):
    try:
        soft, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
"""

_BOOTSTRAP = "import resource, runpy, sys\n" + _CAP + """\
cap(resource.RLIMIT_AS, mem)
cap(resource.RLIMIT_CPU, cpu)
cap(resource.RLIMIT_FSIZE, fsize)
if nproc >= 0:
    cap(resource.RLIMIT_NPROC, nproc)
path = sys.argv[5]
sys.argv = [path]
del resource, mem, cpu, fsize, nproc, cap
runpy.run_path(path, run_name="__main__")
"""


_EXEC_BOOTSTRAP = "import os, resource, sys\n" + _CAP + """\
if mem >= 0:
    cap(resource.RLIMIT_AS, mem)
cap(resource.RLIMIT_CPU, cpu)
cap(resource.RLIMIT_FSIZE, fsize)
if nproc >= 0:
    cap(resource.RLIMIT_NPROC, nproc)
os.execv(sys.argv[5], sys.argv[5:])
"""


@dataclass(frozen=True)
class SandboxResult:
    """How the child ended. `passed`: it exited with status 0 in time."""

    returncode: int | None  # None when it was killed for running too long
    timed_out: bool
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return not self.timed_out and self.returncode == 0

    @property
    def status(self) -> str:
        """`passed`, `timed out`, `killed by SIGXXX` or `failed: <last stderr line>`."""
        if self.timed_out:
            return "timed out"
        if self.returncode == 0:
            return "passed"
        if self.returncode is not None and self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return "failed: " + (lines[-1] if lines else f"exit status {self.returncode}")


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - OUTPUT_TAIL * 4))
            return handle.read().decode("utf-8", errors="replace")[-OUTPUT_TAIL:]
    except OSError:
        return ""


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _run_limited(
    args: list[str], cwd: Path, env: dict[str, str], timeout_s: float, out_path: Path, err_path: Path
) -> SandboxResult:
    """Run `args` in its own session with output to the two files; kill its whole group afterwards."""
    start = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
        timed_out = False
        try:
            returncode: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out, returncode = True, None
        finally:
            _kill_group(process)  # also ends anything the program left running in its group
            process.wait()
    duration = time.monotonic() - start
    return SandboxResult(returncode, timed_out, _tail(out_path), _tail(err_path), duration)


def run_python(
    code: str,
    timeout_s: float = 3.0,
    *,
    memory_bytes: int = MEMORY_LIMIT,
    file_size_bytes: int = FILE_SIZE_LIMIT,
    max_processes: int | None = None,
) -> SandboxResult:
    """Run `code` as a script in a separate limited process; never raises for what the code does.

    `max_processes` caps RLIMIT_NPROC (a per-user count, so only useful below the number of
    processes the user already runs; ignored for root). None leaves it as it is.
    """
    cpu_s = int(timeout_s) + 1
    with tempfile.TemporaryDirectory(prefix="logitsdump-sandbox-") as folder:
        work = Path(folder)
        script = work / "program.py"
        script.write_text(code, encoding="utf-8")
        out_path, err_path = work / "stdout.txt", work / "stderr.txt"
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": folder, "TMPDIR": folder}
        args = [
            sys.executable, "-I", "-B", "-c", _BOOTSTRAP,
            str(memory_bytes), str(cpu_s), str(file_size_bytes),
            str(-1 if max_processes is None else max_processes), str(script),
        ]  # fmt: skip
        return _run_limited(args, work, env, timeout_s, out_path, err_path)


def run_command(
    argv: list[str],
    cwd: str | Path,
    timeout_s: float = 30.0,
    *,
    env: dict[str, str] | None = None,
    memory_bytes: int | None = MEMORY_LIMIT,
    file_size_bytes: int = FILE_SIZE_LIMIT,
    max_processes: int | None = None,
) -> SandboxResult:
    """Run `argv` (its first element an absolute path) in `cwd`, in its own session, with the limits
    of `run_python`; never raises for what the program does.

    `memory_bytes=None` leaves the address space unlimited: runtimes that reserve large virtual
    ranges up front (the JVM, Go, V8) fail under RLIMIT_AS, so their own flags cap the heap instead.
    `env` is the child's whole environment (PATH, LANG, HOME and TMPDIR default to minimal values).
    """
    folder = Path(cwd)
    child_env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(folder), "TMPDIR": str(folder)}
    child_env.update(env or {})
    args = [
        sys.executable, "-I", "-B", "-c", _EXEC_BOOTSTRAP,
        str(-1 if memory_bytes is None else memory_bytes), str(int(timeout_s) + 1), str(file_size_bytes),
        str(-1 if max_processes is None else max_processes), *argv,
    ]  # fmt: skip
    out_path, err_path = folder / ".sandbox-stdout.txt", folder / ".sandbox-stderr.txt"
    result = _run_limited(args, folder, child_env, timeout_s, out_path, err_path)
    for path in (out_path, err_path):
        with contextlib.suppress(OSError):
            path.unlink()
    return result
