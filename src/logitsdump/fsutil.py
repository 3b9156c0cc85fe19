"""Small file-system helpers: atomic writes and safe names.

Every file logitsdump writes goes to a temporary name in the destination
folder and is renamed into place, so a killed run leaves whole files or none.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: Files we create are never world-writable (rw-r--r--).
FILE_MODE = 0o644

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=@,-]")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync and rename it to `path`.

    On any exception the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, FILE_MODE)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8, LF line ends) to `path` atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def safe_component(name: str) -> str:
    """Make `name` usable as one path component that cannot escape its folder.

    Separators and odd characters become `_`; `.`/`..`/empty become `_`.
    Ordinary names (letters, digits, `._-`) are returned unchanged.
    """
    cleaned = _UNSAFE_NAME_CHARS.sub("_", name)
    if cleaned in {"", ".", ".."}:
        return "_"
    return cleaned


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and check that files can be written in it.

    Raises `UserError` (one line) when it cannot; call this before doing work.
    """
    from logitsdump.errors import UserError

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output path {folder} exists and is not a folder: choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write in output folder {folder}: {err.strerror or err}") from err
    return folder
