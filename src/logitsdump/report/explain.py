"""One sentence per verdict, shared by the HTML page and the terminal summary (see docs/compare.md)."""

from __future__ import annotations

from logitsdump.compare.verdict import (
    CONSISTENT,
    DIVERGENT,
    IDENTICAL,
    INCOMPLETE,
    NOISE,
    PRECISION_SUSPECT,
    TIE_FLIP,
)

#: verdict -> the sentence that explains it to a reader.
VERDICT_SENTENCES = {
    IDENTICAL: "Every judged token's logits are bitwise identical on both devices.",
    CONSISTENT: "Every token passes the thresholds and both devices pick the same tokens: numerical noise only.",
    NOISE: "Replayed on golden's tokens, the devices stay close at every step and pick different tokens only "
    "where golden's own top candidates were within the noise margin: numerical noise, not a bug.",
    TIE_FLIP: "The devices agree until one token where golden's own top two candidates were within the tie "
    "tolerance, and noise picked the other one: not a bug.",
    DIVERGENT: "A token fails the thresholds before any choice changes, or the choice changes where golden "
    "was clearly sure: look for a precision bug.",
    PRECISION_SUSPECT: "Replayed on golden's tokens, the test picks another token where golden was clearly sure, "
    "or its distributions drift beyond the noise tolerances: look for a precision bug.",
    INCOMPLETE: "A logits file is missing or unreadable before a verdict could be reached: dump the case again.",
}

#: verdict -> a few words, for narrow places (the terminal table).
VERDICT_HINTS = {
    IDENTICAL: "bitwise equal",
    CONSISTENT: "noise only",
    NOISE: "replayed: changes only at near-ties",
    TIE_FLIP: "noise picked the other of a near-tie",
    DIVERGENT: "look for a precision bug",
    PRECISION_SUSPECT: "replayed: a clear change or drift, look for a precision bug",
    INCOMPLETE: "files missing or unreadable",
}


def sentence(verdict: str) -> str:
    """The sentence of a verdict ('' for one this version does not know)."""
    return VERDICT_SENTENCES.get(verdict, "")
