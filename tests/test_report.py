"""report: the HTML page and the terminal summary, built from real compare runs on the tiny model."""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import replace
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from logitsdump.cli import main
from logitsdump.compare import CompareOptions, run_compare
from logitsdump.compare.run import CompareSummary
from logitsdump.compare.verdicts import FREE_RUN_VERDICTS, VERDICTS
from logitsdump.demo import examples
from logitsdump.errors import DataError
from logitsdump.logs import get_logger
from logitsdump.report import format_summary, load_compare, print_summary, write_report
from logitsdump.report.load import UNKNOWN_TASK, find_cases_json, load_topk
from logitsdump.report.svg import line_plot
from logitsdump.runner.evaluate import EvalOptions, run_eval
from logitsdump.store import read_manifest, rewrite_manifest

#: The bad cases of fp32 vs bf16 on mmlu_zero_shot (as bcanalyze finds them).
BAD_CASES = "[3, 4, 6, 10, 16]"
TOKENS = 8
NOW = datetime(2024, 5, 6, 7, 8, 9)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def dump_case_logits(root: Path, dtype: str) -> Path:
    """Re-infer the bad cases with the dump protocol on; return the logits folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAD_CASE_LOGITS_DUMP", "True")
        mp.setenv("LOGITS_DUMP_TOKEN_MAX_LENGTH", str(TOKENS))
        mp.setenv("BAD_CASE_LIST", BAD_CASES)
        options = EvalOptions(
            model_config_path=str(examples.model_config(dtype)),
            task_config_path=str(examples.task_config("mmlu_zero_shot")),
            output_dir=str(root / dtype),
            device="cpu",
        )
        run_eval(options)
    (folder,) = (root / dtype).glob("data/*/precision_test/mmlu_zero_shot/*/*/logits")
    return folder


def make_compare_run(root: Path) -> CompareSummary:
    """fp32 (golden) vs bf16 (test) on the tiny model: dump, then compare into root/cmp."""
    golden, mine = dump_case_logits(root, "fp32"), dump_case_logits(root, "bf16")
    return run_compare(CompareOptions(golden, mine, root / "cmp"), now=NOW)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> CompareSummary:
    return make_compare_run(tmp_path_factory.mktemp("report"))


class _Page(HTMLParser):
    """Collects tags (with attributes) and the text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        def match(found: dict[str, str]) -> bool:
            for key, value in attrs.items():
                have = found.get(key.rstrip("_").replace("_", "-"))
                if have is None or (value not in have.split() and value != have):
                    return False
            return True

        return [a for t, a in self.tags if t == tag and match(a)]


def parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page


def case_sections(text: str) -> list[str]:
    return re.findall(r'<section class="case [^"]*" id="case-\d+".*?</section>', text, flags=re.S)


# ---- the page ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_has_every_section_and_the_verdict_counts(real_run: CompareSummary) -> None:
    path = write_report(real_run)
    assert path == real_run.cases_json_path.parent / "report.html"
    text, page = parse(path)
    ids = {a["id"] for _, a in page.tags if "id" in a}
    assert {"overview", "all-cases", "cases", "case-table"} <= ids
    cases = page.find("section", class_="case")
    assert len(cases) == len(real_run.cases) == 5
    # one card per verdict, with the run's counts
    cards = {a["data-verdict"]: a for a in page.find("div", class_="card")}
    # a run without replayed cases: the free-run verdicts, and `unreferenced` where a case has it (no control)
    shown = [v for v in VERDICTS if v in FREE_RUN_VERDICTS or (v == "unreferenced" and real_run.verdicts[v])]
    assert list(cards) == shown
    assert real_run.verdicts["noise"] == real_run.verdicts["precision-suspect"] == 0
    for verdict in shown:
        count = real_run.verdicts[verdict]
        assert re.search(rf'data-verdict="{verdict}"><div class="count">{count}</div>', text)
        assert re.search(rf'data-verdict="{re.escape(verdict)}" aria-pressed="true">{verdict} <b>{count}</b>', text)
    assert sum(real_run.verdicts.values()) == 5
    assert real_run.verdicts["identical"] == 0  # fp32 and bf16 logits always differ somewhere
    # the task table, the thresholds, one row per case in the sortable table
    assert "<th>mmlu_zero_shot</th>" in text
    assert "&gt; 0.999" in text and "&lt; 0.0001" in text and "0.0566 logits" in text  # bf16's default tie
    assert "<th>noise floor</th>" in text and "no measured floor: the conservative default for bf16" in text
    rows = [a for t, a in page.tags if t == "tr" and "data-index" in a]
    assert len(rows) == 5
    # three plots per case, each with a marked divergence step; two distribution plots per case and the run's
    plots = page.find("svg", class_="plot")
    assert len(plots) == 3 * 5 + 2 * 5 + 2
    assert text.count('class="marker"') == 3 * 5
    for name in ("plot-cosine", "plot-kl", "plot-margin"):
        assert len(page.find("svg", class_=name)) == 5
    # top-k tables of both devices, with logits and probabilities read from the files
    assert len(page.find("table", class_="cand")) == 2 * 5
    assert "Not available" not in text
    # self-contained: no external resource, no network
    assert "<link" not in text and " src=" not in text
    assert not re.search(r'href="(?!#)', text)
    assert "default-src 'none'" in text


