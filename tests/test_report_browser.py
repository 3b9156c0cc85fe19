"""The report in a real browser: headless Debian chromium renders it, runs its script, takes a screenshot.

Skipped only when chromium is not installed (CI installs Debian's `chromium`).
"""

from __future__ import annotations

import html
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from logitsdump.report import write_report
from test_report import make_compare_run

from helpers import replayed_dump

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
WIDTH, HEIGHT = 1280, 2000


def _chromium() -> str | None:
    for path in CHROMIUM_PATHS:
        if Path(path).is_file():
            return path
    return shutil.which("chromium")


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium): no real-browser check"
)


#: Appended to a copy of the page (the page itself ships no test hook; its CSP allows inline scripts):
#: counts sections and drawn plots, clicks the "worst KL" header twice and checks the order each time,
#: then shows only one verdict with the filter buttons and checks which rows are hidden.
PROBE_JS = """
(function(){var b=document.body,res=[];
var plots=document.querySelectorAll('svg.plot'),drawn=0;
Array.prototype.forEach.call(plots,function(p){var r=p.getBoundingClientRect();
  if(r.width>0&&r.height>0&&p.querySelectorAll('.series,.dot,.bar').length>0){drawn++;}});
b.dataset.plots=String(plots.length);b.dataset.plotsDrawn=String(drawn);
b.dataset.sections=String(document.querySelectorAll('section.case').length);
var table=document.getElementById('case-table');if(!table){return;}
var heads=Array.prototype.slice.call(table.tHead.rows[0].cells);
var kl=heads.map(function(h){return h.textContent;}).indexOf('worst KL');
function values(){return Array.prototype.map.call(table.tBodies[0].querySelectorAll('tr[data-verdict]'),function(r){
  return r.cells[kl].getAttribute('data-v');}).filter(function(v){return v!==null&&v!=='';}).map(parseFloat);}
function sorted(vals,dir){return vals.every(function(v,i){return i===0||(vals[i-1]-v)*dir<=0;});}
heads[kl].click();var up=sorted(values(),1);heads[kl].click();var down=sorted(values(),-1);
res.push('sort:'+(up&&down?'ok':'bad'));
var buttons=Array.prototype.slice.call(document.querySelectorAll('button.filter'));
function pick(v){return buttons.filter(function(x){return x.dataset.verdict===v;})[0];}
var rows=Array.prototype.slice.call(table.tBodies[0].querySelectorAll('tr[data-verdict]'));
var only=pick('divergent')||pick('precision-suspect');
if(only){buttons[0].click();only.click();
  var ok=rows.every(function(r){return r.hidden===(r.dataset.verdict!==only.dataset.verdict);});
  var n=rows.filter(function(r){return !r.hidden;}).length;
  res.push('filter:'+(ok?'ok':'bad')+':'+n);buttons[0].click();}
b.dataset.selftest=res.join(' ');})();
"""


def probed(page: Path) -> Path:
    """A copy of the report page with `PROBE_JS` run after the page's own script."""
    text = page.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    copy = page.with_name("probed-" + page.name)
    copy.write_text(text.replace("</body>", f"<script>{PROBE_JS}</script>\n</body>"), encoding="utf-8")
    return copy


def run_chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{name}"
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, int, int]:
    """The report of a real fp32-vs-bf16 compare run: (path, cases, divergent cases)."""
    summary = make_compare_run(tmp_path_factory.mktemp("browser"))
    return write_report(summary), len(summary.cases), summary.verdicts["divergent"]


