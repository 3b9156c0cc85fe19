"""CSV writing that spreadsheet programs cannot turn into formulas.

A text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is
prefixed with a single quote (OWASP's advice). Numbers stay numbers: a cell
that parses as a float (e.g. `-0.5`) is left alone.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from logitsdump.fsutil import atomic_open

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """Return `value` with formula-like text made inert; other values unchanged."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def rows_to_csv_text(header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> str:
    """Render rows (sequences or dicts keyed by header) as CSV text with LF line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([neutralise(h) for h in header])
    for row in rows:
        values = [row.get(h, "") for h in header] if isinstance(row, Mapping) else list(row)
        writer.writerow([neutralise(v) for v in values])
    return buffer.getvalue()


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable) -> None:
    """Write a whole CSV file atomically (temporary name, then rename)."""
    text = rows_to_csv_text(header, rows)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
