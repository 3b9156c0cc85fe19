"""The verdicts a case can get: one table, from which every list, colour and sentence is derived.

The rules that pick a verdict are in `judge.py`; this module only says what each
verdict is called, whether it passes, how bad it is, how it is shown, and what it
means. The HTML page, the terminal summary and the CLI help all read this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """One verdict and everything shown about it."""

    name: str
    #: A case with this verdict passes (numerical noise, not a bug).
    passing: bool
    #: 0 is the worst; the order of the "worst cases" lists.
    severity: int
    #: Colour in the HTML page (CSS) and on the terminal (ANSI SGR parameters).
    colour: str
    ansi: str
    #: The sentence that explains the verdict to a reader.
    meaning: str
    #: A few words, for narrow places (the terminal).
    hint: str
    #: It can be given to a free-running case (msit's way) / to a replayed case (`dump --replay`); neither:
    #: only without any noise reference (shown only where a case has it).
    free_run: bool
    replay: bool
    #: Listed among the worst cases although it passes (noise picked another token).
    listed: bool = False


IDENTICAL = "identical"
CONSISTENT = "consistent"
NOISE = "noise"
TIE_FLIP = "tie-flip"
DIVERGENT = "divergent"
PRECISION_SUSPECT = "precision-suspect"
INCOMPLETE = "incomplete"
SETUP_DIFFERS = "setup-differs"
UNREFERENCED = "unreferenced"

#: Every verdict, best first.
TABLE: tuple[Verdict, ...] = (
    Verdict(
        IDENTICAL, True, 4, "#2e7d32", "32",
        "Every judged token's logits are bitwise identical on both devices.",
        "bitwise equal", free_run=True, replay=True,
    ),
    Verdict(
        CONSISTENT, True, 3, "#4f8a10", "32",
        "Every token passes the thresholds and both devices pick the same tokens: numerical noise only.",
        "noise only", free_run=True, replay=True,
    ),
    Verdict(
        NOISE, True, 2, "#00838f", "36",
        "Replayed on golden's tokens, the devices stay close at every step and pick different tokens only "
        "where golden's own top candidates were within the noise margin: numerical noise, not a bug.",
        "replayed: changes only at near-ties", free_run=False, replay=True, listed=True,
    ),
    Verdict(
        TIE_FLIP, True, 2, "#b7791f", "33",
        "The devices agree until one token where golden's own top two candidates were within the tie "
        "tolerance, and noise picked the other one: not a bug.",
        "noise picked the other of a near-tie", free_run=True, replay=False, listed=True,
    ),
    Verdict(
        DIVERGENT, False, 0, "#c62828", "1;31",
        "A token fails the thresholds before any choice changes, or the choice changes where golden "
        "was clearly sure: look for a precision bug.",
        "look for a precision bug", free_run=True, replay=False,
    ),
    Verdict(
        PRECISION_SUSPECT, False, 0, "#ad1457", "1;31",
        "Replayed on golden's tokens, the test picks another token where golden was clearly sure, "
        "or its distributions drift beyond the noise tolerances: look for a precision bug.",
        "replayed: a clear change or drift, look for a precision bug", free_run=False, replay=True,
    ),
    Verdict(
        INCOMPLETE, False, 1, "#6b5b95", "35",
        "A logits file is missing or unreadable before a verdict could be reached: dump the case again.",
        "files missing or unreadable", free_run=True, replay=True,
    ),
    Verdict(
        SETUP_DIFFERS, False, 0, "#8d6e63", "1;33",
        "The two sides did not feed the model the same inputs or settings (the preflight names the cause: "
        "chat template, BOS, few-shot, limits, sampling, tokenizer or config files): fix the set-up and "
        "compare again; the logits say nothing about precision until then.",
        "set-ups differ: fix them first", free_run=False, replay=False,  # not a numerics verdict: shown when given
    ),
    Verdict(
        UNREFERENCED, False, 1, "#757575", "90",
        "The devices differ by more than the conservative default of the dtype allows, but there is no "
        "reference for this model's noise (no control arm, no measured floor) and the difference stays below "
        "the gross bound no healthy pair reaches: neither noise nor a bug can be told. Dump a control arm "
        "(dump --control) and compare again.",
        "no reference: dump a control (dump --control)", free_run=False, replay=False,
    ),
)

#: name -> its entry.
BY_NAME: Mapping[str, Verdict] = {v.name: v for v in TABLE}
#: Every verdict name, best first.
VERDICTS: tuple[str, ...] = tuple(v.name for v in TABLE)
#: The verdicts of a free run (both devices chose their own tokens) and of a replayed case.
FREE_RUN_VERDICTS: tuple[str, ...] = tuple(v.name for v in TABLE if v.free_run)
REPLAY_VERDICTS: tuple[str, ...] = tuple(v.name for v in TABLE if v.replay)
#: The verdicts of a run without any noise reference (no control arm, no floor), in either mode.
UNREFERENCED_VERDICTS: tuple[str, ...] = (UNREFERENCED,)  # neither free-run nor replay verdict (nor setup-differs)
PASSING: frozenset[str] = frozenset(v.name for v in TABLE if v.passing)
#: A verdict this version does not know (from a newer compare output) sorts after every known one.
UNKNOWN_SEVERITY = 5


def severity(name: str) -> int:
    """0 for the worst verdicts; `UNKNOWN_SEVERITY` for a name not in the table."""
    entry = BY_NAME.get(name)
    return entry.severity if entry is not None else UNKNOWN_SEVERITY


def meaning(name: str) -> str:
    """The sentence of a verdict ('' for one this version does not know)."""
    entry = BY_NAME.get(name)
    return entry.meaning if entry is not None else ""


def rank(name: str) -> int:
    """Position in TABLE (best first); unknown names last."""
    return VERDICTS.index(name) if name in BY_NAME else len(VERDICTS)


def listed_among_worst(name: str) -> bool:
    """Whether a case with this verdict goes on a "worst cases" list: it fails, or noise changed a token."""
    entry = BY_NAME.get(name)
    return entry is None or not entry.passing or entry.listed


def slug(name: str) -> str:
    """A CSS-safe form of a verdict name."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def help_text() -> str:
    """`free runs: a, b, ...; replayed cases (dump --replay): c, d, ...`, for the CLI."""
    return (f"free runs: {', '.join(FREE_RUN_VERDICTS)}; replayed cases (dump --replay): "
            f"{', '.join(REPLAY_VERDICTS)}; without a control or floor also {', '.join(UNREFERENCED_VERDICTS)}; "
            f"inputs or settings differ (the preflight): {SETUP_DIFFERS}")
