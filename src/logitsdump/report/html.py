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
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from logitsdump.compare import verdicts
from logitsdump.fsutil import atomic_write_text, ensure_writable_dir
from logitsdump.progress import tracked
from logitsdump.report import control, page_assets, statistics
from logitsdump.report.case_section import case_section
from logitsdump.report.cells import fmt, fmt_cos, fmt_int, fmt_number, golden_name, test_name
from logitsdump.report.index import PAGE_ROWS, detailed, limits_text, tabled
from logitsdump.report.load import CompareResult, load_compare, load_compares

#: Default file name of the report, written beside the compare output.
REPORT_NAME = "report.html"
#: Default number of candidates in the top-k tables.
DEFAULT_TOPK = 10


def write_report(
    source: Any, output_path: str | os.PathLike[str] | None = None, *, topk: int | None = None,
    triage: Any = None, localized: Mapping[str, Any] | None = None,
) -> Path:
    """Write the HTML report of a compare run; return its path.

    `source`: the compare output folder (newest run), one of its result files, a
    `CompareSummary`, or a loaded `CompareResult`. `output_path`: a folder
    (created if missing; the page is `report.html` in it) or a file name ending
    in `.html`; default: `report.html` in the folder of the compare output. The
    file is written atomically. `triage`: a `report.triage.Evidence` (the probe and ablation reports).
    `localized`: a `localize judge` document, shown after the cases.
    """
    if isinstance(source, (list, tuple)):
        result = load_compares(source)
    else:
        result = source if isinstance(source, CompareResult) else load_compare(source)
    path = Path(output_path) if output_path is not None else default_report_path(result)
    if not names_a_page(path):
        path = ensure_writable_dir(path) / REPORT_NAME  # a folder, as `-o` is everywhere
    atomic_write_text(path, render_report(result, topk=topk, triage=triage, localized=localized))
    return path


def names_a_page(path: Path) -> bool:
    """Whether report's `-o` names the page itself (a name ending in .html that is not a folder)."""
    return path.suffix.lower() in (".html", ".htm") and not path.is_dir()


def default_report_path(result: CompareResult) -> Path:
    """`report.html` beside the compare run's case JSON."""
    return result.json_path.parent / REPORT_NAME


def render_report(result: CompareResult, *, topk: int | None = None, triage: Any = None,
                  localized: Mapping[str, Any] | None = None) -> str:
    """The whole page as text (`triage`: the evidence of the set-up-or-numerics section, `report.triage`;
    `localized`: a `localize judge` document, shown after the cases)."""
    from logitsdump.report.triage import html_section

    k = topk or min(int(result.options.get("topk") or DEFAULT_TOPK), 20)
    title = f"logitsdump report · {golden_name(result)} vs {test_name(result)}"
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
        html_section(result, triage),
        _overview(result),
        control.run_block(result.document.reference),  # the noise reference (control arm) of the run
        statistics.run_section(result),
        _case_table(result),
        '<section id="cases" class="cases">',
        f"<h2>Cases <span class=\"muted\">({len(result.cases)})</span></h2>",
    ]
    if not result.cases:
        parts.append('<p class="muted">This compare run has no cases.</p>')
    shown = detailed(result.rows)
    if limits_text(result.rows, shown):
        parts.append(f'<p class="muted limits">{escape(limits_text(result.rows, shown))}</p>')
    for number in tracked(shown, "drawing the case sections", unit="case"):  # read one at a time (index.py)
        parts.append(case_section(result, result.cases[number], number, k))
    parts.append("</section>")
    if localized is not None:
        from logitsdump.report.localize import section

        parts.append(section(localized))
    parts += [
        f'<footer>{escape(result.tool)} · compare run {escape(_stamp(result.timestamp))} · '
        f"{escape(str(result.json_path.name))}</footer>",
        f"<script>{page_assets.MAIN_JS}</script>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


# ---- header and overview ----------------------------------------------------------------------


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
        f'<dt><span class="dev g">golden</span></dt><dd>{escape(golden_name(result))} · '
        f"<code>{escape(str(golden))}</code></dd>"
        f'<dt><span class="dev m">test</span></dt><dd>{escape(test_name(result))} · '
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
        replayed = sum(1 for c in result.rows if c.replayed)
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
            f'<p class="muted">{total} case{"s" if total != 1 else ""}, {fmt_int(summary.get("rows"))} token pairs. '
            f'Against msit\'s per-token thresholds (below) {fmt_int(summary.get("passed"))} pairs pass, '
            f'{fmt_int(summary.get("failed"))} fail, {fmt_int(summary.get("na"))} have no metrics (NA).</p>'
        )
    return (
        '<section id="overview">'
        f"<h2>Overview <span class=\"muted\">({total} case{'s' if total != 1 else ''})</span></h2>"
        f'<div class="cards">{"".join(cards)}</div>{replay_note}'
        '<h3>Cases by task</h3>'
        f'<table class="grid tasks"><thead><tr><th>task</th><th class="num">cases</th>{head}</tr></thead>'
        f"<tbody>{''.join(task_rows)}</tbody></table>{rows_line}"
        f"<h3>What decides the verdicts</h3>{_thresholds(result)}"
        "</section>"
    )


