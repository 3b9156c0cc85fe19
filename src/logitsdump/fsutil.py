"""Small file-system helpers: atomic writes, safe names, and output names that are never reused.

Every file logitsdump writes goes to a temporary name in the destination
folder and is renamed into place, so a killed run leaves whole files or none.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
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
