"""The localize part of the report: a section per localised case, from `localize judge`'s document.

Each case shows one plot of the error by depth (log scale): the module's own error fed golden's input
(dots, red above band), its band with the region up to the above-band line shaded, the accumulated error
of the test's plain run and the control arm's; then the verdict with its reason, the causal check and the
head, what the accumulated baselines would have named, the candidates table (the highest scores; every
candidate in a fold) and the msprobe hand-off. `section(document)` is the block `html.render_report` adds
(`report --localize`); `render_page(document)` is the page `localize judge` writes. Torch-free: it reads
the JSON only, and escapes every text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from logitsdump.report import page_assets
from logitsdump.report.svg import segments

#: The candidates shown before the fold.
TOP_ROWS = 10
WIDTH, HEIGHT = 1000, 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 14, 12, 30
KIND_COLOURS = {"culprit": "#ad1457", "diffuse": "#b7791f", "none": "#2e7d32", "inconclusive": "#667085"}

CSS = """
.loc-case{border:1px solid var(--line);border-left:5px solid var(--lc,#999);border-radius:8px;padding:14px 18px;
margin:0 0 22px;background:#fff}
.loc-pill{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:700;color:#fff;
background:var(--lc,#888)}
svg.depth{display:block;width:100%;height:auto}svg.depth .frame{fill:#fcfcfd;stroke:#d0d5dd}
svg.depth .grid{stroke:#eef0f3}svg.depth .tick{font-size:10px;fill:#667085;font-family:system-ui,sans-serif}
svg.depth .band{fill:#e3ecfa;opacity:.8}svg.depth .bandline{fill:none;stroke:#7ea6e0;stroke-width:1}
svg.depth .acc{fill:none;stroke:#b5531b;stroke-width:1.6}svg.depth .ctrl{fill:none;stroke:#98a2b3;
stroke-width:1.2;stroke-dasharray:4 3}svg.depth .own{fill:#1f5fbf}svg.depth .own.above{fill:#c62828}
svg.depth .culprit{stroke:#c62828;stroke-width:1.4;stroke-dasharray:3 2}
.loc-key span{display:inline-block;width:18px;height:3px;vertical-align:middle;margin:0 4px 0 12px}
"""


def section(document: Mapping[str, Any], *, heading: str = "h2") -> str:
    """The localisation section: the run's verdict and one block per localised case."""
    run = document.get("run") or {}
    cases = document.get("cases") or []
    colour = KIND_COLOURS.get(str(run.get("kind")), "#667085")
    parts = [
        f'<section id="localize" class="localize"><style>{CSS}</style>',
        f"<{heading}>Localisation <span class=\"muted\">({len(cases)} case(s))</span></{heading}>",
        f'<p><span class="loc-pill" style="--lc:{colour}">{escape(str(run.get("label", "?")))}</span> '
        f'{escape(str(run.get("reason", "")))}</p>',
        _about(document),
    ]
    for number, case in enumerate(cases):
        parts.append(_case(document, case, number))
    parts.append("</section>")
    return "".join(parts)


def render_page(document: Mapping[str, Any]) -> str:
    """A page of its own (what `localize judge` writes)."""
    model = document.get("model") or {}
    test = document.get("test") or {}
    title = f"logitsdump localize · {model.get('name') or model.get('path', '')}"
    return "\n".join([
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
        f"<title>{escape(title)}</title>", f"<style>{page_assets.CSS}</style>", "</head>", "<body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">golden {escape(str(model.get("dtype", "?")))} ({escape(str(model.get("attn", "?")))}) vs '
        f'test {escape(str(test.get("dtype", "?")))} ({escape(str(test.get("attn", "?")))}) · record '
        f'<code>{escape(str(document.get("record", "")))}</code> · replay '
        f'<code>{escape(str(document.get("replay", "")))}</code></p>',
        section(document),
        "</body>", "</html>",
    ]) + "\n"


def _about(document: Mapping[str, Any]) -> str:
    constants = document.get("constants") or {}
    above = constants.get("above", "?")
    confirmed = document.get("confirmed_with_golden_model")
    return (f'<p class="muted small">Each module fed golden\'s recorded input: its own error against its band (the '
            f"control arm: golden's device running the same replay in the test dtype, on the same case). Above band: "
            f"more than {escape(str(above))}x; a culprit stands out {escape(str(constants.get('standout', '?')))}x "
            f"over every other layer; diffuse: {escape(str(constants.get('diffuse_layers', '?')))} or more layers. "
            + ("Sufficiency and heads were checked with the golden model." if confirmed else
               "Judged without the golden model: no sufficiency check, no head split.") + "</p>")


def _case(document: Mapping[str, Any], case: Mapping[str, Any], number: int) -> str:
    verdict = case.get("verdict") or {}
    kind = str(verdict.get("kind", "inconclusive"))
    colour = KIND_COLOURS.get(kind, "#667085")
    above = float((document.get("constants") or {}).get("above", 3.0))
    parts = [
        f'<div class="loc-case" id="localize-{number}" style="--lc:{colour}">',
        f'<h3><span class="loc-pill">{escape(str(verdict.get("label", kind)))}</span> {escape(str(case.get("label")))} '
        f'<span class="muted small">{escape(str(case.get("task", "")))} · step {escape(str(case.get("focus_step")))} '
        f'· {escape(str(case.get("tokens")))} tokens · bands: {escape(str(case.get("band_source")))}</span></h3>',
        f'<p class="reason"><code>{escape(str(verdict.get("reason", "")))}</code></p>',
        _depth_plot(case, above),
        '<p class="muted small loc-key"><span style="background:#1f5fbf"></span>own error (fed golden\'s input)'
        '<span style="background:#c62828"></span>above band<span style="background:#e3ecfa"></span>'
        f"up to {above:g}x the band<span style=\"background:#b5531b\"></span>accumulated (test, plain run)"
        '<span style="background:#98a2b3"></span>accumulated (control arm)</p>',
        _confirmation(case),
        _candidates(case, above),
        "</div>",
    ]
    return "".join(parts)


def _confirmation(case: Mapping[str, Any]) -> str:
    causal = case.get("causal")
    heads = case.get("heads")
    baselines = case.get("baselines") or {}
    rows = [("final KL at the focus step", f"test {_g(case.get('kl_test'))}, control arm {_g(case.get('kl_noise'))}")]
    if causal:
        rows.append(("causal check", f"{causal.get('outcome')}: {causal.get('reason')}"))
    if case.get("decoys"):
        rows.append(("decoys (should be refuted)", "; ".join(f"{d.get('decoy')}: {d.get('outcome')}"
                                                              for d in case["decoys"])))
    if heads:
        scores = ", ".join(f"{h}: {_g(s)}" for h, s in enumerate(heads.get("scores") or []))
        rows.append(("heads (layer " + str(heads.get("layer")) + ")", f"{heads.get('reason')} [{scores}]"))
    rows.append(("accumulated baselines would name",
                 f"first cosine < 0.99: {baselines.get('first_cosine_below') or 'nothing'}; largest jump: "
                 f"{baselines.get('largest_jump') or 'nothing'}"))
    if case.get("msprobe_config"):
        rows.append(("msprobe hand-off", f"{case['msprobe_config']}"))
    body = "".join(f"<tr><th>{escape(a)}</th><td>{escape(str(b))}</td></tr>" for a, b in rows)
    return f'<table class="grid"><tbody>{body}</tbody></table>'


def _candidates(case: Mapping[str, Any], above: float) -> str:
    rows = list(case.get("candidates") or []) + list(case.get("layers") or [])
    ranked = sorted(rows, key=lambda r: -(r.get("score") or 0.0))
    header = ("<thead><tr><th>candidate</th><th class=\"num\">own mean</th><th class=\"num\">own max</th>"
              "<th class=\"num\">band mean</th><th class=\"num\">band max</th><th class=\"num\">score</th>"
              "<th class=\"num\">accumulated mean</th><th class=\"num\">cosine</th></tr></thead>")

    def table(items: Sequence[Mapping[str, Any]]) -> str:
        body = []
        for r in items:
            chosen = ' class="chosen"' if (r.get("score") or 0) > above else ""
            widened = ' <span class="muted small">(widened)</span>' if (r.get("band_widened") or 1) > 1 else ""
            cells = [r.get("local_mean"), r.get("local_max"), r.get("band_mean"), r.get("band_max"), r.get("score"),
                     r.get("accumulated_mean")]
            numbers = "".join(f'<td class="num">{_g(v)}</td>' for v in cells)
            body.append(f"<tr{chosen}><td>{escape(str(r.get('label')))}{widened}</td>{numbers}"
                        f'<td class="num">{_cos(r.get("accumulated_cosine"))}</td></tr>')
        return f'<div class="scroll"><table class="grid cand-loc">{header}<tbody>{"".join(body)}</tbody></table></div>'

    return (f"<h4>Candidates (highest scores)</h4>{table(ranked[:TOP_ROWS])}"
            f"<details><summary class=\"muted small\">all {len(rows)} candidates, in forward order</summary>"
            f"{table(rows)}</details>")


def _depth_plot(case: Mapping[str, Any], above: float) -> str:
    rows = [r for r in case.get("candidates") or [] if r.get("local_mean") is not None]
    if not rows:
        return '<p class="muted">No candidate was measured.</p>'
    series = {
        "own": [r.get("local_mean") for r in rows],
        "band": [r.get("band_mean") for r in rows],
        "acc": [r.get("accumulated_mean") for r in rows],
        "ctrl": [r.get("control_accumulated_mean") for r in rows],
    }
    values = [v for vs in series.values() for v in vs if isinstance(v, (int, float)) and v > 0 and math.isfinite(v)]
    values += [above * v for v in series["band"] if isinstance(v, (int, float)) and v > 0]
    if not values:
        return '<p class="muted">Every error is zero.</p>'
    lo, hi = math.log10(min(values)) - 0.2, math.log10(max(values)) + 0.2
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    count = len(rows)

    def px(i: float) -> float:
        return _LEFT + (i + 0.5) / count * plot_w

    def py(v: Any) -> float | None:
        if not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
            return None
        return _TOP + (hi - math.log10(v)) / (hi - lo) * plot_h

    label = f"error by depth, {case.get('label')}"
    out = [f'<svg class="depth" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>',
           f'<rect class="frame" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}"/>']
    for exponent in range(math.ceil(lo), math.floor(hi) + 1):
        y = py(10.0**exponent)
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{_LEFT - 4}" y="{y + 3.5:.1f}" text-anchor="end">1e{exponent}</text>')
    band_top = [(px(i), py(above * b) if isinstance(b, (int, float)) else None) for i, b in enumerate(series["band"])]
    polygon = [(x, y) for x, y in band_top if y is not None]
    if polygon:
        bottom = _TOP + plot_h
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in polygon)
        out.append(f'<polygon class="band" points="{polygon[0][0]:.1f},{bottom} {points} '
                   f'{polygon[-1][0]:.1f},{bottom}"><title>up to {above:g}x the band</title></polygon>')
    for name, css in (("band", "bandline"), ("ctrl", "ctrl"), ("acc", "acc")):
        coords = [(px(i), py(v)) for i, v in enumerate(series[name])]
        for segment in segments(coords):
            out.append(f'<polyline class="{css}" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in segment)}"/>')
    culprits = set((case.get("verdict") or {}).get("names") or ())
    last_layer = None
    for i, row in enumerate(rows):
        layer = row.get("layer")
        if layer is not None and layer != last_layer and (layer % max(1, _layer_step(rows)) == 0):
            out.append(f'<text class="tick" x="{px(i):.1f}" y="{HEIGHT - _BOTTOM + 14}" text-anchor="start">L{layer}'
                       "</text>")
        last_layer = layer
        if row.get("name") in culprits:
            out.append(f'<line class="culprit" x1="{px(i):.1f}" x2="{px(i):.1f}" y1="{_TOP}" y2="{_TOP + plot_h}"/>')
        y = py(row.get("local_mean"))
        if y is None:
            continue
        css = "own above" if (row.get("score") or 0) > above else "own"
        tip = (f"{row.get('label')}: own {_g(row.get('local_mean'))}, band {_g(row.get('band_mean'))}, "
               f"score {_g(row.get('score'))}")
        out.append(f'<circle class="{css}" cx="{px(i):.1f}" cy="{y:.1f}" r="2.6"><title>{escape(tip)}</title></circle>')
    out.append(f'<text class="tick" x="{_LEFT + plot_w}" y="{HEIGHT - 4}" text-anchor="end">depth (modules in '
               "forward order)</text></svg>")
    return "".join(out)


def _layer_step(rows: Sequence[Mapping[str, Any]]) -> int:
    layers = {r.get("layer") for r in rows if r.get("layer") is not None}
    return max(1, math.ceil(len(layers) / 15))


def _g(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return f"{value:.3g}"


def _cos(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return f"{value:.6f}"
