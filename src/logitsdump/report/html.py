"""The HTML report: one self-contained page (inline CSS, JS and SVG; no network) for a compare run.

Sections: an overview (cases by verdict and by task, the thresholds), the
run's statistics (llama.cpp's KLD and Δp figures, tables and plots:
`statistics.py`), a sortable and filterable table of all cases, and one
section per case (the question, both generated texts aligned token by token
with the first divergence highlighted, per-token plots, the case's statistics
and distribution plots, the top-k candidates of both devices at the divergence
step, the per-token metrics).

Every piece of data is escaped with `html.escape`; the page carries no data
inside its script, and a Content-Security-Policy forbids any network access.
Its style sheet and scripts are in `page_assets.py`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from logitsdump.compare import verdicts
from logitsdump.compare.records import FOCUS_REASONS, CaseRecord, finite_float
from logitsdump.fsutil import atomic_write_text, ensure_writable_dir
from logitsdump.report import control, numbers, page_assets, statistics
from logitsdump.report.load import CompareResult, load_compare, load_compares, load_topk
from logitsdump.report.svg import line_plot

#: Default file name of the report, written beside the compare output.
REPORT_NAME = "report.html"
#: At most this many tokens of a generated text are shown.
MAX_TOKENS_SHOWN = 512
#: Default number of candidates in the top-k tables.
DEFAULT_TOPK = 10


def write_report(
    source: Any, output_path: str | os.PathLike[str] | None = None, *, topk: int | None = None
) -> Path:
    """Write the HTML report of a compare run; return its path.

    `source`: the compare output folder (newest run), one of its result files, a
    `CompareSummary`, or a loaded `CompareResult`. `output_path`: a folder
    (created if missing; the page is `report.html` in it) or a file name ending
    in `.html`; default: `report.html` in the folder of the compare output. The
    file is written atomically.
    """
    if isinstance(source, (list, tuple)):
        result = load_compares(source)
    else:
        result = source if isinstance(source, CompareResult) else load_compare(source)
    path = Path(output_path) if output_path is not None else default_report_path(result)
    if not names_a_page(path):
        path = ensure_writable_dir(path) / REPORT_NAME  # a folder, as `-o` is everywhere
    atomic_write_text(path, render_report(result, topk=topk))
    return path


def names_a_page(path: Path) -> bool:
    """Whether report's `-o` names the page itself (a name ending in .html that is not a folder)."""
    return path.suffix.lower() in (".html", ".htm") and not path.is_dir()


def default_report_path(result: CompareResult) -> Path:
    """`report.html` beside the compare run's case JSON."""
    return result.json_path.parent / REPORT_NAME


def render_report(result: CompareResult, *, topk: int | None = None) -> str:
    """The whole page as text."""
    k = topk or min(int(result.options.get("topk") or DEFAULT_TOPK), 20)
    title = f"logitsdump report · {_golden_name(result)} vs {_test_name(result)}"
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        f"<title>{escape(title)}</title>",
        f"<style>{page_assets.CSS}{page_assets.VERDICT_CSS}</style>",
        f"<script>{page_assets.ERROR_JS}</script>",
        "</head>",
        "<body>",
        _header(result),
        _overview(result),
        control.run_block(result.document.reference),  # the noise reference (control arm) of the run
        statistics.run_section(result),
        _case_table(result),
        '<section id="cases" class="cases">',
        f"<h2>Cases <span class=\"muted\">({len(result.cases)})</span></h2>",
    ]
    if not result.cases:
        parts.append('<p class="muted">This compare run has no cases.</p>')
    for number, case in enumerate(result.cases):
        parts.append(_case_section(result, case, number, k))
    parts += [
        "</section>",
        f'<footer>{escape(result.tool)} · compare run {escape(_stamp(result.timestamp))} · '
        f"{escape(str(result.json_path.name))}</footer>",
        f"<script>{page_assets.MAIN_JS}</script>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


# ---- header and overview ----------------------------------------------------------------------


def _golden_name(result: CompareResult) -> str:
    return _device_name(result, golden=True)


def _test_name(result: CompareResult) -> str:
    return _device_name(result, golden=False)


def _device_name(result: CompareResult, *, golden: bool) -> str:
    """`fp32 · cpu` from the first manifest that says, else `golden` / `test`."""
    for case in result.cases:
        manifest = case.manifest(golden=golden)
        if manifest is not None and manifest.dtype:
            return f"{manifest.dtype} · {manifest.device}" if manifest.device else manifest.dtype
    return "golden" if golden else "test"


def _stamp(stamp: str) -> str:
    if len(stamp) == 14 and stamp.isdigit():
        return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[8:10]}:{stamp[10:12]}:{stamp[12:]}"
    return stamp


