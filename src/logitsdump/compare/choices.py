"""Why a case whose devices generate the same tokens still flipped pass/fail: its choices' logits.

Some tasks judge a case from the logits of a few choice tokens at the first step (BoolQ: " yes"
against " no"; CMMLU: the option letters), not from the generated text. The two devices can then
pick the same token (the argmax) and still answer differently, because the choices are close. The
runner writes those logits into the manifest (`store.EXTRA_CHOICES`); this module reads both sides'
and says, in the case's reason, which choice each side picked and by how much.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from logitsdump.compare.records import CaseRecord
from logitsdump.store import EXTRA_CHOICES, CaseManifest


@dataclass(frozen=True)
class Choice:
    """One choice of a case: its label (e.g. "yes"), token id, that token's logit on one side, and whether
    the task picked it there (its own rule: BoolQ answers "no" on a tie)."""

    label: str
    token: int
    logit: float
    picked: bool = False


def read_choices(record: CaseManifest | None) -> tuple[Choice, ...]:
    """The choices a manifest line records (none when the task is not judged from choices, or malformed)."""
    if record is None or not isinstance(record.extra, Mapping):
        return ()
    raw = record.extra.get(EXTRA_CHOICES)
    if not isinstance(raw, list):
        return ()
    choices = []
    for item in raw:
        if not isinstance(item, Mapping):
            return ()
        label, token, logit = item.get("label"), item.get("token"), item.get("logit")
        if not (isinstance(label, str) and type(token) is int and isinstance(logit, (int, float))
                and math.isfinite(logit)):
            return ()
        choices.append(Choice(label, token, float(logit), item.get("picked") is True))
    return tuple(choices) if len(choices) >= 2 else ()


def pick(choices: Sequence[Choice]) -> tuple[Choice, float]:
    """The choice the task picked (recorded; else the first largest logit) and its lead over the best other."""
    marked = [c for c in choices if c.picked]
    best = marked[0] if len(marked) == 1 else max(choices, key=lambda c: c.logit)
    return best, best.logit - max(c.logit for c in choices if c is not best)


def choice_note(golden: Sequence[Choice], mine: Sequence[Choice], noise_margin: float) -> str:
    """One sentence when the two sides pick different choices ('' when they pick the same, or when the
    two records name different choices)."""
    if not golden or [(c.label, c.token) for c in golden] != [(c.label, c.token) for c in mine]:
        return ""
    g, g_lead = pick(golden)
    m, m_lead = pick(mine)
    if g.label == m.label:
        return ""
    golden_gap = g.logit - next(c.logit for c in golden if c.label == m.label)
    kind = ("a near-tie of the choices" if golden_gap <= noise_margin
            else "golden's lead is beyond the noise margin: look at the choices' logits")
    tie = " (a tie, which the task answers so)" if m_lead == 0 else ""
    names = ", ".join(f"{c.label!r} #{c.token}" for c in golden)
    return (f"the task judges this case from the logits of its choices at the first step ({names}), not from the "
            f"generated tokens: golden picks {g.label!r} by {g_lead:.4g} logits, the test {m.label!r} by "
            f"{m_lead:.4g}{tie}; golden's {g.label!r} leads {m.label!r} by {golden_gap:.4g} logits "
            f"(noise margin {noise_margin:g}): {kind}")


def explain_choices(case: CaseRecord, golden_cases: Mapping[str, CaseManifest],
                    my_cases: Mapping[str, CaseManifest], noise_margin: float) -> CaseRecord:
    """`case` with the choice note added to its reason, when its manifests record choices that differ."""
    golden = mine = ()
    for step in case.steps:
        golden = golden or read_choices(golden_cases.get(step.file_name))
        mine = mine or read_choices(my_cases.get(step.file_name))
    note = choice_note(golden, mine, noise_margin)
    if not note:
        return case
    return replace(case, reason=f"{case.reason}; {note}" if case.reason else note)
