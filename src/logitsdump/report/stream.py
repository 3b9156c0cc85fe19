"""Reading compare's case JSON one case at a time, so the report's memory does not grow with the cases.

`compare/outputs.write_cases_json` writes the document's head (everything but the cases) first, then
`"cases": [` and one case per line. `read_case_file` parses the head, then each case line once, to build
the `index.RunIndex` (a compact row per case and the judged steps' values), remembering where each line
is; `LazyCases` is the sequence of full `CaseRecord`s, parsed from the file again when one is asked for
(the report details a few hundred at most). A file of another layout (schema version 1, or written by
hand) is read whole, up to `WHOLE_FILE_MAX_BYTES`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from logitsdump.compare.records import CaseRecord
from logitsdump.errors import DataError
from logitsdump.fsutil import open_input
from logitsdump.progress import Progress
from logitsdump.report.index import RunIndex

#: The line that ends the head of a case JSON written by compare (an empty run: `"cases": []`).
_CASES_OPEN = b' "cases": ['
_CASES_EMPTY = b' "cases": []'
#: A case JSON of another layout is parsed whole up to this size (bytes).
WHOLE_FILE_MAX_BYTES = 256 << 20
#: Parsed cases kept for repeated access (a detailed section reads its case several times).
_CACHED = 32


@dataclass(frozen=True)
class CaseLine:
    """Where one case's JSON is: the file, its byte offset and length."""

    path: Path
    offset: int
    length: int


class LazyCases(Sequence[CaseRecord]):
    """The cases of one or several case JSON files, each parsed from its line when asked for."""

    def __init__(self, lines: Sequence[CaseLine]) -> None:
        self._lines = list(lines)
        self._cache: OrderedDict[int, CaseRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lines)

    @overload
    def __getitem__(self, index: int) -> CaseRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[CaseRecord]: ...

    def __getitem__(self, index: int | slice) -> CaseRecord | Sequence[CaseRecord]:
        if isinstance(index, slice):
            return LazyCases(self._lines[index])
        if index < 0:
            index += len(self._lines)
        if not 0 <= index < len(self._lines):
            raise IndexError(index)
        case = self._cache.get(index)
        if case is None:
            where = self._lines[index]
            with open_input(where.path, "case JSON", "rb") as handle:
                handle.seek(where.offset)
                case = _parse_case(handle.read(where.length), where.path)
            self._cache[index] = case
            if len(self._cache) > _CACHED:
                self._cache.popitem(last=False)
        return case

    def __iter__(self) -> Iterator[CaseRecord]:
        """Every case in order, one file read front to back (nothing kept)."""
        handle, current = None, None
        try:
            for where in self._lines:
                if where.path != current:
                    if handle is not None:
                        handle.close()
                    handle, current = open_input(where.path, "case JSON", "rb"), where.path
                assert handle is not None
                handle.seek(where.offset)
                yield _parse_case(handle.read(where.length), where.path)
        finally:
            if handle is not None:
                handle.close()

    def __add__(self, other: LazyCases) -> LazyCases:
        return LazyCases([*self._lines, *other._lines])


@dataclass(frozen=True)
class CaseFile:
    """A case JSON read for the report: its head (every key but `cases`), its cases and their index."""

    head: Mapping[str, Any]
    cases: Sequence[CaseRecord]
    index: RunIndex


def read_head(path: Path) -> dict[str, Any] | None:
    """The head of a case JSON written by compare (everything but its cases), without reading the cases;
    None for a file of another layout."""
    with open_input(path, "case JSON", "rb") as handle:
        lines: list[bytes] = []
        size = 0
        while line := handle.readline(WHOLE_FILE_MAX_BYTES):
            size += len(line)
            if line.rstrip(b"\r\n") in (_CASES_OPEN, _CASES_EMPTY):
                return _head(lines)
            lines.append(line)
            if size > WHOLE_FILE_MAX_BYTES:
                break
    return None


def read_case_file(path: Path) -> CaseFile:
    """The head, cases and index of a case JSON; `DataError` (one line) for anything malformed."""
    with open_input(path, "case JSON", "rb") as handle:
        head_lines: list[bytes] = []
        offset = 0
        opened = empty = False
        while line := handle.readline(WHOLE_FILE_MAX_BYTES):
            offset += len(line)
            stripped = line.rstrip(b"\r\n")
            if stripped in (_CASES_OPEN, _CASES_EMPTY):
                opened, empty = True, stripped == _CASES_EMPTY
                break
            head_lines.append(line)
            if offset > WHOLE_FILE_MAX_BYTES:
                break
        head = _head(head_lines) if opened else None
        if head is None or head.get("schema_version") == 1:
            return _whole_file(path)
        _check_version(head, path)
        lines: list[CaseLine] = []
        index = RunIndex()
        with Progress(f"reading the cases of {path.name}", None, "case") as progress:
            while not empty and (line := handle.readline()):
                start, offset = offset, offset + len(line)
                text = line.strip()
                if text in (b"]", b"]}", b"}"):
                    break
                if not text:
                    continue
                body = text[:-1] if text.endswith(b",") else text
                case = _parse_case(body, path)
                index.add(case)
                lines.append(CaseLine(path, start, len(line)))
                progress.update()
    return CaseFile(head, LazyCases(lines), index)


def _head(lines: list[bytes]) -> dict[str, Any] | None:
    """The document without its cases, from the lines before `"cases": [` (None: not that layout)."""
    text = b"".join(lines).rstrip()
    if text.endswith(b","):
        text = text[:-1]
    try:
        head = json.loads(text + b"\n}")
    except (ValueError, RecursionError):
        return None
    return head if isinstance(head, dict) else None


def _parse_case(data: bytes, path: Path) -> CaseRecord:
    try:
        case = json.loads(data.rstrip().rstrip(b","))
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path}: a case is not valid JSON ({err}): was the file cut short or edited?") from None
    if not isinstance(case, Mapping):
        raise DataError(f"{path}: expected each case to be a JSON object")
    return CaseRecord.from_dict(case)


def _check_version(head: Mapping[str, Any], path: Path) -> None:
    from logitsdump.compare.document import READABLE_VERSIONS

    version = head.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise DataError(f"{path}: schema_version {version!r} is not supported (this version reads "
                        f"{', '.join(map(str, READABLE_VERSIONS))}); use the logitsdump that wrote it")


def _whole_file(path: Path) -> CaseFile:
    """A case JSON of another layout, parsed whole (at most `WHOLE_FILE_MAX_BYTES`)."""
    from logitsdump.compare.document import CompareDocument
    from logitsdump.compare.schema_v1 import upgrade_document
    from logitsdump.fsutil import read_input

    data = read_input(path, "case JSON", WHOLE_FILE_MAX_BYTES)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(document, Mapping):
        raise DataError(f"{path}: expected compare's case JSON with a 'cases' list")
    try:
        cases = CompareDocument.from_dict(upgrade_document(document)).cases
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    head = {k: v for k, v in document.items() if k != "cases"}
    index = RunIndex()
    for case in cases:
        index.add(case)
    return CaseFile(head, cases, index)