@pytest.mark.slow
def test_first_divergence_is_highlighted_where_the_texts_differ(real_run: CompareSummary) -> None:
    text, _ = parse(write_report(real_run))
    document = json.loads(real_run.cases_json_path.read_text(encoding="utf-8"))
    sections = case_sections(text)
    assert len(sections) == len(document["cases"])
    highlighted = 0
    for case, section in zip(document["cases"], sections, strict=True):
        golden = case["golden_manifest"]["output_token_ids"]
        mine = case["my_manifest"]["output_token_ids"]
        first = next((i for i, (g, m) in enumerate(zip(golden, mine, strict=True)) if g != m), None)
        marks = re.findall(r'<div class="col first-diff[^"]*"><span class="i"[^>]*>(\d+)</span>', section)
        if first is None:
            assert marks == []
        else:
            assert marks == [str(first)]
            highlighted += 1
            assert f"The texts first differ at token {first}" in section
        if case["first_diff_token"] is not None:
            assert f"Top-10 candidates at token {case['first_diff_token']}" in section
    assert highlighted >= 1
    assert any(c["verdict"] in ("tie-flip", "divergent") for c in document["cases"])


@pytest.mark.slow
def test_topk_comes_from_the_logits_files(real_run: CompareSummary) -> None:
    result = load_compare(real_run)
    for index, case in enumerate(result.cases):
        focus = case.focus()
        topk = load_topk(result, index, 5)
        assert topk.problem == ""
        assert topk.golden[0].token == focus.metric("golden_top1")
        assert topk.mine[0].token == focus.metric("my_top1")
        for side in (topk.golden, topk.mine):
            assert len(side) == 5
            logits = [c.logit for c in side]
            assert logits == sorted(logits, reverse=True)
            assert 0 < sum(c.probability for c in side) <= 1 + 1e-9
            assert all(c.text is not None for c in side)  # vocab.json is dumped beside the logits


@pytest.mark.slow
def test_loads_a_folder_a_result_csv_or_the_json(real_run: CompareSummary, tmp_path: Path) -> None:
    folder = real_run.cases_json_path.parent
    expected = real_run.cases_json_path
    assert find_cases_json(folder) == expected
    assert find_cases_json(real_run.csv_path) == expected
    assert find_cases_json(real_run.cases_csv_path) == expected
    assert find_cases_json(expected) == expected
    # a newer run in the same folder is the one a folder means
    options = CompareOptions(*_inputs(real_run), output_dir=folder)
    newer = run_compare(options, now=datetime(2024, 5, 6, 7, 8, 10))
    same_second = run_compare(options, now=datetime(2024, 5, 6, 7, 8, 10))
    assert same_second.cases_json_path.name.endswith("_1.json")
    assert find_cases_json(folder) == same_second.cases_json_path
    assert newer.cases_json_path != same_second.cases_json_path
    for path in (newer.cases_json_path, same_second.cases_json_path, newer.csv_path, same_second.csv_path,
                 newer.cases_csv_path, same_second.cases_csv_path):
        path.unlink()
    with pytest.raises(DataError, match="no logits_cmp_cases"):
        find_cases_json(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        find_cases_json(tmp_path / "missing")
    (tmp_path / "other.csv").write_text("x\n")
    with pytest.raises(DataError, match="expected the compare output folder"):
        find_cases_json(tmp_path / "other.csv")
    (tmp_path / "logits_cmp_res_20240101000000.csv").write_text("x\n")
    with pytest.raises(DataError, match="is missing"):
        find_cases_json(tmp_path / "logits_cmp_res_20240101000000.csv")
    bad = tmp_path / "logits_cmp_cases_20240101000000.json"
    bad.write_text('{"schema_version": 99, "cases": []}')
    with pytest.raises(DataError, match="schema_version 99"):
        load_compare(bad)


def _inputs(summary: CompareSummary) -> tuple[str, str]:
    document = json.loads(summary.cases_json_path.read_text(encoding="utf-8"))
    return document["options"]["golden_path"], document["options"]["my_path"]


@pytest.mark.slow
def test_relative_input_paths_are_found_from_another_folder(real_run, tmp_path, monkeypatch) -> None:
    golden, mine = (Path(p) for p in _inputs(real_run))
    work = tmp_path / "work"
    shutil.copytree(golden, work / "g")
    shutil.copytree(mine, work / "m")
    monkeypatch.chdir(work)
    summary = run_compare(CompareOptions("g", "m", "out/cmp"), now=NOW)
    monkeypatch.chdir(tmp_path)
    result = load_compare(work / "out" / "cmp")
    assert result.golden_dir() == work / "g" and result.my_dir() == work / "m"
    text = write_report(result).read_text(encoding="utf-8")
    assert "Not available" not in text
    assert len(summary.cases) == 5


@pytest.mark.slow
def test_without_manifests_token_ids_replace_texts(real_run: CompareSummary, tmp_path: Path) -> None:
    golden, mine = (Path(p) for p in _inputs(real_run))
    for src, dst in ((golden, tmp_path / "g"), (mine, tmp_path / "m")):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("manifest.jsonl", "vocab.json"))
    # without manifests the dtype (and so the default floor) comes from -d, as a modeltest dump needs
    summary = run_compare(CompareOptions(tmp_path / "g", tmp_path / "m", tmp_path / "cmp", dtype="bf16"), now=NOW)
    assert summary.verdicts == real_run.verdicts
    out = write_report(tmp_path / "cmp", tmp_path / "page" / "r.html")
    assert out == tmp_path / "page" / "r.html"
    text, page = parse(out)
    assert len(page.find("section", class_="case")) == 5
    assert text.count("No manifest beside the logits files: the question is unknown.") == 5
    assert f"<th>{UNKNOWN_TASK}</th>" in text
    assert re.search(r'<span class="tok id" title="token id \d+">#\d+</span>', text)
    assert 'class="tok" title="id' not in text  # no texts anywhere: no vocab either
    assert len(page.find("svg", class_="plot")) == 3 * 5 + 2 * 5 + 2  # 3 + 2 per case, 2 for the run
    assert len(page.find("table", class_="cand")) == 10
    assert "first-diff" in text
    summary_text = format_summary(tmp_path / "cmp")
    assert UNKNOWN_TASK in summary_text


