"""One case's section of the report: the question, both texts aligned token by token with the first
divergence marked, per-token plots, the case's statistics, the top-k candidates at the focus step and
the per-token metrics (`html.render_report` calls `case_section` for each detailed case)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from logitsdump.compare import verdicts
from logitsdump.compare.lenient import finite_float
from logitsdump.compare.records import FOCUS_REASONS, CaseRecord
from logitsdump.report import control, statistics, topk_evidence
from logitsdump.report.cells import fmt, fmt_cos, fmt_number, fmt_pct, golden_name, test_name
from logitsdump.report.load import CompareResult, load_topk
from logitsdump.report.svg import line_plot
from logitsdump.token_bytes import is_byte_text

#: At most this many tokens of a generated text are shown.
MAX_TOKENS_SHOWN = 512


# ---- one case ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    token_id: int | None
    text: str | None


def case_section(result: CompareResult, case: CaseRecord, number: int, k: int) -> str:
    focus = case.focus()
    if case.replayed:
        widest = max((c.flip_margin for c in case.changes if c.flip_margin is not None), default=None)
        facts = [
            ("replay", f"{case.replay_mode} mode"),
            ("argmax changes", f"{len(case.changes)} of {case.tokens_judged} steps"),
            ("largest golden margin", fmt(widest) if widest is not None else "–"),
            ("KL mean / p95 / worst", " / ".join(fmt(v) for v in (case.mean_kl, case.p95_kl, case.worst_kl))),
            ("cosine mean / p95 / worst",
             " / ".join(fmt_cos(v) for v in (case.mean_cosine, case.p95_cosine, case.worst_cosine))),
            ("steps judged", f"{case.tokens_judged} of {case.tokens_total}"),
        ]
    else:
        facts = [
            ("first argmax change",
             f"token {case.first_diff_token}" if case.first_diff_token is not None else "none"),
            ("flip margin", fmt(case.flip_margin) if case.flip_margin is not None else "–"),
            ("worst cosine", fmt_cos(case.worst_cosine) if case.worst_cosine is not None else "–"),
            ("worst KL", fmt(case.worst_kl) if case.worst_kl is not None else "–"),
            ("tokens judged", f"{case.tokens_judged} of {case.tokens_total}"),
        ]
    fact_html = "".join(f"<div><dt>{escape(a)}</dt><dd>{escape(b)}</dd></div>" for a, b in facts)
    parts = [
        f'<section class="case v-{verdicts.slug(case.verdict)}" id="case-{number}" '
        f'data-verdict="{escape(case.verdict)}">',
        f'<h3><span class="pill v-{verdicts.slug(case.verdict)}">{escape(case.verdict)}</span> {escape(case.label)} '
        f'<span class="task">{escape(case.task)}</span></h3>',
        f'<p class="explain">{escape(verdicts.meaning(case.verdict))}</p>',
    ]
    if case.reason:
        parts.append(f'<p class="reason"><code>{escape(case.reason)}</code></p>')
    parts.append(f'<dl class="facts">{fact_html}</dl>')
    query = case.query
    parts.append("<h4>Question</h4>")
    if query is None:
        parts.append('<p class="muted">No manifest beside the logits files: the question is unknown.</p>')
    else:
        parts.append(f'<pre class="query">{escape(query)}</pre>')
    parts.append(_alignment(result, case))
    parts.append(_plots(case, result, focus.token_id if focus else None))
    parts.append(control.case_block(case))  # '' unless judged against the control arm
    parts.append(statistics.case_block(case, result))
    if case.replayed:
        parts.append(_changes_table(result, case))
    if case.evidence:  # a server's top-k dump: its own numbers, the KL marked as a bound
        parts.append(topk_evidence.case_block(case))
    else:
        parts.append(_topk_block(result, case, number, k))
        parts.append(_steps_table(case))
    parts.append('<p class="top-link"><a href="#all-cases">↑ all cases</a></p>')
    parts.append("</section>")
    return "".join(parts)


def _sequence(case: CaseRecord, *, golden: bool) -> tuple[list[_Token], str]:
    """The generated tokens of one side, and where they come from."""
    manifest = case.manifest(golden=golden)
    if manifest is not None and manifest.output_token_ids is not None:
        return _manifest_tokens(manifest.output_token_ids, manifest.output_tokens), "manifest"
    tokens = []
    for step in case.steps:
        token_id = step.metric("golden_top1" if golden else "my_top1")
        text = step.golden_top1_text if golden else step.my_top1_text
        tokens.append(_Token(token_id, text))
    return tokens, "argmax"


def _manifest_tokens(ids: Sequence[int | None], texts: Sequence[str | None] | None) -> list[_Token]:
    texts = texts or ()
    return [_Token(t, texts[i] if i < len(texts) else None) for i, t in enumerate(ids)]


def _first_difference(golden: Sequence[_Token], mine: Sequence[_Token]) -> int | None:
    """The first position where the two generated sequences differ (one ending counts), or None."""
    for i in range(max(len(golden), len(mine))):
        g = golden[i].token_id if i < len(golden) else None
        m = mine[i].token_id if i < len(mine) else None
        if g != m:
            return i
    return None


def _text_divergence(case: CaseRecord) -> int | None:
    return _first_difference(_sequence(case, golden=True)[0], _sequence(case, golden=False)[0])


def _replay_alignment(result: CompareResult, case: CaseRecord) -> str:
    """Golden's tokens (fed to both devices) over the test's own choice at each step."""
    golden, _ = _sequence(case, golden=True)
    if not golden:  # no golden manifest: the test's manifest holds the forced (golden) tokens
        manifest = case.my_manifest
        if manifest is not None and manifest.output_token_ids is not None:
            golden = _manifest_tokens(manifest.output_token_ids, manifest.output_tokens)
    steps = {s.token_id: s for s in case.steps if s.token_id is not None}
    length = max(len(golden), max(steps, default=-1) + 1)
    shown = min(length, MAX_TOKENS_SHOWN)
    changed = {c.token for c in case.changes}
    columns = []
    for i in range(shown):
        g = golden[i] if i < len(golden) else None
        step = steps.get(i)
        mine = step.metric("my_top1") if step is not None else None
        m = _Token(mine, step.my_top1_text) if step is not None and mine is not None else None
        columns.append(_token_column(i, ["changed"] if i in changed else [], i in steps, g, m))
    if not columns:
        return '<h4>Generated text</h4><p class="muted">No tokens recorded.</p>'
    more = f" Showing the first {shown} of {length} tokens." if shown < length else ""
    note = (f"The test device was fed golden's tokens (replay, {case.replay_mode} mode): the first row is the text "
            "both devices were conditioned on, the second the test's own choice (argmax) at each step; the "
            f"{len(changed)} step(s) where it differs are highlighted.{more}")
    return (
        "<h4>Golden's text and the test's own choices, step by step</h4>"
        f'<p class="muted small">{escape(note)} Step numbers in bold have logits files.</p>'
        '<div class="align replay">'
        f'<div class="col head"><span class="i">step</span><span class="tok g">{escape(golden_name(result))}</span>'
        f'<span class="tok m">{escape(test_name(result))} own</span></div>'
        f'{"".join(columns)}</div>'
    )


def _token_column(i: int, classes: list[str], dumped: bool, golden: _Token | None, mine: _Token | None) -> str:
    """Step `i` of an alignment: its number, golden's token above the test's."""
    cls = ["col", *classes, *(["dumped"] if dumped else [])]
    title = "logits dumped for this step" if dumped else "no logits file for this step"
    return (
        f'<div class="{" ".join(cls)}"><span class="i" title="{title}">{i}</span>'
        f"{_token_html(golden)}{_token_html(mine)}</div>"
    )


def _alignment(result: CompareResult, case: CaseRecord) -> str:
    if case.replayed:
        return _replay_alignment(result, case)
    golden, g_source = _sequence(case, golden=True)
    mine, m_source = _sequence(case, golden=False)
    length = max(len(golden), len(mine))
    first = _first_difference(golden, mine)
    dumped = {s.token_id for s in case.steps if s.token_id is not None}
    shown = min(length, MAX_TOKENS_SHOWN)
    columns = []
    for i in range(shown):
        g = golden[i] if i < len(golden) else None
        m = mine[i] if i < len(mine) else None
        cls = []
        if first is not None and i == first:
            cls.append("first-diff")
        elif first is not None and i > first:
            cls.append("after")
        columns.append(_token_column(i, cls, i in dumped, g, m))
    if first is None:
        note = "The two generated texts are the same token for token."
    else:
        note = f"The texts first differ at token {first} (highlighted); later tokens follow different prefixes."
    if case.first_diff_token is not None and first is not None and case.first_diff_token != first:
        note += f" The logits' first argmax change is at token {case.first_diff_token}."
    source = ("from the manifests" if g_source == m_source == "manifest"
              else "as each step's argmax (no manifest: token ids; texts from vocab.json when present)")
    more = f" Showing the first {shown} of {length} tokens." if shown < length else ""
    if not columns:
        return '<h4>Generated text</h4><p class="muted">No tokens recorded.</p>'
    return (
        "<h4>Generated text, token by token</h4>"
        f'<p class="muted small">Tokens {escape(source)}. {escape(note)}{escape(more)} '
        "Step numbers in bold have logits files.</p>"
        '<div class="align">'
        f'<div class="col head"><span class="i">step</span><span class="tok g">{escape(golden_name(result))}</span>'
        f'<span class="tok m">{escape(test_name(result))}</span></div>'
        f'{"".join(columns)}</div>'
    )


def _token_html(token: _Token | None) -> str:
    if token is None:
        return '<span class="tok none" title="no token">·</span>'
    if token.text is None:
        shown = f"#{token.token_id}" if token.token_id is not None else "?"
        return f'<span class="tok id" title="token id {token.token_id}">{escape(shown)}</span>'
    text = token.text
    ident = f"#{token.token_id}" if token.token_id is not None else "#?"
    if is_byte_text(text):  # a piece of a multi-byte character: its bytes, and its id to tell them apart
        title = f"id {token.token_id}: the byte(s) {text} of a multi-byte character"
        return (f'<span class="tok bytes" title="{escape(title)}">{escape(text)} '
                f'<span class="tid">{escape(ident)}</span></span>')
    if "\ufffd" in text:  # a dump written before the bytes were recorded: the id alone tells them apart
        title = f"id {token.token_id}: a piece of a multi-byte character (its bytes are not in this dump's vocab.json)"
        return f'<span class="tok bytes" title="{escape(title)}">{escape(ident)}</span>'
    visible = (text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")) or "∅"
    title = f"id {token.token_id}: {text!r}"
    return f'<span class="tok" title="{escape(title)}">{escape(visible)}</span>'


def _plots(case: CaseRecord, result: CompareResult, marker: int | None) -> str:
    steps = [s for s in case.steps if s.token_id is not None]
    if not steps:
        return '<h4>Per-token metrics</h4><p class="muted">No token was compared.</p>'
    xs = [s.token_id for s in steps]
    xs_int = [x for x in xs if x is not None]
    if case.replayed:  # the same prefix at every step: nothing to shade, every change marked
        shade, changed = None, [c.token for c in case.changes]
        label = f"shown below: token {marker}" if marker is not None else ""
    else:  # from the step after the first differing token on, the runs were fed different prefixes
        shade, changed = (case.first_diff_token if case.first_diff_token is not None else _text_divergence(case)), []
        label = f"divergence: token {marker}" if marker is not None else ""
    o = result.options
    cos_threshold, kl_threshold = finite_float(o.get("cosine_similarity")), finite_float(o.get("kl_divergence"))
    margin_threshold, margin_hint = finite_float(o.get("tie_tolerance")), "tie tolerance"
    hint = "dashed: threshold"
    if case.replayed:
        cos_threshold, kl_threshold = finite_float(o.get("noise_cosine")), finite_float(o.get("noise_kl"))
        margin_threshold, margin_hint = finite_float(o.get("noise_margin")), "noise margin"
        hint = "dashed: noise tolerance"
    plots = [
        ("cosine similarity", f"higher is closer; {hint}",
         [s.metric("cosine_similarity") for s in steps], cos_threshold, False, "cosine"),
        ("KL divergence (log scale)", f"lower is closer; {hint}",
         [s.metric("kl_divergence") for s in steps], kl_threshold, True, "kl"),
        ("golden top-1 margin (logits)", f"golden's top-1 minus top-2; dashed: {margin_hint}",
         [s.metric("golden_margin") for s in steps], margin_threshold, False, "margin"),
    ]
    figures = []
    for title, hint, values, threshold, log, name in plots:
        svg = line_plot(
            xs_int, values, label=f"{title} per token, {case.label}", marker=marker, marker_label=label,
            markers=changed, shade_from=shade, threshold=threshold, log=log, css_class=f"plot plot-{name}",
        )
        figures.append(f'<figure><figcaption><b>{escape(title)}</b> <span class="muted">{escape(hint)}</span>'
                       f"</figcaption>{svg}</figure>")
    if case.replayed:
        legend = ('<p class="muted small legend"><span class="key marker minor"></span> argmax differs'
                  ' <span class="key marker"></span> the step shown below'
                  ' <span class="key threshold"></span> tolerance · every step judged (same prefix on both sides)'
                  "</p>")
    else:
        legend = ('<p class="muted small legend"><span class="key marker"></span> divergence step'
                  ' <span class="key shade"></span> not judged (different prefixes)'
                  ' <span class="key threshold"></span> threshold</p>')
    return f'<h4>Per-token metrics</h4><div class="plots">{"".join(figures)}</div>{legend}'


def _topk_block(result: CompareResult, case: CaseRecord, number: int, k: int) -> str:
    focus = case.focus()
    if focus is None:
        return ""
    topk = load_topk(result, number, k, focus)
    why = FOCUS_REASONS.get(case.focus_why or "", "")
    head = f"<h4>Top-{k} candidates at token {focus.token_id} <span class=\"muted\">({escape(why)})</span></h4>"
    if not topk.golden and not topk.mine:
        return head + f'<p class="muted">Not available: {escape(topk.problem or "no logits")}.</p>'
    picks = (focus.metric("golden_top1"), focus.metric("my_top1"))
    tables = [
        _topk_table(_side_title("golden", golden_name(result)), "g", topk.golden, picks),
        _topk_table(_side_title("test", test_name(result)), "m", topk.mine, picks),
    ]
    note = f'<p class="muted small">{escape(topk.problem)}</p>' if topk.problem else ""
    return (head + '<p class="muted small">Logits and softmax probabilities read from the logits files. '
            '<span class="pickg">G</span> golden\'s choice, <span class="pickm">T</span> the test\'s choice.</p>'
            f'<div class="topk">{"".join(tables)}</div>{note}')


def _changes_table(result: CompareResult, case: CaseRecord) -> str:
    """Every step of a replayed case where the argmax differs: both choices, margins and ranks."""
    if not case.changes:
        return ('<h4>Argmax changes</h4><p class="muted">None: both devices pick the same token at every step.</p>')
    tie = finite_float(result.options.get("noise_margin"))
    rows = []
    for c in case.changes:
        clear = tie is not None and c.flip_margin is not None and c.flip_margin > tie
        cls = ' class="clear"' if clear else ""
        rows.append(
            f"<tr{cls}><td class=\"num\">{c.token}</td>"
            f"<td>{_token_html(_Token(c.golden_token, c.golden_token_text))}</td>"
            f"<td>{_token_html(_Token(c.my_token, c.my_token_text))}</td>"
            f"<td class=\"num\">{escape(fmt(c.flip_margin))}</td>"
            f"<td class=\"num\">{escape(fmt(c.my_flip_margin))}</td>"
            f"<td class=\"num\">{_opt(c.my_rank_in_golden)}</td><td class=\"num\">{_opt(c.golden_rank_in_mine)}</td>"
            f"<td>{'clear margin' if clear else 'near-tie'}</td></tr>"
        )
    return (
        f"<h4>Argmax changes <span class=\"muted\">({len(case.changes)})</span></h4>"
        '<p class="muted small">golden margin: golden\'s logit of its choice minus its logit of the test\'s choice; '
        "test margin: the same on the test's side; rank: where each device put the other's choice (1 = top). "
        f"A change is a near-tie when the golden margin is at most the noise margin ({fmt_number(tie)} logits).</p>"
        '<div class="scroll"><table class="grid changes"><thead><tr><th class="num">step</th><th>golden chose</th>'
        '<th>test chose</th><th class="num">golden margin</th><th class="num">test margin</th>'
        '<th class="num">rank of test\'s choice in golden</th><th class="num">rank of golden\'s choice in test</th>'
        f"<th>kind</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _opt(value: int | None) -> str:
    return "–" if value is None else escape(str(value))


def _side_title(side: str, name: str) -> str:
    return side if name == side else f"{side} · {name}"


def _topk_table(title: str, side: str, rows: Sequence[Any], picks: tuple[int | None, int | None]) -> str:
    if not rows:
        return f'<div><h5 class="{side}">{escape(title)}</h5><p class="muted">not available</p></div>'
    body = []
    for rank, cand in enumerate(rows, 1):
        marks = ""
        if cand.token == picks[0]:
            marks += '<span class="pickg" title="golden\'s choice">G</span>'
        if cand.token == picks[1]:
            marks += '<span class="pickm" title="the test\'s choice">T</span>'
        cls = ' class="chosen"' if cand.token in picks else ""
        token = _token_html(_Token(cand.token, cand.text))
        if cand.text is not None:
            token += f' <span class="muted small">#{cand.token}</span>'
        width = max(0.0, min(100.0, cand.probability * 100))
        body.append(
            f"<tr{cls}><td class=\"num muted\">{rank}</td><td>{token}"
            f"{marks}</td><td class=\"num\">{escape(f'{cand.logit:.5f}')}</td>"
            f'<td class="num prob"><span class="bar" style="width:{width:.1f}%"></span>'
            f"<span class=\"pv\">{escape(fmt_pct(cand.probability))}</span></td></tr>"
        )
    return (f'<div><h5 class="{side}">{escape(title)}</h5><table class="grid cand"><thead><tr><th>#</th>'
            '<th>token</th><th class="num">logit</th><th class="num">probability</th></tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _steps_table(case: CaseRecord) -> str:
    rows = []
    for s in case.steps:
        status = ("pass" if s.passed else "fail") if s.passed is not None else "NA"
        cls = f' class="{status.lower()}"'
        rows.append(
            f"<tr{cls}><td class=\"num\">{s.token_id if s.token_id is not None else '–'}</td>"
            f"<td>{_token_html(_Token(s.metric('golden_top1'), s.golden_top1_text))}</td>"
            f"<td>{_token_html(_Token(s.metric('my_top1'), s.my_top1_text))}</td>"
            f"<td class=\"num\">{escape(fmt_cos(s.metric('cosine_similarity')))}</td>"
            f"<td class=\"num\">{escape(fmt(s.metric('kl_divergence')))}</td>"
            f"<td class=\"num\">{escape(fmt(s.metric('l1_norm')))}</td>"
            f"<td class=\"num\">{escape(fmt(s.metric('max_abs_diff')))}</td>"
            f"<td class=\"num\">{escape(fmt(s.metric('golden_margin')))}</td><td>{escape(status)}</td>"
            f"<td class=\"small\">{escape(s.reason)}</td></tr>"
        )
    return (
        '<details class="steps"><summary>Per-token numbers</summary><div class="scroll">'
        '<table class="grid"><thead><tr><th class="num">token</th><th>golden top-1</th><th>test top-1</th>'
        '<th class="num">cosine</th><th class="num">KL</th><th class="num">L1</th><th class="num">max |diff|</th>'
        '<th class="num">golden margin</th><th>rule</th><th>reason</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></details>"
    )