def _header(result: CompareResult) -> str:
    golden = result.options.get("golden_path", "")
    mine = result.options.get("my_path", "")
    return (
        '<header class="top">'
        "<h1>logitsdump report</h1>"
        '<p class="sub">Is the difference between the two devices a precision bug or numerical noise? '
        "Each case is one bad case of <code>bcanalyze</code>, compared token by token.</p>"
        '<dl class="paths">'
        f'<dt><span class="dev g">golden</span></dt><dd>{escape(_golden_name(result))} · '
        f"<code>{escape(str(golden))}</code></dd>"
        f'<dt><span class="dev m">test</span></dt><dd>{escape(_test_name(result))} · '
        f"<code>{escape(str(mine))}</code></dd>"
        "</dl>"
        '<nav><a href="#overview">Overview</a><a href="#statistics">Statistics</a><a href="#all-cases">All cases</a>'
        '<a href="#cases">Case details</a>'
        "</nav>"
        "</header>"
    )


def _overview(result: CompareResult) -> str:
    counts = result.verdict_counts()
    shown = result.verdicts_shown()
    total = len(result.cases)
    cards = []
    for verdict in shown:
        count = counts.get(verdict, 0)
        cards.append(
            f'<div class="card v-{verdicts.slug(verdict)}{" zero" if count == 0 else ""}" '
            f'data-verdict="{escape(verdict)}">'
            f'<div class="count">{count}</div><div class="name">{escape(verdict)}</div>'
            f'<p>{escape(verdicts.meaning(verdict))}</p></div>'
        )
    tasks = result.task_counts()
    task_rows = []
    for task, row in tasks.items():
        cells = "".join(
            f'<td class="num{" zero" if row.get(v, 0) == 0 else ""}">{row.get(v, 0)}</td>' for v in shown
        )
        task_rows.append(f"<tr><th>{escape(task)}</th><td class=\"num\">{sum(row.values())}</td>{cells}</tr>")
    if not task_rows:
        task_rows.append(f'<tr><td colspan="{len(shown) + 2}" class="muted">no cases</td></tr>')
    head = "".join(f'<th class="num"><span class="pill v-{verdicts.slug(v)}">{escape(v)}</span></th>' for v in shown)
    summary = result.summary
    replay_note = ""
    if result.replayed:
        replayed = sum(1 for c in result.cases if c.replayed)
        replay_note = (
            f'<p class="replay-note">{replayed} of {total} case{"s" if total != 1 else ""} were <b>replayed</b>: '
            "the device under test was fed golden's generated tokens (<code>dump --replay</code>), so both devices "
            "predict every step from the same prefix and every step is judged. Such a case is <b>noise</b> when "
            "the devices pick different tokens only where golden's top-1 led the test's choice by at most the noise "
            "margin and every step stays within the noise tolerances (KL and cosine); <b>precision-suspect</b> "
            "when a different token is picked where golden was clearly sure, or the distributions drift beyond "
            "the tolerances; <b>consistent</b> when no choice changes and every step is close.</p>"
        )
    rows_line = ""
    if summary:
        rows_line = (
            f'<p class="muted">{_int(summary.get("rows"))} token rows compared: {_int(summary.get("passed"))} '
            f'passed, {_int(summary.get("failed"))} failed, {_int(summary.get("na"))} without metrics (NA).</p>'
        )
    return (
        '<section id="overview">'
        f"<h2>Overview <span class=\"muted\">({total} case{'s' if total != 1 else ''})</span></h2>"
        f'<div class="cards">{"".join(cards)}</div>{replay_note}'
        '<div class="two">'
        '<div><h3>Cases by task</h3>'
        f'<table class="grid tasks"><thead><tr><th>task</th><th class="num">cases</th>{head}</tr></thead>'
        f"<tbody>{''.join(task_rows)}</tbody></table>{rows_line}</div>"
        f"<div><h3>Thresholds used</h3>{_thresholds(result)}</div>"
        "</div>"
        "</section>"
    )