def _thresholds(result: CompareResult) -> str:
    """The thresholds of the run in three groups: the noise floor (the verdicts of replayed cases), the free
    runs' tie tolerance, and msit's per-token thresholds (each row's pass/fail; free-run verdicts too)."""
    o = result.options
    replayed = sum(1 for row in result.rows if row.replayed)
    free = len(result.rows) - replayed
    groups: list[tuple[str, list[tuple[str, str, str]]]] = []
    if replayed:
        rows = [
            ("noise KL", f"&le; {fmt_number(o.get('noise_kl'))}", "a step is close when its KL is at most this…"),
            ("noise cosine", f"&ge; {fmt_number(o.get('noise_cosine'))}",
             "…and its cosine at least this (-1: not used)"),
            ("noise margin", f"{fmt_number(o.get('noise_margin'))} logits",
             "an argmax change is noise when golden's margin is at most this"),
        ]
        groups.append((f"replayed cases ({replayed}): the noise floor decides their verdicts", rows))
    if free or not result.cases:
        groups.append((f"free-run cases ({free}): msit's thresholds below up to the first argmax change, then "
                       "the tie tolerance (the noise floor's margin unless given)", [
                           ("tie tolerance", f"{fmt_number(o.get('tie_tolerance'))} logits",
                            "an argmax change is a tie-flip when golden's margin is at most this"),
                       ]))
    floor = result.document.floor
    if floor is not None and floor.get("description"):
        groups[0][1].insert(0, ("noise floor", escape(str(floor.get("source", "?"))), str(floor["description"])))
    msit = "each token pair's pass/fail (the passed column of logits_cmp_res_*.csv)"
    if not free and result.cases:
        msit += "; the verdicts above do not use them"
    groups.append((f"msit's per-token thresholds: {msit}", [
        ("cosine similarity", f"&gt; {fmt_number(o.get('cosine_similarity'))}", "a token passes when all three hold…"),
        ("KL divergence", f"&lt; {fmt_number(o.get('kl_divergence'))}", "KL(softmax(golden) ‖ softmax(test))"),
        ("|relative L1|", f"&lt; {fmt_number(o.get('l1_norm'))}", "sum|test| / sum|golden| − 1"),
        ("ULP dtype", escape(str(o.get("dtype", "?"))), "…or when the max logits differ by at most one ULP of this"),
        ("top-k", escape(str(o.get("topk", "?"))), "k of the top-k overlap"),
    ]))
    body = []
    for title, rows in groups:
        body.append(f'<tr class="group"><th colspan="3">{escape(title)}</th></tr>')
        body += [f'<tr><th>{escape(name)}</th><td class="num">{value}</td><td class="muted">{escape(note)}</td></tr>'
                 for name, value, note in rows]
    return f'<table class="grid thresholds"><tbody>{"".join(body)}</tbody></table>'


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
    linked = set(detailed(result.rows))
    for number in tabled(result.rows):
        case = result.rows[number]
        label = f'<a href="#case-{number}">{escape(case.label)}</a>' if number in linked else escape(case.label)
        cells = [
            _cell(label, case.label.lower()),
            _cell(escape(case.task), case.task),
            _cell(f'<span class="pill v-{verdicts.slug(case.verdict)}">{escape(case.verdict)}</span>',
                  str(verdicts.rank(case.verdict))),
            _num_cell(case.first_diff_token, str),
            *([_num_cell(len(case.changes) if case.replayed else None, str)] if result.replayed else []),
            _num_cell(case.flip_margin, fmt),
            _num_cell(case.worst_cosine, fmt_cos),
            _num_cell(case.worst_kl, (lambda v: "≥ " + fmt(v)) if case.evidence else fmt),  # top-k: a bound
            _cell(f"{case.tokens_judged}/{case.tokens_total}", str(case.tokens_judged), "num"),
            _cell(escape(case.reason) or '<span class="muted">–</span>', case.reason, "reason"),
        ]
        paged = " hidden" if len(rows) >= PAGE_ROWS else ""  # laid out only when shown (index.PAGE_ROWS)
        rows.append(f'<tr data-verdict="{escape(case.verdict)}" data-index="{number}"{paged}>{"".join(cells)}</tr>')
    empty = "" if rows else f'<tr><td colspan="{len(columns)}" class="muted">no cases</td></tr>'
    return (
        '<section id="all-cases">'
        "<h2>All cases</h2>"
        f'<div class="filters" role="group" aria-label="filter by verdict">{"".join(buttons)}'
        '<span class="shown muted" id="shown"></span></div>'
        f'<div class="scroll"><table class="grid sortable" id="case-table" data-page="{PAGE_ROWS}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}{empty}</tbody></table></div>"
        '<p class="more" id="more" hidden><button type="button" data-more="page">show more</button> '
        '<button type="button" data-more="all">show all</button></p>'
        '<p class="muted small">Click a column to sort; click again to reverse. The buttons show or hide '
        f"a verdict. At most {PAGE_ROWS} rows are shown at a time, in the order chosen.</p>"
        "</section>"
    )


def _cell(content: str, sort_value: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<td{cls} data-v="{escape(sort_value)}">{content}</td>'


def _num_cell(value: float | int | None, fmt) -> str:
    if value is None:
        return '<td class="num" data-v=""><span class="muted">–</span></td>'
    return f'<td class="num" data-v="{value!r}">{escape(fmt(value))}</td>'


# ---- inline CSS and JS ------------------------------------------------------------------------
