"""Running untrusted code (a dataset's tests with a model's completion: HumanEval, HumanEval-X) behind a
boundary the system offers, or not at all unless the user opts in.

The boundary (`confine.py`, the child side; checked once per process by `boundary()`, which runs it on a
one-line program): Linux user, network, PID, IPC and UTS namespaces and Landlock (both available to
root and to ordinary users, no helper program needed). The code then
- writes only below its own fresh temporary folder (and, for Go, its build cache), reads and executes only
  the system folders, the Python installation and the toolchain's folder (`READ_ONLY`, `ETC_FILES`);
- has no network (a new network namespace: no interface up; TCP is also denied by Landlock);
- sees and signals no process but its own (a new PID namespace, its own session, Landlock's signal scope);
- runs without capabilities or new privileges, with limits on address space, CPU time, file size,
  processes (`MAX_PROCESSES`, counted in its own user namespace, so they bind root too) and open files,
  and a wall-clock timeout; when it ends (or our process dies) every process it started is killed.
Where the system offers no boundary (no Landlock, user namespaces disabled), `require` refuses in one
line, before the model loads, unless `LOGITSDUMP_ALLOW_CODE_EVAL=1` is set (as lm-eval's
`HF_ALLOW_CODE_EVAL` and bigcode-evaluation-harness's `--allow_code_execution`): then the code runs as the
current user with the resource limits only. docs/security.md states the same.

`run_python` runs a script with this interpreter in isolated mode (`-I`); `run_command` runs a program
(g++, a compiled binary, go, javac/java, node) the same way. Neither raises for what the code does.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from logitsdump.errors import ConfigError
from logitsdump.logs import get_logger
from logitsdump.runner.confine import FAILED, PROBE_OK

#: Default address-space limit of the child (bytes).
MEMORY_LIMIT = 1 << 30
#: Default limit on the size of any file the child writes, its captured output included (bytes).
FILE_SIZE_LIMIT = 16 << 20
#: How much of stdout / stderr is kept in the result (characters, the end is kept).
OUTPUT_TAIL = 4000
#: Processes and threads the code may have at once inside the boundary (a fork bomb stops there).
MAX_PROCESSES = 256
#: Files the code may have open at once.
MAX_OPEN_FILES = 1024
#: The environment variable that allows running the code without a boundary.
ALLOW_ENV = "LOGITSDUMP_ALLOW_CODE_EVAL"
#: Folders the code may read and execute (those that exist), besides the Python installation and the
#: toolchain folders a caller names.
READ_ONLY = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
#: What of /etc the toolchains read (the dynamic linker's cache, time zone, the JVM's settings, TLS
#: settings, the user and group names); the rest of /etc (e.g. /etc/shadow) stays out of reach.
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives",
             "/etc/ssl", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group")
#: Device files the code may open (read and write).
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")

log = get_logger("sandbox")


@dataclass(frozen=True)
class Boundary:
    """Whether this system confines untrusted code (`available`), and why not (`reason`)."""

    available: bool
    reason: str = ""


@functools.lru_cache(maxsize=1)
def boundary() -> Boundary:
    """Run the confinement once on a program that only prints a line: it works here, or why not."""
    if not sys.platform.startswith("linux"):
        return Boundary(False, f"namespaces and Landlock are Linux's; this is {sys.platform}")
    if os.geteuid() == 0 and _pids_hierarchy() is None:
        return Boundary(False, "as root, the number of processes can only be capped by a pids cgroup, and none "
                               "can be created here")
    with tempfile.TemporaryDirectory(prefix="logitsdump-sandbox-probe-") as folder:
        work = Path(folder)
        try:
            with _process_cap(MAX_PROCESSES) as cgroup:
                result = _run_limited(_bootstrap("probe", work, (), (), {}, cgroup=cgroup), work, _minimal_env(work),
                                      10.0, work / "out", work / "err")
        except OSError as err:
            return Boundary(False, f"cannot start the sandbox: {err.strerror or err}")
    if result.returncode == 0 and PROBE_OK in result.stdout:
        return Boundary(True)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return Boundary(False, lines[-1].removeprefix("logitsdump sandbox: ") if lines else result.status)


# ---- the process cap: RLIMIT_NPROC in the user namespace, or for root a pids cgroup ---------------
# Linux exempts root (uid 0 outside any namespace) from RLIMIT_NPROC even inside a user namespace; for
# root, the sandbox's processes go into a cgroup of their own whose pids.max is the cap.


@functools.lru_cache(maxsize=1)
def _pids_hierarchy() -> Path | None:
    """The pids cgroup folder this process is in, when a sub-folder can be created there (cgroup v1's
    pids hierarchy, or v2 with the pids controller enabled for children); None otherwise."""
    mounts, paths = {}, {}
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _dev, point, kind, options, *_ = line.split()
            if kind == "cgroup" and "pids" in options.split(","):
                mounts["v1"] = point
            elif kind == "cgroup2":
                mounts.setdefault("v2", point)
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            number, controllers, path = line.split(":", 2)
            if "pids" in controllers.split(","):
                paths["v1"] = path
            elif number == "0" and not controllers:
                paths["v2"] = path
    except (OSError, ValueError):
        return None
    for version in ("v1", "v2"):
        if version not in mounts or version not in paths:
            continue
        folder = Path(mounts[version]) / paths[version].lstrip("/")
        if version == "v2" and "pids" not in _read(folder / "cgroup.subtree_control").split():
            continue
        probe = folder / f"logitsdump-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            continue
        return folder
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@contextlib.contextmanager
def _process_cap(limit: int) -> Iterator[str | None]:
    """For root: a new pids cgroup capped at `limit` (its folder; the bootstrap moves itself in), removed
    with whatever is left in it afterwards. Others: None (RLIMIT_NPROC binds them)."""
    if os.geteuid() != 0:
        yield None
        return
    base = _pids_hierarchy()
    if base is None:
        raise OSError("no pids cgroup can be created here")
    folder = base / f"logitsdump-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()
    try:
        (folder / "pids.max").write_text(f"{limit}\n")
        yield str(folder)
    finally:
        for _ in range(100):  # kill what is left, until the kernel lets the folder go
            for pid in _read(folder / "cgroup.procs").split():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.01)


def allowed_without_boundary() -> bool:
    """Whether the user opted in to running untrusted code unconfined (`LOGITSDUMP_ALLOW_CODE_EVAL=1`)."""
    return os.environ.get(ALLOW_ENV, "").strip() == "1"


def require(what: str) -> bool:
    """Before running `what`'s code: True when the boundary is there, False when the user opted in to
    running without it (logged once); a one-line `ConfigError` otherwise."""
    found = boundary()
    if found.available:
        return True
    if allowed_without_boundary():
        _warn_unconfined(found.reason)
        return False
    raise ConfigError(
        f"{what} runs the dataset's test code with the model's completions, and this system offers no sandbox "
        f"for it ({found.reason}): set {ALLOW_ENV}=1 to run it anyway, as the current user with resource "
        "limits only (docs/security.md)"
    )


@functools.lru_cache(maxsize=1)
def _warn_unconfined(reason: str) -> None:
    log.warning("running untrusted code WITHOUT a sandbox (%s), as %s=1 allows: it runs as the current user, "
                "with resource limits only", reason, ALLOW_ENV)


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


def _minimal_env(home: Path) -> dict[str, str]:
    return {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(home), "TMPDIR": str(home)}


def _read_only(extra: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The folders the code may read: the system's, the Python installation's, `extra`; and /etc's few."""
    python = {sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    etc = [*ETC_FILES, *sorted(glob.glob("/etc/java*"))]
    return [*READ_ONLY, *sorted(python), *(str(p) for p in extra), *etc]


def _bootstrap(mode: str, work: Path, read: Sequence[str | os.PathLike[str]], write: Sequence[str | os.PathLike[str]],
               limits: dict[str, int], confine: bool = True, cgroup: str | None = None) -> list[str]:
    """The child's command line up to the code: this interpreter running `confine` with its settings
    (`confine` False: the user's opt-in, the limits without the boundary; `cgroup`: the pids cgroup to join)."""
    config = {"parent": os.getpid(), "mode": mode, "confine": confine, "read": _read_only(read),
              "write": [str(work), *(str(p) for p in write)], "files": list(DEVICES), "limits": limits,
              "cgroup": cgroup}
    return [sys.executable, "-I", "-B", "-m", "logitsdump.runner.confine", json.dumps(config)]


def _run_limited(args: list[str], cwd: Path, env: dict[str, str], timeout_s: float, out_path: Path,
                 err_path: Path) -> SandboxResult:
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
            _kill_group(process)  # the bootstrap's group; its confined child dies with it (PDEATHSIG)
            process.wait()
    duration = time.monotonic() - start
    result = SandboxResult(returncode, timed_out, _tail(out_path), _tail(err_path), duration)
    if returncode == FAILED and "logitsdump sandbox:" in result.stderr:
        log.warning("%s", result.stderr.strip().splitlines()[-1])
    return result


def _limits(memory_bytes: int | None, cpu_s: int, file_size_bytes: int, max_processes: int | None,
            confined: bool) -> dict[str, int]:
    """The resource limits of the child (-1: left as it is). Outside a user namespace the process count is
    the user's whole count, so it is set only when asked for."""
    processes = max_processes if max_processes is not None else (MAX_PROCESSES if confined else -1)
    return {"RLIMIT_AS": -1 if memory_bytes is None else memory_bytes, "RLIMIT_CPU": cpu_s,
            "RLIMIT_FSIZE": file_size_bytes, "RLIMIT_NPROC": processes, "RLIMIT_NOFILE": MAX_OPEN_FILES}


def run_python(
    code: str,
    timeout_s: float = 3.0,
    *,
    memory_bytes: int = MEMORY_LIMIT,
    file_size_bytes: int = FILE_SIZE_LIMIT,
    max_processes: int | None = None,
    what: str = "this task",
) -> SandboxResult:
    """Run `code` as a script behind the boundary (see the module docstring); never raises for what the
    code does. A `ConfigError` when there is no boundary and no opt-in (`require`).

    `max_processes`: at most this many processes and threads (default `MAX_PROCESSES` inside the boundary;
    without it, RLIMIT_NPROC counts all of the user's processes, so it is left alone unless given).
    """
    confined = require(what)
    with tempfile.TemporaryDirectory(prefix="logitsdump-sandbox-") as folder:
        work = Path(folder)
        script = work / "program.py"
        script.write_text(code, encoding="utf-8")
        out_path, err_path = work / "stdout.txt", work / "stderr.txt"
        limits = _limits(memory_bytes, int(timeout_s) + 1, file_size_bytes, max_processes, confined)
        with _cap(limits, confined) as cgroup:
            args = [*_bootstrap("python", work, (), (), limits, confined, cgroup), str(script)]
            return _run_limited(args, work, _minimal_env(work), timeout_s, out_path, err_path)


def run_command(
    argv: list[str],
    cwd: str | Path,
    timeout_s: float = 30.0,
    *,
    env: dict[str, str] | None = None,
    memory_bytes: int | None = MEMORY_LIMIT,
    file_size_bytes: int = FILE_SIZE_LIMIT,
    max_processes: int | None = None,
    read: Sequence[str | os.PathLike[str]] = (),
    write: Sequence[str | os.PathLike[str]] = (),
    what: str = "this task",
) -> SandboxResult:
    """Run `argv` (its first element an absolute path) in `cwd` behind the boundary, with the limits of
    `run_python`; never raises for what the program does.

    The program writes only below `cwd` (and `write`), and reads the system folders, the folder its
    executable is installed in (`/X` for `/X/bin/tool`) and `read`. `memory_bytes=None` leaves the address
    space unlimited: runtimes that reserve large virtual ranges up front (the JVM, Go, V8) fail under
    RLIMIT_AS, so their own flags cap the heap instead. `env` is the child's whole environment (PATH,
    LANG, HOME and TMPDIR default to minimal values).
    """
    confined = require(what)
    folder = Path(cwd)
    child_env = _minimal_env(folder)
    child_env.update(env or {})
    installed = Path(os.path.realpath(argv[0])).parent
    tool_root = installed.parent if installed.name == "bin" else installed
    limits = _limits(memory_bytes, int(timeout_s) + 1, file_size_bytes, max_processes, confined)
    out_path, err_path = folder / ".sandbox-stdout.txt", folder / ".sandbox-stderr.txt"
    with _cap(limits, confined) as cgroup:
        args = [*_bootstrap("exec", folder, (tool_root, *read), write, limits, confined, cgroup), *argv]
        result = _run_limited(args, folder, child_env, timeout_s, out_path, err_path)
    for path in (out_path, err_path):
        with contextlib.suppress(OSError):
            path.unlink()
    return result


@contextlib.contextmanager
def _cap(limits: dict[str, int], confined: bool) -> Iterator[str | None]:
    """The pids cgroup of one confined run (root only; see `_process_cap`)."""
    if not confined or limits["RLIMIT_NPROC"] < 0:
        yield None
        return
    with _process_cap(limits["RLIMIT_NPROC"]) as cgroup:
        yield cgroup