def _thresholds(result: CompareResult) -> str:
    o = result.options
    rows = [
        ("cosine similarity", f"&gt; {_g(o.get('cosine_similarity'))}", "a token passes when all three hold…"),
        ("KL divergence", f"&lt; {_g(o.get('kl_divergence'))}", "KL(softmax(golden) ‖ softmax(test))"),
        ("|relative L1|", f"&lt; {_g(o.get('l1_norm'))}", "sum|test| / sum|golden| − 1"),
        ("ULP dtype", escape(str(o.get("dtype", "?"))), "…or when the max logits differ by at most one ULP"),
        ("tie tolerance", f"{_g(o.get('tie_tolerance'))} logits",
         "an argmax change is a tie-flip when golden's margin is at most this"),
        ("top-k", escape(str(o.get("topk", "?"))), "k of the top-k overlap"),
    ]
    if result.replayed:
        rows += [
            ("noise margin", f"{_g(o.get('noise_margin'))} logits",
             "replayed: an argmax change is noise when golden's margin is at most this"),
            ("noise KL", f"&le; {_g(o.get('noise_kl'))}", "replayed: a step is close when its KL is at most this…"),
            ("noise cosine", f"&ge; {_g(o.get('noise_cosine'))}", "…and its cosine at least this"),
        ]
    floor = result.document.floor
    if floor is not None and floor.get("description"):
        rows.append(("noise floor", escape(str(floor.get("source", "?"))), str(floor["description"])))
    body = "".join(
        f"<tr><th>{escape(name)}</th><td class=\"num\">{value}</td><td class=\"muted\">{escape(note)}</td></tr>"
        for name, value, note in rows
    )
    return f'<table class="grid thresholds"><tbody>{body}</tbody></table>'


# ---- the table of all cases -------------------------------------------------------------------


_COLUMNS = (
    ("case", "text"), ("task", "text"), ("verdict", "verdict"), ("first diff token", "num"),
    ("flip margin", "num"), ("worst cosine", "num"), ("worst KL", "num"), ("tokens judged", "num"),
    ("reason", "text"),
)


_CHANGES_COLUMN = ("argmax changes", "num")


def _case_table(result: CompareResult) -> str:
    counts = result.verdict_counts()
    columns = (*_COLUMNS[:4], _CHANGES_COLUMN, *_COLUMNS[4:]) if result.replayed else _COLUMNS
    buttons = ['<button type="button" class="filter all on" data-verdict="*">all '
               f"<b>{len(result.cases)}</b></button>"]
    for verdict in result.verdicts_shown():
        buttons.append(
            f'<button type="button" class="filter on v-{verdicts.slug(verdict)}" data-verdict="{escape(verdict)}" '
            f'aria-pressed="true">{escape(verdict)} <b>{counts.get(verdict, 0)}</b></button>'
        )
    head = "".join(
        f'<th data-type="{kind}" tabindex="0" title="sort by {escape(name)}">{escape(name)}</th>'
        for name, kind in columns
    )
    rows = []
    for number, case in enumerate(result.cases):
        cells = [
            _cell(f'<a href="#case-{number}">{escape(case.label)}</a>', case.label.lower()),
            _cell(escape(case.task), case.task),
            _cell(f'<span class="pill v-{verdicts.slug(case.verdict)}">{escape(case.verdict)}</span>',
                  str(verdicts.rank(case.verdict))),
            _num_cell(case.first_diff_token, str),
            *([_num_cell(len(case.changes) if case.replayed else None, str)] if result.replayed else []),
            _num_cell(case.flip_margin, _fmt),
            _num_cell(case.worst_cosine, _fmt_cos),
            _num_cell(case.worst_kl, _fmt),
            _cell(f"{case.tokens_judged}/{case.tokens_total}", str(case.tokens_judged), "num"),
            _cell(escape(case.reason) or '<span class="muted">–</span>', case.reason, "reason"),
        ]
        rows.append(f'<tr data-verdict="{escape(case.verdict)}" data-index="{number}">{"".join(cells)}</tr>')
    empty = "" if rows else f'<tr><td colspan="{len(columns)}" class="muted">no cases</td></tr>'
    return (
        '<section id="all-cases">'
        "<h2>All cases</h2>"
        f'<div class="filters" role="group" aria-label="filter by verdict">{"".join(buttons)}'
        '<span class="shown muted" id="shown"></span></div>'
        '<div class="scroll"><table class="grid sortable" id="case-table">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}{empty}</tbody></table></div>"
        '<p class="muted small">Click a column to sort; click again to reverse. The buttons show or hide '
        "a verdict.</p>"
        "</section>"
    )


