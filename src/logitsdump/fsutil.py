"""Small file-system helpers: atomic writes, result sets, safe names, output names that are never
reused, and opening inputs safely.

Every file logitsdump writes goes to a temporary name in the destination
folder and is renamed into place, so a killed run leaves whole files or none;
the files of one run (`result_set`) are all renamed at the end, so they appear
together or not at all. Every input is opened by `open_input` / `read_input`:
regular files only (a FIFO or a device would block or never end), small ones
with a size cap.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO

#: Files we create are never world-writable (rw-r--r--, less what the umask removes).
FILE_MODE = 0o644
#: Folders we create are never world-writable either (rwxr-xr-x, less what the umask removes).
DIR_MODE = 0o755
#: Write failures the user must fix (space, quota, file-size limit, permissions): one line, no traceback.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=@,-]")


#: How a temporary file is created: new (never an existing file or link), closed in child processes.
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync and rename it to `path`.

    On any exception, Ctrl-C included, the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    with write_errors(target):
        make_dirs(target.parent)
        with temporary_file(target.parent, f".{target.name}.", ".tmp") as (fd, tmp_name):
            with os.fdopen(fd, mode, **kwargs) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, FILE_MODE & ~current_umask())
            os.replace(tmp_name, target)


@contextlib.contextmanager
def temporary_file(folder: str | os.PathLike[str], prefix: str, suffix: str) -> Iterator[tuple[int, str]]:
    """Create a new file (mode 0600) in `folder`; yield its descriptor (the caller closes it) and name.

    The file is removed on the way out unless it was renamed away. Unlike `tempfile.mkstemp`, the
    name is known before the file exists, so it is removed even when a KeyboardInterrupt lands just
    after creation (Python runs a pending signal's handler at any later call).
    """
    name: str | None = None
    try:
        while True:
            name = os.path.join(folder, f"{prefix}{secrets.token_hex(4)}{suffix}")
            try:
                fd = os.open(name, _TEMP_FLAGS, 0o600)
                break
            except FileExistsError:
                name = None  # somebody else's file: never removed by us
        yield fd, name
    finally:
        if name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


@contextlib.contextmanager
def write_errors(path: str | os.PathLike[str], what: str = "write") -> Iterator[None]:
    """Turn a disk-full, quota, file-size-limit or permission error while writing `path` (or a name
    too long for its file system) into a one-line `WriteError` (exit status 1) instead of a traceback.

    `what`: the verb of the message (`cannot {what} {path}`). Whether the work can be resumed is the
    caller's to say (`dump` says it; eval, report and compare have nothing to resume).
    """
    from logitsdump.errors import WriteError

    try:
        yield
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise WriteError(f"cannot {what} {shorten(path)}: {os.strerror(err.errno)}: choose a shorter "
                             "output path") from err
        if err.errno not in WRITE_ERRNOS:
            raise
        hint = "free some space" if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else "check permissions"
        raise WriteError(f"cannot {what} {path}: {os.strerror(err.errno)}: {hint} and run again") from err


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """`mkdir -p` whose new folders are never world-writable, whatever the umask.

    (`Path.mkdir(parents=True)` gives parents the umask's default mode: 0777 under umask 0.)
    """
    folder = Path(path)
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for new in reversed(missing):
        with write_errors(new, "create folder"), contextlib.suppress(FileExistsError):
            os.mkdir(new, DIR_MODE)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8, LF line ends) to `path` atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def safe_component(name: str) -> str:
    """Make `name` usable as one path component that cannot escape its folder.

    Separators and odd characters become `_`; `.`/`..`/empty become `_`.
    Ordinary names (letters, digits, `._-`) are returned unchanged.
    """
    cleaned = _UNSAFE_NAME_CHARS.sub("_", name)
    if cleaned in {"", ".", ".."}:
        return "_"
    return cleaned


#: The longest file name we create in an output folder is shorter than this (`logits_cmp_cases_<ts>_N.json`,
#: `msit_bad_case_result_<ts>_N.csv`): a folder is checked with room for it.
OUTPUT_NAME_ALLOWANCE = "n" * 64


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and check that files can be written in it.

    Raises `UserError` (one line) when it cannot; call this before doing work.
    """
    from logitsdump.errors import UserError

    folder = Path(path)
    check_path_fits(folder, "output folder", OUTPUT_NAME_ALLOWANCE)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output path {folder} exists and is not a folder: choose another path")
    try:
        make_dirs(folder)
        _write_probe(folder)
    except OSError as err:
        raise UserError(f"cannot write in output folder {folder}: {err.strerror or err}") from err
    return folder


def check_can_write(path: str | os.PathLike[str], what: str = "output folder") -> None:
    """Raise a one-line `UserError` unless files can be created in folder `path`, or it can be created.

    Creates nothing that stays: it writes a test file in `path`, or in its nearest existing parent when
    `path` does not exist yet (for commands that create their folder only when they have something to write).
    """
    from logitsdump.errors import UserError

    folder = Path(path)
    check_path_fits(folder, what, OUTPUT_NAME_ALLOWANCE)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {folder}: {existing} exists and is not a folder: choose another path")
    try:
        _write_probe(existing)
    except OSError as err:
        raise UserError(f"cannot write in {what} {folder}: {err.strerror or err}") from err


def _write_probe(folder: Path) -> None:
    """Create and remove a file in `folder` (raises OSError when files cannot be created there)."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
        pass


#: Used where the file system cannot tell its limits (POSIX minimums are smaller; Linux's are these).
DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096


def check_path_fits(path: str | os.PathLike[str], what: str, longest_child: str = "") -> None:
    """Raise a one-line `UserError` when `path` (with `longest_child`, the longest name we will create
    in it, appended) cannot exist: a component or the whole path longer than its file system allows.

    Called on every input and output path before any work, so a long `-o` or model name fails at
    once instead of after an evaluation (ENAMETOOLONG).
    """
    from logitsdump.errors import UserError

    full = Path(path) / longest_child if longest_child else Path(path)
    name_max, path_max = _limits(full)
    for part in full.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise UserError(f"{what} {shorten(path)}: a name in it ({shorten(part, 24)}) is {size} bytes long, "
                            f"more than the {name_max} its file system allows: choose a shorter name")
    size = len(os.fsencode(os.path.abspath(full)))
    if size >= path_max:
        raise UserError(f"{what} {shorten(path)}: with the file names it will hold the path is {size} bytes "
                        f"long, more than the {path_max - 1} its file system allows: choose a shorter path")


def _limits(path: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the file system of `path`'s nearest existing folder."""
    folder = Path(os.path.abspath(path))
    while True:
        try:
            if folder.is_dir():
                break
        except OSError:
            pass
        if folder.parent == folder:
            return DEFAULT_NAME_MAX, DEFAULT_PATH_MAX
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX, DEFAULT_PATH_MAX


def shorten(text: str | os.PathLike[str], keep: int = 60) -> str:
    """`text`, cut in the middle past `keep` characters, so one message stays one readable line."""
    text = str(text)
    return text if len(text) <= keep else f"{text[: keep // 2]}...{text[-keep // 2:]} ({len(text)} characters)"


def timestamp(now: datetime | None = None) -> str:
    """`YYYYmmddHHMMSS` in local time: msit's file-name stamp."""
    return (now or datetime.now()).strftime("%Y%m%d%H%M%S")


#: How many `_N` suffixes `claim_stamped` tries before giving up.
MAX_SUFFIX = 10_000


@contextlib.contextmanager
def claim_stamped(
    folder: str | os.PathLike[str], stamp: str, names: Callable[[str], Sequence[str]]
) -> Iterator[tuple[Path, ...]]:
    """The output paths of one run: `names(tag)` for the first tag of `stamp`, `stamp_1`, `stamp_2`, ...
    of which no file exists yet; never an existing file.

    The tag is claimed by creating the first path exclusively (`O_EXCL`), empty, so that runs started
    in the same second into the same folder get distinct tags; the caller replaces it with the real
    file (atomically). If the block raises, a claim still empty is removed.
    """
    from logitsdump.errors import DataError

    base = Path(folder)
    for number in range(MAX_SUFFIX):
        paths = tuple(base / name for name in names(stamp if number == 0 else f"{stamp}_{number}"))
        if any(os.path.lexists(p) for p in paths):
            continue
        try:
            fd = os.open(paths[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            continue  # another run claimed this tag just now
        except OSError as err:
            with write_errors(paths[0]):
                raise
            raise DataError(f"cannot create {paths[0]}: {err.strerror or err}") from err
        os.close(fd)
        break
    else:
        raise DataError(f"too many output files for {stamp} in {base}: clear the folder")
    try:
        yield paths
    except BaseException:
        with contextlib.suppress(OSError):
            if os.stat(paths[0]).st_size == 0:
                os.unlink(paths[0])
        raise


# ---- the files of one run: all or none ---------------------------------------------------------


@contextlib.contextmanager
def result_set(paths: Sequence[str | os.PathLike[str]]) -> Iterator[tuple[Path, ...]]:
    """Temporary names for the files of one run, renamed to `paths` only when the block succeeds.

    The caller writes each file to the temporary name given in its place (any writer: `atomic_open`,
    `write_csv`, ...). On success every file is renamed into place, the first of `paths` last (readers
    that find a run by its first file see it only when it is whole); on any exception, Ctrl-C
    included, every temporary (and anything already renamed by this call) is removed, so a run's
    files appear together or not at all. A path that already exists is replaced (the claim of
    `claim_stamped`).
    """
    targets = [Path(p) for p in paths]
    staged = [t.with_name(f".{t.name}.{secrets.token_hex(4)}.part") for t in targets]
    placed: list[Path] = []
    try:
        yield tuple(staged)
        missing = [t for t, s in zip(targets, staged, strict=True) if not os.path.lexists(s)]
        if missing:
            raise RuntimeError(f"result_set: {missing[0].name} was not written")
        order = [*range(1, len(targets)), 0]
        for i in order:
            with write_errors(targets[i]):
                os.replace(staged[i], targets[i])
            placed.append(targets[i])
    except BaseException:
        for path in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for path in placed:
            if path != targets[0]:  # the first is a claim the caller removes
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        raise


# ---- opening inputs ------------------------------------------------------------------------------

#: Size caps of the small inputs read whole into memory (bytes).
TOLERANCES_MAX_BYTES = 1 << 20
CONFIG_MAX_BYTES = 16 << 20
JSON_SIDECAR_MAX_BYTES = 64 << 20
LIST_FILE_MAX_BYTES = 16 << 20

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """`a FIFO`, `a folder`, ... for a `st_mode` that is not a regular file's."""
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def not_a_file(path: str | os.PathLike[str], what: str, mode: int) -> str:
    """The one-line message for an input that is not a regular file."""
    return f"{what} {path} is not a file: it is {file_kind(mode)} (only regular files are read)"


def open_regular(path: str | os.PathLike[str], what: str, *, max_bytes: int | None = None,
                 error: type[Exception] | None = None) -> int:
    """A read-only descriptor of `path` once it is known to be a regular file (at most `max_bytes` long).

    Opened non-blocking, so that a FIFO cannot hang us, then checked with `fstat` on the descriptor
    itself (no window in which the path could be swapped). Raises `error` (default `DataError`) with
    one line naming `what` and the path: missing, unreadable, not a regular file, or too large.
    """
    from logitsdump.errors import DataError

    error = error or DataError
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(not_a_file(path, what, info.st_mode))
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(f"{what} {path} is {info.st_size} bytes, more than the {max_bytes} such a file may have: "
                        "is it the right file?")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~getattr(os, "O_NONBLOCK", 0))
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str | os.PathLike[str], what: str, *, error: type[Exception] | None = None) -> None:
    """Refuse in one line an existing `path` that is not a regular file (a FIFO, a device, a folder);
    a missing path is left to the caller's own message."""
    from logitsdump.errors import DataError

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise (error or DataError)(not_a_file(path, what, mode))


def open_input(path: str | os.PathLike[str], what: str, mode: str = "r", *, max_bytes: int | None = None,
               error: type[Exception] | None = None, **kwargs) -> IO:
    """`open(path, mode, **kwargs)` for reading, once `open_regular` has checked the file."""
    if any(flag in mode for flag in "wax+"):
        raise ValueError("open_input opens for reading only")
    return os.fdopen(open_regular(path, what, max_bytes=max_bytes, error=error), mode, **kwargs)


def read_input(path: str | os.PathLike[str], what: str, max_bytes: int, *,
               error: type[Exception] | None = None) -> bytes:
    """The whole content of a small regular file, at most `max_bytes` (also when it grows while read)."""
    from logitsdump.errors import DataError

    with open_input(path, what, "rb", max_bytes=max_bytes, error=error) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as err:
            raise (error or DataError)(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise (error or DataError)(f"{what} {path} is more than the {max_bytes} bytes such a file may have: "
                                   "is it the right file?")
    return data


def read_input_text(path: str | os.PathLike[str], what: str, max_bytes: int, *,
                    error: type[Exception] | None = None) -> str:
    """`read_input` decoded as UTF-8 (a one-line error when it is not)."""
    from logitsdump.errors import DataError

    data = read_input(path, what, max_bytes, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise (error or DataError)(f"cannot read {what} {path}: it is not UTF-8 text") from None
