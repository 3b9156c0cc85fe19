"""The flags and argparse types several commands share: `-gp/-mp`, `-o`, `-l`, modeltest's `--a_b` spellings,
numbers in a range, the next-step lines.

In their own module so that every module adding commands (`cli.py`, `cli_dump.py`, `cli_compare.py`,
`triage/commands.py`, `localize/command.py`) uses the same ones without importing the command tree.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from logitsdump.logs import LEVELS


def positive_int(text: str) -> int:
    """argparse type: an int > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int > 0, found {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an int > 0, found {value}")
    return value


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """The shared `-l/--log-level` flag (msit's levels)."""
    parser.add_argument(
        "-l", "--log-level", default="info", choices=LEVELS, help="log level (default: info)"
    )


def add_golden_and_test(parser: argparse.ArgumentParser, what: str) -> None:
    """msit's `-gp/--golden-path` and `-mp/--my-path`: the golden device's and the device under test's `what`."""
    group = parser.add_argument_group("inputs")
    group.add_argument("-gp", "--golden-path", required=True, metavar="PATH", help=f"the golden device's {what}")
    group.add_argument("-mp", "--my-path", required=True, metavar="PATH", help=f"the device under test's {what}")


def add_output_dir(parser: argparse.ArgumentParser, default: str | None, default_text: str) -> None:
    """`-o`: the folder a subcommand writes its files in, the same flag everywhere
    (`--output-dir`, and msit's `--output` spelling, alike)."""
    parser.add_argument_group("outputs").add_argument(
        "-o", "--output-dir", "--output", dest="output_dir", metavar="DIR", default=default,
        help=f"output folder, created if missing (default: {default_text})",
    )


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """A modeltest-style flag accepted both as `--a_b` and `--a-b`."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*spellings, dest=name, **kwargs)


def number_between(low: float, high: float | None = None) -> Callable[[str], float]:
    """argparse type: a finite float in [low, high] (high None: no upper bound)."""
    span = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {span}, found {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < low or (
            high is not None and value > high
        ):
            raise argparse.ArgumentTypeError(f"expected a number {span}, found {text}")
        return value

    return parse


def print_lines(lines: Sequence[str]) -> None:
    """Print each line, flushed (a next-step hint reaches a pipe at once)."""
    for line in lines:
        print(line, flush=True)