def _cell(content: str, sort_value: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<td{cls} data-v="{escape(sort_value)}">{content}</td>'


def _num_cell(value: float | int | None, fmt) -> str:
    if value is None:
        return '<td class="num" data-v=""><span class="muted">–</span></td>'
    return f'<td class="num" data-v="{value!r}">{escape(fmt(value))}</td>'


# ---- one case ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    token_id: int | None
    text: str | None


def _case_section(result: CompareResult, case: CaseRecord, number: int, k: int) -> str:
    focus = case.focus()
    if case.replayed:
        widest = max((c.flip_margin for c in case.changes if c.flip_margin is not None), default=None)
        facts = [
            ("replay", f"{case.replay_mode} mode"),
            ("argmax changes", f"{len(case.changes)} of {case.tokens_judged} steps"),
            ("largest golden margin", _fmt(widest) if widest is not None else "–"),
            ("KL mean / p95 / worst", " / ".join(_fmt(v) for v in (case.mean_kl, case.p95_kl, case.worst_kl))),
            ("cosine mean / p95 / worst",
             " / ".join(_fmt_cos(v) for v in (case.mean_cosine, case.p95_cosine, case.worst_cosine))),
            ("steps judged", f"{case.tokens_judged} of {case.tokens_total}"),
        ]
    else:
        facts = [
            ("first argmax change",
             f"token {case.first_diff_token}" if case.first_diff_token is not None else "none"),
            ("flip margin", _fmt(case.flip_margin) if case.flip_margin is not None else "–"),
            ("worst cosine", _fmt_cos(case.worst_cosine) if case.worst_cosine is not None else "–"),
            ("worst KL", _fmt(case.worst_kl) if case.worst_kl is not None else "–"),
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
        f'<div class="col head"><span class="i">step</span><span class="tok g">{escape(_golden_name(result))}</span>'
        f'<span class="tok m">{escape(_test_name(result))} own</span></div>'
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
        f'<div class="col head"><span class="i">step</span><span class="tok g">{escape(_golden_name(result))}</span>'
        f'<span class="tok m">{escape(_test_name(result))}</span></div>'
        f'{"".join(columns)}</div>'
    )


def _token_html(token: _Token | None) -> str:
    if token is None:
        return '<span class="tok none" title="no token">·</span>'
    if token.text is None:
        shown = f"#{token.token_id}" if token.token_id is not None else "?"
        return f'<span class="tok id" title="token id {token.token_id}">{escape(shown)}</span>'
    text = token.text
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
        _topk_table(_side_title("golden", _golden_name(result)), "g", topk.golden, picks),
        _topk_table(_side_title("test", _test_name(result)), "m", topk.mine, picks),
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
            f"<td class=\"num\">{escape(_fmt(c.flip_margin))}</td>"
            f"<td class=\"num\">{escape(_fmt(c.my_flip_margin))}</td>"
            f"<td class=\"num\">{_opt(c.my_rank_in_golden)}</td><td class=\"num\">{_opt(c.golden_rank_in_mine)}</td>"
            f"<td>{'clear margin' if clear else 'near-tie'}</td></tr>"
        )
    return (
        f"<h4>Argmax changes <span class=\"muted\">({len(case.changes)})</span></h4>"
        '<p class="muted small">golden margin: golden\'s logit of its choice minus its logit of the test\'s choice; '
        "test margin: the same on the test's side; rank: where each device put the other's choice (1 = top). "
        f"A change is a near-tie when the golden margin is at most the noise margin ({_g(tie)} logits).</p>"
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
            f"<span class=\"pv\">{escape(_pct(cand.probability))}</span></td></tr>"
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
            f"<td class=\"num\">{escape(_fmt_cos(s.metric('cosine_similarity')))}</td>"
            f"<td class=\"num\">{escape(_fmt(s.metric('kl_divergence')))}</td>"
            f"<td class=\"num\">{escape(_fmt(s.metric('l1_norm')))}</td>"
            f"<td class=\"num\">{escape(_fmt(s.metric('max_abs_diff')))}</td>"
            f"<td class=\"num\">{escape(_fmt(s.metric('golden_margin')))}</td><td>{escape(status)}</td>"
            f"<td class=\"small\">{escape(s.reason)}</td></tr>"
        )
    return (
        '<details class="steps"><summary>Per-token numbers</summary><div class="scroll">'
        '<table class="grid"><thead><tr><th class="num">token</th><th>golden top-1</th><th>test top-1</th>'
        '<th class="num">cosine</th><th class="num">KL</th><th class="num">L1</th><th class="num">max |diff|</th>'
        '<th class="num">golden margin</th><th>rule</th><th>reason</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></details>"
    )


# ---- formatting -------------------------------------------------------------------------------




def _fmt(value: float | None) -> str:
    return numbers.general(value, 4, "–")


def _fmt_cos(value: float | None) -> str:
    return numbers.cosine(value, "–")


def _g(value: Any) -> str:
    number = finite_float(value)
    return escape(f"{number:g}") if number is not None else "?"


def _int(value: Any) -> str:
    return escape(str(value)) if isinstance(value, int) else "?"


def _pct(p: float) -> str:
    if p >= 0.001:
        return f"{p * 100:.2f}%"
    return f"{p:.2e}"


# ---- inline CSS and JS ------------------------------------------------------------------------
