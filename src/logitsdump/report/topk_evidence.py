"""How the page and the terminal show a case judged on top-k evidence (a server's dump, `compare/topk.py`).

Such a case has no cosine, L1 or ULP, and its KL figures are lower bounds: this module says so in words
next to them and gives the per-step table of what top-k supports.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

from logitsdump.compare.records import CaseRecord
from logitsdump.report import numbers
from logitsdump.report.index import CaseRow

#: The words after a case's KL figures.
BOUND_NOTE = ("judged on {evidence} log probabilities (a server's dump): KL figures are lower bounds over the tokens "
              "both sides report; cosine, L1 and ULP are not known")


def terminal_note(cases: Iterable[CaseRecord | CaseRow]) -> str | None:
    """One line for the terminal summary when some cases were judged on top-k evidence (cases or their
    index rows)."""
    kinds = sorted({c.evidence for c in cases if c.evidence})
    return f"evidence: {BOUND_NOTE.format(evidence=', '.join(kinds))}" if kinds else None


def case_block(case: CaseRecord) -> str:
    """The note and the per-step table of a top-k case ('' for a case judged on every logit)."""
    if not case.evidence:
        return ""
    rows = []
    for s in case.steps:
        m = s.topk
        if m is None:
            rows.append(f'<tr><td class="num">{s.token_id}</td><td colspan="9" class="small">'
                        f"{escape(s.reason)}</td></tr>")
            continue
        flip = ("&ge; " if m.flip_margin_bound else "") + escape(_fmt(m.flip_margin))
        dlp = ("&le; " if m.dlogprob_bound else "") + escape(_fmt(m.dlogprob))
        rows.append(
            f'<tr><td class="num">{s.token_id}</td><td>{escape(str(m.golden_top1))}</td><td>{escape(str(m.my_top1))}'
            f'</td><td class="num">&ge; {escape(_fmt(m.kl_lower_bound))}</td><td class="num">'
            f'{escape(_fmt(m.golden_mass))}</td><td class="num">{escape(_fmt(m.topk_overlap))}</td>'
            f'<td class="num">{escape(_fmt(m.golden_margin))}</td><td class="num">{flip}</td>'
            f'<td class="num">{dlp}</td><td class="num">{escape(_fmt(m.dp))}</td></tr>')
    return (
        f'<p class="muted">{escape(BOUND_NOTE.format(evidence=case.evidence))}.</p>'
        f'<details class="steps"><summary>Per-token numbers ({escape(case.evidence)})</summary><div class="scroll">'
        '<table class="grid"><thead><tr><th class="num">token</th><th>golden top-1</th><th>test top-1</th>'
        '<th class="num">KL (lower bound)</th><th class="num">golden mass seen</th><th class="num">top-k overlap</th>'
        '<th class="num">golden margin</th><th class="num">flip margin</th><th class="num">&Delta;logprob</th>'
        '<th class="num">&Delta;p</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></details>"
    )


def _fmt(value: float | None) -> str:
    return numbers.general(value, 4, "–")