@pytest.mark.slow
def test_text_is_escaped(real_run: CompareSummary, tmp_path: Path) -> None:
    golden, mine = (Path(p) for p in _inputs(real_run))
    shutil.copytree(golden, tmp_path / "g")
    shutil.copytree(mine, tmp_path / "m")
    evil = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
    records = read_manifest(tmp_path / "g")
    rewrite_manifest(tmp_path / "g", [
        replace(r, query=evil + r.query, task="<marquee>task</marquee>",
                output_tokens=("</span><script>t()</script>", *r.output_tokens[1:])) for r in records
    ])
    (tmp_path / "m" / "vocab.json").write_text(json.dumps(["<blink>" + str(i) for i in range(256)]))
    summary = run_compare(CompareOptions(tmp_path / "g", tmp_path / "m", tmp_path / "cmp"), now=NOW)
    text, page = parse(write_report(summary))
    assert len(page.find("script")) == 2  # ours: the error recorder and the table script
    assert not page.find("img") and not page.find("marquee") and not page.find("blink")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "&lt;marquee&gt;task&lt;/marquee&gt;" in text
    assert "&lt;/span&gt;&lt;script&gt;t()&lt;/script&gt;" in text
    assert "&lt;blink&gt;" in text
    assert "<script>alert" not in text and "<script>t()" not in text


# ---- the SVG plots ----------------------------------------------------------------------------


def test_line_plot_handles_gaps_logs_and_single_points() -> None:
    svg = line_plot([0, 1, 2, 3], [0.5, None, 0.7, float("nan")], label="a <b>", marker=2, threshold=0.6)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 2
    assert "a &lt;b&gt;" in svg and "<b>" not in svg
    assert 'class="marker"' in svg and 'class="threshold"' in svg
    log = line_plot([0, 1, 2], [0.0, 1e-6, 1e-2], label="kl", log=True, threshold=1e-4)
    assert "<polyline" in log and "nan" not in log.lower()
    one = line_plot([5], [0.99], label="one", marker=5, shade_from=5)
    assert one.count("<circle") == 1 and "nan" not in one.lower()
    empty = line_plot([0, 1], [None, None], label="none")
    assert "no values" in empty and "<polyline" not in empty


