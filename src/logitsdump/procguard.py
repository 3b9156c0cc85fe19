"""No process of ours outlives the command that started it, and SIGTERM stops every command as SIGINT does.

- `die_with_parent`: the kernel sends this process SIGKILL when its parent dies (Linux's
  `PR_SET_PDEATHSIG`), for the processes we fork ourselves (compare's pool workers, the sandbox).
- `GroupWatchdog`: for a child we do not control (`dump`'s runner: modeltest, torchrun, our eval), which
  runs in its own session with its own children: a small process, in a session of its own, holds the
  read end of a pipe whose write end only `dump` holds. When `dump` ends without saying so (SIGKILL, a
  crash), the pipe reaches end-of-file and the watchdog stops the runner's whole process group (SIGTERM,
  then SIGKILL after the grace period).
- `terminate_like_interrupt`: SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so
  every `finally` runs and the CLI prints one line and exits 143, as SIGINT's 130.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

#: prctl(2) option: the signal sent to this process when its parent dies.
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (handled like Ctrl-C)."""

    signum = signal.SIGTERM


def die_with_parent(parent: int | None = None, signum: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies; exit at once when the parent
    (pid `parent`, when given) is already gone. False where the system has no such request (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:  # it died before the request was made
        os._exit(128 + int(signum))
    return True


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread while the block runs (then the old handler is back)."""
    owner = os.getpid()

    def on_term(signum: int, _frame: object) -> None:
        if os.getpid() != owner:  # a forked child (a pool worker before its initializer ran): the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: The watchdog's program: read the process group, wait for end-of-file; unless told `done`, stop the group.
_WATCHDOG = """\
import os, signal, sys, time
grace = float(sys.argv[1])
line = sys.stdin.readline()
if not line.strip().isdigit():
    sys.exit(0)
pgid = int(line)
if sys.stdin.read().strip() == "done":
    sys.exit(0)
def alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
try:
    os.killpg(pgid, signal.SIGTERM)
except ProcessLookupError:
    sys.exit(0)
deadline = time.monotonic() + grace
while alive() and time.monotonic() < deadline:
    time.sleep(0.05)
if alive():
    os.killpg(pgid, signal.SIGKILL)
"""


class GroupWatchdog:
    """Stops a process group when this process ends without `disarm` (see the module docstring)."""

    def __init__(self, grace_seconds: float) -> None:
        read, self._write = os.pipe()  # both non-inheritable: the runner never holds the write end
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(grace_seconds)], stdin=read,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            os.close(read)

    def watch(self, pgid: int) -> None:
        """The group to stop."""
        os.write(self._write, f"{pgid}\n".encode())

    def disarm(self) -> None:
        """We end as planned (the group was stopped already): the watchdog exits without a signal."""
        if self._write < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._write, b"done\n")
        os.close(self._write)
        self._write = -1
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
