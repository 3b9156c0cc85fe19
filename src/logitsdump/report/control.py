"""The report's view of the control arm: the run's noise reference with its ratio and interval, and per case the
test's and the control's deviation from golden per step on one axis (`compare/control.py` judged them)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from logitsdump.compare.lenient import finite_float
from logitsdump.compare.records import CaseRecord

WIDTH, HEIGHT = 560, 190
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 110, 12, 26
TEST_COLOUR, CONTROL_COLOUR = "#1f5fbf", "#e07b00"


def run_block(reference: Mapping[str, Any] | None) -> str:
    """The run's noise reference: what the verdicts were judged against, and against a control the run's
    noise ratio with its interval ('' when compare recorded no reference)."""
    if not isinstance(reference, Mapping) or not reference.get("description"):
        return ""
    parts = ['<section class="reference" id="reference"><h2>Noise reference</h2>',
             f'<p>{escape(str(reference["description"]))}</p>']
    run = reference.get("run")
    factor = finite_float(reference.get("factor"))
    if isinstance(run, Mapping) and factor is not None:
        ratio = finite_float(run.get("ratio"))
        low, high = finite_float(run.get("low")), finite_float(run.get("high"))
        interval = (f"{factor * math.exp(low):.3g}x – {factor * math.exp(high):.3g}x"
                    if low is not None and high is not None else "– (one case)")
        kl = finite_float(run.get("kl_ratio"))
        rows = [("cases judged against the control", str(run.get("cases", "?"))),
                ("test's noise / control's (mean over cases of the per-step power ratio)",
                 f"{ratio:.3g}x" if ratio is not None else "–"),
                (f"{float(run.get('confidence') or 0.95):.0%} interval", interval),
                ("healthy up to (the pairing's spread factor)", f"{factor:.3g}x"),
                ("sum KL(test) / sum KL(control)", f"{kl:.3g}" if kl is not None else "–"),
                ("run verdict", str(run.get("verdict", "?")))]
        body = "".join(f"<tr><th>{escape(a)}</th><td class=\"num\">{escape(b)}</td></tr>" for a, b in rows)
        parts.append(f'<table class="grid thresholds"><tbody>{body}</tbody></table>')
    parts.append("</section>")
    return "".join(parts)


def case_block(case: CaseRecord) -> str:
    """A case judged against the control: its KL and the control's per step on one log axis, and the paired
    statistic ('' for a case judged by the floor)."""
    paired = case.paired
    if paired is None:
        return ""
    test = {s.token_id: s.metric("kl_divergence") for s in case.judged_steps if s.token_id is not None}
    control = {row.token: row.control_kl for row in paired.control_steps}
    tokens = sorted(set(test) | set(control))
    svg = _two_series(tokens, [test.get(t) for t in tokens], [control.get(t) for t in tokens],
                      f"KL per step of the test and of the control, {case.label}")
    verdict = "above" if paired.excess > paired.threshold else "within"
    words = (f"over {paired.steps} step(s) the test's noise is {math.exp(paired.log_ratio):.3g}x the control's "
             f"(healthy up to {math.exp(paired.allowance):.3g}x, drift above "
             f"{math.exp(paired.allowance + paired.threshold):.3g}x: {verdict}; p = {paired.p_value:.2g})")
    return (f'<h4>Against the control arm</h4><figure><figcaption><b>KL divergence from golden (log scale)</b> '
            f'<span class="muted">{escape(words)}</span></figcaption>{svg}</figure>')


def _two_series(xs: Sequence[int], test: Sequence[float | None], control: Sequence[float | None], label: str) -> str:
    """An SVG with the test's and the control's values over the steps `xs`, log scale, with a legend."""
    values = [v for v in (*test, *control) if v is not None and math.isfinite(v) and v > 0]
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    out = [f'<svg class="plot plot-control" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>',
           f'<rect class="frame" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}"/>']
    if not xs or not values:
        out.append(f'<text class="empty" x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
                   'text-anchor="middle">no values</text></svg>')
        return "".join(out)
    floor = min(values) / 10
    lo, hi = math.log10(floor), math.log10(max(values))
    lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo, hi + (hi - lo) * 0.05)
    x_lo, x_hi = min(xs) - 0.5, max(xs) + 0.5

    def px(x: float) -> float:
        return _LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(v: float) -> float:
        return _TOP + (hi - math.log10(max(v, floor))) / (hi - lo) * plot_h

    for exponent in range(math.ceil(lo), math.floor(hi) + 1):
        y = _TOP + (hi - exponent) / (hi - lo) * plot_h
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{_LEFT - 4}" y="{y + 3.5:.1f}" text-anchor="end">1e{exponent}</text>')
    step = max(1, math.ceil(len(xs) / 12))
    for x in xs[::step]:
        out.append(f'<text class="tick" x="{px(x):.1f}" y="{HEIGHT - _BOTTOM + 14}" text-anchor="middle">{x}</text>')
    out.append(f'<text class="axis" x="{_LEFT + plot_w}" y="{HEIGHT - 2}" text-anchor="end">token</text>')
    for name, series, colour, row in (("test", test, TEST_COLOUR, 0), ("control", control, CONTROL_COLOUR, 1)):
        points = [(x, v) for x, v in zip(xs, series, strict=True) if v is not None and math.isfinite(v)]
        coords = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in points)
        out.append(f'<polyline class="series series-{name}" points="{coords}" style="stroke:{colour}"/>')
        for x, v in points:
            out.append(f'<circle class="dot" cx="{px(x):.1f}" cy="{py(v):.1f}" r="2.5" style="fill:{colour}">'
                       f"<title>{escape(f'token {x}: {name} KL {v:.4g}')}</title></circle>")
        y = _TOP + 14 + 16 * row
        out.append(f'<line x1="{_LEFT + plot_w + 10}" x2="{_LEFT + plot_w + 28}" y1="{y - 4}" y2="{y - 4}" '
                   f'style="stroke:{colour};stroke-width:2"/><text class="tick" x="{_LEFT + plot_w + 32}" '
                   f'y="{y}">{name}</text>')
    out.append("</svg>")
    return "".join(out)