# ---- the terminal summary ---------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.slow
def test_terminal_summary_counts_tasks_and_worst_cases(real_run: CompareSummary) -> None:
    text = format_summary(real_run)
    assert not ANSI.search(text)
    shown = [v for v in VERDICTS if v in FREE_RUN_VERDICTS or (v == "unreferenced" and real_run.verdicts[v])]
    verdicts = ", ".join(f"{verdict} {real_run.verdicts[verdict]}" for verdict in shown)
    assert f"cases: 5 ({verdicts})" in text
    assert (f"token pairs: {real_run.rows} (against msit's per-token thresholds: passed {real_run.passed}, "
            f"failed {real_run.failed}, NA {real_run.na})") in text
    assert re.search(r"^  mmlu_zero_shot +5 ", text, flags=re.M)
    assert "worst cases" in text
    bad = [c for c in real_run.cases if c.verdict in ("divergent", "tie-flip", "incomplete", "unreferenced")]
    assert len(re.findall(r"^  \S+ #\d+ ", text, flags=re.M)) == min(5, len(bad))
    assert "tie tolerance 0.0566" in text  # the floor's margin: the bf16 dumps' conservative default
    assert "\nfloor: no measured floor: the conservative default for bf16" in text  # free runs name it too
    assert format_summary(load_compare(real_run)) == text
    assert format_summary(json.loads(real_run.cases_json_path.read_text(encoding="utf-8"))) == text
    assert ANSI.search(format_summary(real_run, color=True))


@pytest.mark.slow
def test_colour_only_on_a_terminal_without_no_color(real_run, monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    plain = io.StringIO()
    print_summary(real_run, plain)
    assert not ANSI.search(plain.getvalue())
    tty = _Tty()
    print_summary(real_run, tty)
    assert ANSI.search(tty.getvalue())
    monkeypatch.setenv("NO_COLOR", "1")
    tty = _Tty()
    print_summary(real_run, tty)
    assert not ANSI.search(tty.getvalue())
    assert ANSI.sub("", tty.getvalue()) == plain.getvalue()


# ---- the command line -------------------------------------------------------------------------


@pytest.fixture
def _restore_logging():
    """main() points the package logger at the captured stderr: put the old handlers back after."""
    logger = get_logger()
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.mark.slow
@pytest.mark.usefixtures("_restore_logging")
def test_cli_report_writes_the_page(real_run: CompareSummary, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(real_run.csv_path), "-o", str(out), "--topk", "3"]) == 0
    stdout = capsys.readouterr().out
    assert f"report: {out}" in stdout and "worst cases" in stdout
    text = out.read_text(encoding="utf-8")
    assert "Top-3 candidates" in text
    assert all(len(re.findall(r"<tr", t)) == 4 for t in re.findall(r'<table class="grid cand">.*?</table>', text))
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.usefixtures("_restore_logging")
def test_compare_prints_the_summary_table(real_run: CompareSummary, tmp_path: Path, capsys) -> None:
    golden, mine = _inputs(real_run)
    assert main(["compare", "-gp", golden, "-mp", mine, "-o", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert "worst cases" in stdout and "mmlu_zero_shot" in stdout
    assert "results: " in stdout and "logits_cmp_cases_" in stdout


@pytest.mark.slow
def test_installed_command_writes_the_report(real_run: CompareSummary, tmp_path: Path) -> None:
    from helpers import run_cli

    out = tmp_path / "page.html"
    result = run_cli("report", str(real_run.cases_json_path.parent), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"report: {out}" in result.stdout and not ANSI.search(result.stdout)
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))


def test_a_run_without_cases_still_renders(tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "m").mkdir()
    summary = run_compare(CompareOptions(tmp_path / "g", tmp_path / "m", tmp_path / "cmp"), now=NOW)
    text, page = parse(write_report(summary))
    assert "This compare run has no cases." in text and not page.find("section", class_="case")
    assert "cases: 0 (" in format_summary(summary)


@pytest.mark.usefixtures("_restore_logging")
def test_dash_o_is_the_output_folder_of_every_command(tmp_path: Path, capsys) -> None:
    """`-o DIR` (or `--output-dir`, or msit's `--output`) names the folder each command writes in."""
    from test_compare_replay import _build

    _build(tmp_path / "in")
    golden, mine = str(tmp_path / "in" / "golden"), str(tmp_path / "in" / "mine")
    for spelling in ("-o", "--output-dir", "--output"):
        out = tmp_path / spelling.strip("-") / "new"
        assert main(["compare", "-gp", golden, "-mp", mine, spelling, str(out)]) == 0
        assert len(list(out.glob("logits_cmp_cases_*.json"))) == 1
        assert main(["report", str(out), spelling, str(out / "page")]) == 0
        assert (out / "page" / "report.html").is_file()
    capsys.readouterr()
    for spelling in ("-o", "--output-dir", "--output"):
        for command in ("bcanalyze", "compare", "report"):
            with pytest.raises(SystemExit):
                main([command, "--help"])
            assert f"{spelling} DIR" in capsys.readouterr().out, (command, spelling)
