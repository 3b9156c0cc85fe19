"""CSV writing that spreadsheet programs cannot turn into formulas.

A text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is
prefixed with a single quote (OWASP's advice). Numbers stay numbers: a cell
that parses as a float (e.g. `-0.5`) is left alone.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from logitsdump.fsutil import atomic_open

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTES = re.compile(r'[,"\n\r]')


def neutralise(value: Any) -> Any:
    """Return `value` with formula-like text made inert; other values unchanged."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def original(text: str) -> str:
    """The text that `neutralise` turned into `text` (for matching cells written by other tools)."""
    if text.startswith("'") and neutralise(text[1:]) == text:
        return text[1:]
    return text


def format_cell(value: Any) -> str:
    """One CSV cell: quoted when it holds a comma, quote, LF or CR (Python's csv module,
    with LF line ends, would leave a lone CR unquoted and readers would split the row)."""
    if type(value) is float or type(value) is int:  # a number: never a formula, never quoted
        return repr(value)
    text = "" if value is None else str(neutralise(value))
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def format_row(values: Iterable[Any]) -> str:
    """One CSV line, LF-terminated."""
    return ",".join(format_cell(v) for v in values) + "\n"


#: A row of text cells needs our own cell-by-cell writing only when it holds a CR (which the csv module
#: leaves unquoted under LF line ends) or a cell that may start with a formula character.
_ROW_NEEDS_CARE = re.compile(r"\r|(?:^|,)[=+\-@\t]")


def rows_to_csv_text(header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> str:
    """Render rows (sequences or dicts keyed by header) as CSV text with LF line ends.

    Rows of text cells that need no neutralising go through the csv module's C writer (the same quoting
    as `format_cell`): bcanalyze writes half a million rows; every other row goes cell by cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    buffer.write(format_row(header))
    for row in rows:
        values = [row.get(h, "") for h in header] if isinstance(row, Mapping) else row
        if not isinstance(values, (list, tuple)):
            values = list(values)
        try:
            line = ",".join(values)
        except TypeError:  # a number or None among the cells
            line = None
        if line is None or len(values) < 2 or _ROW_NEEDS_CARE.search(line):
            buffer.write(format_row(values))
        else:
            writer.writerow(values)
    return buffer.getvalue()


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable) -> None:
    """Write a whole CSV file atomically (temporary name, then rename)."""
    text = rows_to_csv_text(header, rows)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