@pytest.mark.slow
def test_page_renders_sections_and_plots_without_script_errors(report, tmp_path) -> None:
    path, cases, divergent = report
    result = run_chromium(tmp_path, "dom", "--enable-logging=stderr", "--v=0", "--dump-dom",
                          probed(path).as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    body_tag = re.search(r"<body[^>]*>", dom).group(0)
    assert "data-errors" not in html_tag, html_tag
    assert 'data-ready="1"' in body_tag, body_tag
    assert f'data-sections="{cases}"' in body_tag
    plots = 3 * cases + 2 * (cases + 1)  # per case: 3 per-token plots, 2 distributions; the run's 2 distributions
    assert f'data-plots="{plots}"' in body_tag and f'data-plots-drawn="{plots}"' in body_tag, body_tag
    # the probe clicked a column (sorted both ways) and the divergent filter
    selftest = re.search(r'data-selftest="([^"]*)"', body_tag).group(1)
    assert "sort:ok" in selftest and f"filter:ok:{divergent}" in selftest, selftest
    # the console saw no error and no blocked resource
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Content Security Policy" in line], console
    for section in ("overview", "all-cases", "cases"):
        assert f'id="{section}"' in dom


@pytest.mark.slow
def test_screenshot_is_a_non_blank_png(report, tmp_path) -> None:
    path, _, _ = report
    shot = tmp_path / "report.png"
    result = run_chromium(tmp_path, "shot", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
                          path.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    width, height, rows = png_rows(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    # a blank page compresses to a handful of identical rows and byte values
    assert len(set(rows)) > 200
    assert len(set(b"".join(rows))) > 64


def png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the (still filtered) scanlines of an 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, chunk = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    assert header is not None and idat
    width, height, depth, color = header[:4]
    assert depth == 8 and color in (2, 6)
    stride = 1 + width * (3 if color == 2 else 4)
    raw = zlib.decompress(b"".join(idat))
    assert len(raw) == stride * height
    return width, height, [raw[i:i + stride] for i in range(0, len(raw), stride)]


def test_a_report_without_cases_runs_its_script_cleanly(tmp_path) -> None:
    from logitsdump.compare import CompareOptions, run_compare

    (tmp_path / "g").mkdir()
    (tmp_path / "m").mkdir()
    page = write_report(run_compare(CompareOptions(tmp_path / "g", tmp_path / "m", tmp_path / "cmp")))
    result = run_chromium(tmp_path, "empty", "--dump-dom", probed(page).as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    html_tag = re.search(r"<html[^>]*>", result.stdout).group(0)
    body_tag = re.search(r"<body[^>]*>", result.stdout).group(0)
    assert "data-errors" not in html_tag, html_tag
    assert 'data-ready="1"' in body_tag and 'data-sections="0"' in body_tag, body_tag


def test_a_replayed_report_renders_every_step_and_filters(tmp_path) -> None:
    """Replayed cases (dump --replay): the page's script runs cleanly, every plot is drawn, and the
    self-test filters on precision-suspect (there is no divergent button on a replay-only page)."""
    from test_compare_replay import _build, _run

    _build(tmp_path)
    summary = _run(tmp_path)
    page = write_report(summary)
    result = run_chromium(tmp_path, "replay", "--dump-dom", probed(page).as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    html_tag = re.search(r"<html[^>]*>", result.stdout).group(0)
    body_tag = re.search(r"<body[^>]*>", result.stdout).group(0)
    assert "data-errors" not in html_tag, html_tag
    cases = len(summary.cases)
    assert 'data-ready="1"' in body_tag and f'data-sections="{cases}"' in body_tag, body_tag
    plots = 3 * cases + 2 * (cases + 1)  # per case: 3 per-token plots, 2 distributions; the run's 2 distributions
    assert f'data-plots="{plots}"' in body_tag and f'data-plots-drawn="{plots}"' in body_tag, body_tag
    selftest = re.search(r'data-selftest="([^"]*)"', body_tag).group(1)
    assert "sort:ok" in selftest and f"filter:ok:{summary.verdicts['precision-suspect']}" in selftest, selftest


#: Clicks "show more" and "show all" under a table longer than a page and counts the rows shown each time.
PAGING_JS = """
(function(){var table=document.getElementById('case-table');
function shown(){return Array.prototype.filter.call(table.tBodies[0].querySelectorAll('tr[data-verdict]'),
  function(r){return !r.hidden;}).length;}
var counts=[shown()];
document.querySelector('#more button[data-more="page"]').click();counts.push(shown());
document.querySelector('#more button[data-more="all"]').click();counts.push(shown());
counts.push(document.getElementById('more').hidden?'done':'more');
document.body.dataset.paging=counts.join(' ');})();
"""


@pytest.mark.slow
def test_a_long_table_is_shown_a_page_at_a_time(tmp_path, monkeypatch) -> None:
    """Issue 27: a browser lays out only the rows shown; "show more" and "show all" list the rest."""
    import numpy as np
    import torch

    from logitsdump.compare import CompareOptions, run_compare
    from logitsdump.report import html

    monkeypatch.setattr(html, "PAGE_ROWS", 5)
    (tmp_path / "g").mkdir()
    (tmp_path / "m").mkdir()
    for key in range(12):
        values = torch.as_tensor(np.linspace(-1.0, 1.0, 32) * (key + 1))
        torch.save(values, tmp_path / "g" / f"logits_boolq_{key}_0.pth")
        torch.save(values.flip(0), tmp_path / "m" / f"logits_boolq_{key}_0.pth")
    page = write_report(run_compare(CompareOptions(tmp_path / "g", tmp_path / "m", tmp_path / "cmp")))
    text = page.read_text(encoding="utf-8")
    assert text.count(" hidden>") >= 7  # rows 6 to 12 start hidden, before any script runs
    copy = page.with_name("paged.html")
    copy.write_text(text.replace("</body>", f"<script>{PAGING_JS}</script>\n</body>"), encoding="utf-8")
    result = run_chromium(tmp_path, "paging", "--dump-dom", copy.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    body_tag = re.search(r"<body[^>]*>", result.stdout).group(0)
    assert 'data-paging="5 10 12 done"' in body_tag, body_tag
# ---- layout: nothing wider than the page, no clipped label ---------------------------------------

#: The window widths a reader's screen may give the page: it must fit every one.
LAYOUT_WIDTHS = (1024, 1280, 1400, 1600, 1920)

#: Measures the rendered page: every element that sticks out of the window (or, inside a scrolling
#: box, out of that box: a box that has to scroll is a cut-off table too), every element whose content is
#: wider than itself (text running over its neighbours or cut), and every SVG label drawn outside its plot.
#: Writes the findings, one per line, into <body data-layout>.
LAYOUT_JS = """
(function(){var vw=document.documentElement.clientWidth,found=[];
function name(el){var c=typeof el.className==='string'&&el.className.trim()?
  '.'+el.className.trim().split(/\\s+/).join('.'):'';
  var s=el.closest('section');return (s&&s.id?s.id+' ':'')+el.tagName.toLowerCase()+c;}
function clips(s){return s.overflowX!=='visible';}
var sw=document.documentElement.scrollWidth;if(sw>vw){found.push('page scrolls sideways: '+sw+' > '+vw);}
var wide=[];
Array.prototype.forEach.call(document.body.querySelectorAll('*'),function(el){
  if(el.closest('svg')){return;}
  var r=el.getBoundingClientRect();if(r.width===0||r.height===0){return;}
  if(r.right>vw+1||r.left<-1){wide.push(el);
    if(wide.indexOf(el.parentElement)<0){
      found.push('wider than the page: '+name(el)+' ('+Math.round(r.left)+'..'+Math.round(r.right)+')');}}
  var s=getComputedStyle(el);
  if(s.display!=='inline'&&el.clientWidth>0&&el.scrollWidth>el.clientWidth+1){
    found.push((clips(s)?'cut off: ':'runs over: ')+name(el)+' ('+el.scrollWidth+' > '+el.clientWidth+')');}});
Array.prototype.forEach.call(document.querySelectorAll('svg text'),function(t){
  var a=t.getBoundingClientRect(),b=t.ownerSVGElement.getBoundingClientRect();
  if(a.width>0&&(a.left<b.left-0.5||a.right>b.right+0.5||a.top<b.top-0.5||a.bottom>b.bottom+0.5)){
    found.push('label outside its plot: '+t.ownerSVGElement.getAttribute('class')+' "'+t.textContent+'"');}});
var seen={},lines=found.filter(function(x){if(seen[x]){return false;}seen[x]=1;return true;});
document.body.dataset.layout=lines.length?lines.join('\\n'):'ok';})();
"""


def layout_problems(page: Path, tmp_path: Path, width: int) -> list[str]:
    """What LAYOUT_JS finds on `page` in a window `width` pixels wide."""
    text = page.read_text(encoding="utf-8")
    copy = page.with_name(f"layout-{width}-" + page.name)
    copy.write_text(text.replace("</body>", f"<script>{LAYOUT_JS}</script>\n</body>"), encoding="utf-8")
    result = run_chromium(tmp_path, f"layout-{width}", f"--window-size={width},1600", "--dump-dom", copy.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body[^>]*>", result.stdout).group(0)
    found = re.search(r'data-layout="([^"]*)"', body)
    assert found is not None, body[:500]
    value = html.unescape(found.group(1))
    return [] if value == "ok" else value.splitlines()


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory) -> Path:
    """The report of a real replayed run (tiny model, fp32 golden, bf16 replaying it) on C-Eval (Chinese
    questions: byte tokens) and MMLU, judged with a tolerances file under a long path, as a user's
    floor often sits."""
    from logitsdump.compare import CompareOptions, run_compare
    from logitsdump.demo import examples
    from logitsdump.report import load_compares

    root = tmp_path_factory.mktemp("layout")
    floor = root / "team-shared-calibration" / "smollm2-135m-instruct" / "ascend-910b-vs-a100" / "2024-05-06" \
        / "logits_cmp_tolerances_20240506070809_measured_on_known_healthy_pairs.json"
    floor.parent.mkdir(parents=True)
    shutil.copy(examples.TINY_FLOOR, floor)
    runs = []
    for task in ("ceval_zero_shot", "mmlu_zero_shot"):
        golden = replayed_dump(root / task, "fp32", task, None)
        mine = replayed_dump(root / task, "bf16", task, golden)
        summary = run_compare(CompareOptions(golden, mine, root / task / "cmp", tolerances_file=floor))
        runs.append(summary.cases_json_path)
    return write_report(load_compares(runs), root / "report.html")


@pytest.mark.slow
@pytest.mark.parametrize("width", LAYOUT_WIDTHS)
def test_nothing_is_wider_than_the_page_nor_cut(wide_report, tmp_path, width) -> None:
    problems = layout_problems(wide_report, tmp_path, width)
    assert not problems, f"{len(problems)} layout problem(s) at {width} px:\n" + "\n".join(problems[:40])


@pytest.mark.slow
def test_byte_tokens_show_their_bytes_and_ids(wide_report) -> None:
    """A byte-level vocabulary's partial UTF-8 tokens read as `<0xE8>` with their id, never as U+FFFD."""
    page = wide_report.read_text(encoding="utf-8")
    assert "\ufffd" not in page
    assert re.search(r"&lt;0x[0-9A-F]{2}&gt;", page), "no byte token on a page of Chinese questions"


def test_plot_labels_stay_inside_their_plots(tmp_path) -> None:
    """Tick labels of every kind of plot, with values whose labels are long (a Δp reach of 0.365, tiny and
    huge numbers), are drawn inside their SVG (a label past its edge is cut off)."""
    from logitsdump.report.page_assets import CSS
    from logitsdump.report.svg import histogram, line_plot, quantile_plot

    plots = [
        histogram([-0.12, 0.05, 0.3649], label="dp", axis_label="Δp (%)", marker=0.1),
        histogram([-123.456, 99.0], label="dp", axis_label="Δp (%)"),
        line_plot([0, 1, 2, 3], [0.999912, 0.9993, None, 0.98765], label="cos", threshold=0.999, marker=2),
        line_plot([0, 10, 200], [1e-9, 3e-4, 0.25], label="kl", log=True, threshold=1e-4),
        quantile_plot((0.5, 0.9, 0.99), (1e-7, 3.2e-3, 0.4567), label="kld", maximum=12.5, threshold=1e-4),
    ]
    page = tmp_path / "plots.html"
    page.write_text(f"<!doctype html><html><head><style>{CSS}</style></head><body>"
                    + "".join(f'<div style="width:360px">{svg}</div>' for svg in plots) + "</body></html>",
                    encoding="utf-8")
    assert layout_problems(page, tmp_path, 1024) == []
