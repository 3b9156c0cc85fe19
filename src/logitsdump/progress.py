"""Progress of long steps (bcanalyze's reads and join, compare's pairs, the report's cases).

A step that ends within `FIRST_AFTER` seconds prints nothing. One that runs longer shows where it is:
on a terminal, a tqdm bar on stderr; otherwise (a log file, CI) one INFO line every `EVERY` seconds,
`<what>: 12000 of 20000 pairs (60%)`, and a last line with its time when it ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from logitsdump.logs import get_logger

#: Seconds a step runs before its progress is shown.
FIRST_AFTER = 2.0
#: Seconds between two progress lines when stderr is not a terminal.
EVERY = 5.0

T = TypeVar("T")
_log = get_logger("progress")


class Progress:
    """Counts `unit`s of work done out of `total` (None: unknown) for the step named `what`."""

    def __init__(self, what: str, total: int | None = None, unit: str = "item", *, logger: Any = None,
                 first_after: float = FIRST_AFTER, every: float = EVERY, clock=time.monotonic) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self._log = logger or _log
        self._first_after, self._every, self._clock = first_after, every, clock
        self._start = clock()
        self._last: float | None = None
        self._bar: Any = None
        if sys.stderr is not None and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, delay=first_after,
                             dynamic_ncols=True, leave=False)

    def update(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
            return
        now = self._clock()
        if now - self._start < self._first_after or (self._last is not None and now - self._last < self._every):
            return
        self._last = now
        self._log.info("%s: %s", self.what, self._count())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._last is not None:  # it said where it was: say that it ended
            self._log.info("%s: %s in %.1f s", self.what, self._count(final=True), self._clock() - self._start)

    def _count(self, final: bool = False) -> str:
        units = f"{self.unit}s" if self.done != 1 else self.unit
        if self.total is None or final:
            return f"{self.done} {units}"
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.done} of {self.total} {units}{share}"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def tracked(items: Iterable[T], what: str, total: int | None = None, unit: str = "item", **kwargs: Any) -> Iterator[T]:
    """`items`, counting each through a `Progress`."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(what, total, unit, **kwargs) as progress:
        for item in items:
            yield item
            progress.update()
