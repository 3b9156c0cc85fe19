"""The logits folder a dump writes into: its layout checked, one dump at a time, nothing lost.

`claim` is called before the model loads (rank 0 only). It refuses in one line:
- a logits path that is a symbolic link or not a folder, or a file where a folder of the layout belongs;
- a folder another dump is writing (an exclusive `flock` on `.logits.lock` beside it, held until this
  process ends: the kernel releases it even after SIGKILL, so an orphaned runner still holds it and a
  `--resume` started next to it waits for nobody's files but its own);
- a folder that already holds files, unless the request says `resume` (keep its complete cases) or
  `overwrite` (replace the previous dump); with `overwrite`, a folder that holds anything this tool did
  not write (a file of the user's, a sub-folder, logits files that no manifest lists) is refused too.
`FolderClaim.clear_previous_dump` then removes, at the last moment (after the model loaded), only the
files of the previous dump: those its manifests list, the manifests, vocabulary, summary and our
temporary files. The policy is docs/dump.md's "An existing logits folder".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from logitsdump import store
from logitsdump.errors import DataError
from logitsdump.fsutil import make_dirs, shorten, write_errors
from logitsdump.protocol import DumpRequest

#: The lock file, in the folder that holds `logits/`.
LOCK_NAME = ".logits.lock"
#: Our temporary files (`fsutil.atomic_open`): `.<name>.<8 hex digits>.tmp`.
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
#: The files of a dump besides its logits files.
SIDECARS = (store.MANIFEST_NAME, store.VOCAB_NAME, store.DUMP_SUMMARY_NAME, store.PROVENANCE_NAME)


@dataclass
class FolderClaim:
    """A logits folder this process may write: its lock, and the previous dump found in it."""

    folder: Path
    lock_fd: int | None
    #: The previous dump's files (names in the folder) that `overwrite` removes.
    previous: tuple[str, ...] = ()
    #: Complete cases of the previous dump (from its manifest).
    previous_cases: int = 0
    released: bool = field(default=False, repr=False)

    def clear_previous_dump(self) -> None:
        """Remove the previous dump's files (with `overwrite`), nothing else."""
        for name in self.previous:
            with contextlib.suppress(FileNotFoundError), write_errors(self.folder / name, "remove"):
                os.unlink(self.folder / name)

    def release(self) -> None:
        if self.lock_fd is not None and not self.released:
            os.close(self.lock_fd)
            self.released = True


def claim(folder: Path, output_dir: Path, request: DumpRequest) -> FolderClaim:
    """Check `folder` (below `output_dir`), take its lock, and apply the policy above."""
    check_layout(folder, output_dir)
    lock_fd = _lock(folder)
    try:
        previous, cases = _previous_dump(folder, request)
    except BaseException:
        os.close(lock_fd)
        raise
    return FolderClaim(folder, lock_fd, previous, cases)


def check_layout(folder: Path, output_dir: Path) -> None:
    """Refuse a logits path that is a link or not a folder, or a file in the way of the layout."""
    shown = shorten(folder, 100)
    if folder.is_symlink():
        raise DataError(f"logits folder {shown} is a symbolic link: logitsdump writes only into a real folder "
                        "(give an --output_dir on the disk the link points to)")
    if folder.exists() and not folder.is_dir():
        raise DataError(f"logits folder {shown} exists and is not a folder: move it away, or give another "
                        "--output_dir")
    base = Path(output_dir)
    try:
        below = folder.relative_to(base)
    except ValueError:
        below = Path(folder.name)
        base = folder.parent
    path = base
    for part in below.parts[:-1]:
        path = path / part
        if path.exists() and not path.is_dir():
            raise DataError(f"{shorten(path, 100)} is a file where the dump's folder {part!r} belongs: move it "
                            "away, or give another --output_dir")


def _lock(folder: Path) -> int:
    """An exclusive lock on `LOCK_NAME` beside `folder` (one line when another process holds it)."""
    holder = folder.parent
    make_dirs(holder)
    path = holder / LOCK_NAME
    with write_errors(path, "create the lock file"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                     0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise DataError(f"logits folder {shorten(folder, 100)} is being written by another dump{_holder(path)}: "
                        "wait for it to end (or stop it), then run again") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(path: Path) -> str:
    """` (pid N)` of the process that holds the lock, as it wrote it ('' when unknown)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _previous_dump(folder: Path, request: DumpRequest) -> tuple[tuple[str, ...], int]:
    """(the files `overwrite` would remove, the previous dump's complete cases); raises when the folder
    holds files and neither `resume` nor `overwrite` says what to do with them, or when `overwrite`
    would have to remove a file this tool did not write."""
    if not folder.is_dir():
        return (), 0
    entries = sorted(os.listdir(folder))
    if not entries:
        return (), 0
    listed: set[str] = set()
    cases = 0
    manifests = [name for name in entries if name == store.MANIFEST_NAME
                 or re.fullmatch(r"manifest\.rank\d+\.jsonl", name)]
    for name in manifests:
        records = store.read_manifest(folder, name)
        cases += len(records) if name == store.MANIFEST_NAME else 0
        listed.update(f for r in records for f in r.files)
    shown = shorten(folder, 100)
    if request.resume:
        return (), cases
    if not request.overwrite:
        what = f"a dump of {cases} case(s)" if manifests else f"{len(entries)} file(s)"
        raise DataError(f"logits folder {shown} already holds {what}: add --resume to keep its complete cases, "
                        "or --overwrite to replace the dump (nothing is removed without one of them)")
    ours = {name for name in entries if name in listed or name in SIDECARS or name in manifests
            or TEMPORARY.match(name) or (manifests and _logits_name(name))}
    foreign = [name for name in entries if name not in ours]
    if foreign:
        raise DataError(f"logits folder {shown} holds {len(foreign)} file(s) logitsdump did not write (e.g. "
                        f"{shorten(foreign[0], 40)!r}): --overwrite replaces only a dump's own files; move them "
                        "away, or give another --output_dir")
    return tuple(sorted(ours)), cases


def _logits_name(name: str) -> bool:
    """A logits file name of our layout (an incomplete case of the previous dump: not in its manifest yet)."""
    if not name.startswith(store.LOGITS_PREFIX) or not name.endswith((store.LOGITS_SUFFIX, store.SAFETENSORS_SUFFIX)):
        return False
    try:
        store.parse_logits_file_name(name)
    except DataError:
        return False
    return True
