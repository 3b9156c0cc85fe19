"""Validating and running the child command of `dump`.

The command is split into words as a POSIX shell would (quotes group a path with spaces) but never
run through a shell (msit splits on white space and runs no shell either). The child gets a
new environment (os.environ is never modified), inherits stdout/stderr (live output), and runs
in its own session: SIGINT/SIGTERM received by us are forwarded to its whole process group,
which is killed after a grace period, so nothing is left running; when we die without a word
(SIGKILL), `procguard.GroupWatchdog` stops that group.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from logitsdump.errors import LaunchError, UsageError
from logitsdump.fsutil import temporary_file
from logitsdump.logs import get_logger
from logitsdump.procguard import GroupWatchdog
from logitsdump.protocol import ENV_BAD_CASE_LIST, DumpRequest, child_environment, list_fits_environment

#: First words accepted (basename): modeltest's console scripts, torchrun, and our own runner.
ALLOWED_PROGRAMS = ("modeltest", "model_test", "model-test", "torchrun", "logitsdump")
#: Characters that only mean something to a shell; refused unquoted because no shell runs the command.
UNSAFE_CHARACTERS = frozenset(";|&$`<>!(){}*?~")
#: Seconds between forwarding SIGINT/SIGTERM and killing the child's process group.
GRACE_SECONDS = 5.0

log = get_logger("launch")


class Interrupted(LaunchError):
    """We received SIGINT/SIGTERM while the child ran (exit status 128 + signal number)."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name}: the child command and its processes were stopped", exit_code=128 + signum
        )
        self.signum = signum


@dataclass(frozen=True)
class Command:
    """A validated child command: argv, the executable found on PATH, and whether it is our runner."""

    argv: tuple[str, ...]
    executable: str
    is_logitsdump: bool


def split_command(command: str) -> list[str]:
    """Split like a POSIX shell splits words (quotes and backslashes group, e.g. a path with spaces),
    but run nothing through a shell: characters that only mean something to a shell are refused
    unless quoted (UsageError, exit 2); an empty command is refused too (exit 1)."""
    unsafe = sorted(unquoted_shell_characters(command))
    if unsafe:
        shown = " ".join(repr(c) for c in unsafe)
        raise UsageError(
            f"unsafe character(s) {shown} in the command: it is run without a shell, so unquoted "
            "; | & $ ` < > ! ( ) { } * ? ~ are refused (set variables and redirections outside dump; "
            "quote a path that holds them)"
        )
    try:
        argv = shlex.split(command)
    except ValueError as err:  # "No closing quotation", "No escaped character"
        raise UsageError(f"cannot split the command: {err}") from None
    if not argv:
        raise LaunchError('the command to run is empty: give e.g. -e "modeltest --model_config_path ..."')
    return argv


def unquoted_shell_characters(command: str) -> set[str]:
    """The characters of `UNSAFE_CHARACTERS` outside single or double quotes and not escaped by a
    backslash (the quoting rules `shlex.split` applies)."""
    found: set[str] = set()
    quote = ""
    escaped = False
    for char in command:
        if escaped:
            escaped = False
        elif quote == "'":
            quote = "" if char == "'" else quote
        elif char == "\\":
            escaped = True
        elif quote == '"':
            quote = "" if char == '"' else quote
        elif char in "'\"":
            quote = char
        elif char in UNSAFE_CHARACTERS:
            found.add(char)
    return found


def validate_command(command: str | Sequence[str], path: str | None = None) -> Command:
    """Check the command: safe, starts with an allowed program, and that program exists on `path`.

    A string is split by `split_command`; a sequence is taken as the words themselves.
    """
    argv = split_command(command) if isinstance(command, str) else list(command)
    if not argv:
        raise LaunchError('the command to run is empty: give e.g. -e "modeltest --model_config_path ..."')
    program = os.path.basename(argv[0])
    if program not in ALLOWED_PROGRAMS:
        raise LaunchError(f"the command must start with torchrun, modeltest or logitsdump, found {argv[0]!r}")
    executable = shutil.which(argv[0], path=path)
    if executable is None:
        raise LaunchError(f"command not found on PATH: {argv[0]}")
    is_ours = program == "logitsdump" or (
        program == "torchrun" and any(os.path.basename(word) == "logitsdump" for word in argv[1:])
    )
    check_batch_size(argv)
    return Command(tuple(argv), executable, is_ours)


def _is_one(text: str) -> bool:
    try:
        return int(text) == 1
    except ValueError:
        return False


#: The runner flag whose value must be 1 in a logits dump (modeltest's, and our eval's, spellings).
BATCH_SIZE_FLAGS = ("--batch_size", "--batch-size")


def flag_value(argv: Sequence[str], flags: Sequence[str]) -> str | None:
    """The value of the last of `flags` in `argv` (`--flag value` or `--flag=value`); None when absent."""
    value = None
    for i, word in enumerate(argv):
        for flag in flags:
            if word == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif word.startswith(flag + "="):
                value = word[len(flag) + 1 :]
    return value


