"""Pairing the logits files of two folders by name, in msit's row order.

Files ending in `.pth` or `.safetensors` are listed in both folders and paired
by identical name. Each name is parsed with `store.parse_logits_file_name`;
rows are sorted as msit sorts them: int keys by (key, token), then `lang/num`
keys by (lang, num, token), then the rest (rows msit writes with key NA:
only_in_* and parse errors) by file name; ties by
file name, so the order is the same on every run (msit bug 5.4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from logitsdump.compare.records import ONLY_IN_GOLDEN, ONLY_IN_MY
from logitsdump.errors import DataError, UserError
from logitsdump.store import parse_logits_file_name, parse_logits_subject
from logitsdump.tensorio import TENSOR_SUFFIXES


@dataclass(frozen=True)
class FilePair:
    """One row of the comparison: a file name and where it exists."""

    file_name: str
    golden: Path | None
    mine: Path | None
    key: int | str | None
    token_id: int | None
    subject: str | None
    #: '' or msit's reason for a row without metrics (parse_error:..., only_in_...).
    problem: str

    def sort_key(self) -> tuple:
        """msit's order: int keys, then lang/num keys, then the rest; file name breaks ties.

        Rows whose key msit writes as NA (only_in_*, parse errors) are in "the rest".
        """
        if self.problem:
            return (2, 0, "", 0, 0, self.file_name)
        if isinstance(self.key, int):
            return (0, self.key, "", 0, self.token_id, self.file_name)
        if isinstance(self.key, str):
            lang, _, num = self.key.partition("/")
            return (1, 0, lang, int(num), self.token_id, self.file_name)
        return (2, 0, "", 0, 0, self.file_name)


def list_tensor_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """name -> path of the `.pth`/`.safetensors` entries of `folder` (not recursive)."""
    path = Path(folder)
    try:
        entries = list(os.scandir(path))
    except OSError as err:
        raise DataError(f"cannot list {path}: {err.strerror or err}") from err
    return {e.name: path / e.name for e in entries if e.name.endswith(TENSOR_SUFFIXES)}


def pair_files(golden_dir: str | os.PathLike[str], my_dir: str | os.PathLike[str]) -> list[FilePair]:
    """All rows of a comparison, sorted in msit's order."""
    golden, mine = list_tensor_files(golden_dir), list_tensor_files(my_dir)
    pairs = [_make_pair(name, golden.get(name), mine.get(name)) for name in set(golden) | set(mine)]
    return sorted(pairs, key=FilePair.sort_key)


def _make_pair(name: str, golden: Path | None, mine: Path | None) -> FilePair:
    try:
        key, token = parse_logits_file_name(name)
    except UserError as err:
        reason = str(err)
        if not reason.startswith("parse_error:"):
            reason = f"parse_error:{reason}"
        return FilePair(name, golden, mine, None, None, None, reason)
    problem = ""
    if mine is None:
        problem = ONLY_IN_GOLDEN
    elif golden is None:
        problem = ONLY_IN_MY
    return FilePair(name, golden, mine, key, token, parse_logits_subject(name), problem)