def check_batch_size(argv: Sequence[str]) -> None:
    """Refuse (UsageError, exit 2) a runner command whose `--batch_size` is not 1: msit's dump
    re-infers each bad case alone, and modeltest dumps nothing at a larger batch size."""
    value = flag_value(argv, BATCH_SIZE_FLAGS)
    if value is not None and not _is_one(value):
        raise UsageError(
            f"the command has --batch_size {value}: a logits dump re-infers each bad case alone, so the "
            "runner needs --batch_size 1 (modeltest writes no logits otherwise)"
        )


def launch(
    command: str | Sequence[str],
    request: DumpRequest,
    *,
    base_env: Mapping[str, str] | None = None,
    grace_seconds: float = GRACE_SECONDS,
) -> None:
    """Run `command` with the dump protocol's environment; return when it succeeded.

    Raises LaunchError (child failed, not found, list too long), UsageError (unsafe command)
    or Interrupted (we got SIGINT/SIGTERM). os.environ is never modified.
    """
    base = dict(os.environ if base_env is None else base_env)
    cmd = validate_command(command, path=base.get("PATH", os.defpath))
    with _list_file(cmd, request) as list_file:
        env = child_environment(base, request, list_file=list_file)
        run_child(cmd, env, grace_seconds=grace_seconds)


@contextlib.contextmanager
def _list_file(cmd: Command, request: DumpRequest) -> Iterator[Path | None]:
    """None when BAD_CASE_LIST fits the environment; else a temporary file (our runner only)."""
    if list_fits_environment(request):
        yield None
        return
    size_kib = len(request.list_literal().encode()) / 1024
    if not cmd.is_logitsdump:
        raise LaunchError(
            f"{ENV_BAD_CASE_LIST} is {size_kib:.0f} KiB, too long for one environment variable "
            "(Linux limit 128 KiB): modeltest could not start (E2BIG). Split the bad-case CSV into "
            "smaller files and run dump once per file"
        )
    with temporary_file(tempfile.gettempdir(), "logitsdump-bad-case-list-", ".txt") as (fd, name):
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(request.list_literal())
        log.info("%s is %.0f KiB: passed to the runner in %s", ENV_BAD_CASE_LIST, size_kib, name)
        yield Path(name)


def run_child(cmd: Command, env: Mapping[str, str], *, grace_seconds: float = GRACE_SECONDS) -> None:
    """Run the child in its own session with inherited stdout/stderr; see `launch`."""
    received: list[int] = []
    process: subprocess.Popen | None = None

    def on_signal(signum: int, _frame) -> None:
        received.append(signum)
        if process is not None:
            _signal_group(process.pid, signal.SIGKILL if len(received) > 1 else signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    watchdog = GroupWatchdog(grace_seconds)  # stops the child's group if we die without saying so (SIGKILL)
    try:
        try:
            process = subprocess.Popen(
                list(cmd.argv), executable=cmd.executable, env=dict(env), start_new_session=True
            )
            watchdog.watch(process.pid)
        except OSError as err:
            if err.errno == errno.E2BIG:
                raise LaunchError(
                    "the command and its environment are too large to start (E2BIG): split the bad-case CSV"
                ) from None
            raise LaunchError(f"cannot start {cmd.argv[0]}: {err.strerror or err}") from None
        if received:
            _signal_group(process.pid, received[0])
        returncode = _wait(process, received, grace_seconds)
        _stop_group(process.pid, received, grace_seconds)
    finally:
        if process is not None and process.poll() is None:  # an unexpected error: leave nothing running
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        watchdog.disarm()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise Interrupted(received[0])
    if returncode < 0:
        raise LaunchError(f"the child command was killed by signal {_signal_name(-returncode)}")
    if returncode != 0:
        raise LaunchError(f"the child command exited with status {returncode}")


def _wait(process: subprocess.Popen, received: list[int], grace_seconds: float) -> int:
    """Wait for the child; after a forwarded signal, SIGKILL its group when the grace period ends."""
    first_signal_at: float | None = None
    while True:
        try:
            return process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
        if received and first_signal_at is None:
            first_signal_at = time.monotonic()
        if first_signal_at is not None and time.monotonic() - first_signal_at > grace_seconds:
            log.warning("the child did not stop within %.0f s: killing its process group", grace_seconds)
            _signal_group(process.pid, signal.SIGKILL)
            first_signal_at = float("inf")


def _stop_group(pgid: int, received: list[int], grace_seconds: float) -> None:
    """After the child exited: stop what is left of its process group (TERM, grace, KILL)."""
    if not _group_alive(pgid):
        return
    if not received:
        log.warning("the child command left processes running: stopping them")
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc").is_dir():
        return True
    return any(group == pgid for _pid, _parent, group in live_processes())


def live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of each process in /proc; zombies waiting to be reaped are left out."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z":
            yield int(entry.name), int(fields[1]), int(fields[2])


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
