"""The statistics in compare's outputs, the terminal summary and the page; the distribution plots.

The fast tests use synthetic replayed dumps (tests/test_compare_replay.py builds them); the slow one
runs the tiny model end to end (golden fp32, test bf16 replaying golden's tokens) and checks the
statistics against the per-token CSV it was computed from.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from logitsdump.compare import CompareOptions, run_compare
from logitsdump.compare.distribution import STATISTICS_FIELDS
from logitsdump.compare.document import CompareDocument
from logitsdump.compare.outputs import CASE_COLUMNS
from logitsdump.report import format_summary, load_compare, write_report
from logitsdump.report.svg import histogram, quantile_plot
from test_compare_replay import _build

TITLE = re.compile(r"<title>([^<]*)</title>")


# ---- the plots --------------------------------------------------------------------------------


def test_histogram_is_symmetric_about_zero_and_counts_every_value() -> None:
    values = [-0.3, -0.1, 0.0, 0.0, 0.05, 0.2, float("nan")]
    svg = histogram(values, label="Δp <x>", axis_label="Δp (%)", bins=5, marker=-0.025)
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "Δp &lt;x&gt;" in svg
    bars = [t for t in TITLE.findall(svg) if " step" in t]
    counts = [int(t.rsplit(": ", 1)[1].split()[0]) for t in bars]
    assert sum(counts) == 6  # the NaN is left out
    assert bars[0].startswith("-0.3 to") and bars[-1].endswith("1 step")  # range +-max|v|: 0.2 in the last bar
    assert "mean -0.025" in svg and 'class="zero"' in svg and 'class="mean"' in svg
    middle = next(t for t in bars if t.startswith("-0.06"))  # bin 3 of 5 holds 0, 0 and 0.05
    assert middle.endswith("3 steps")
    assert "no values" in histogram([], label="e", axis_label="x")
    assert "nan" not in histogram([0.0, 0.0], label="z", axis_label="x").lower()


def test_quantile_plot_draws_each_percentile_and_the_maximum() -> None:
    svg = quantile_plot([0.5, 0.9, 0.99, 0.999], [1e-4, 1e-3, 0.0, 2e-2], label="KLD", maximum=0.05,
                        threshold=0.01, threshold_label="noise KL")
    titles = TITLE.findall(svg)
    assert {"p50: 0.0001", "p90: 0.001", "p99: 0", "p99.9: 0.02", "max: 0.05"} <= set(titles)
    assert "noise KL 0.01" in titles and svg.count("<circle") == 5 and "nan" not in svg.lower()
    empty = quantile_plot([0.5], [None], label="none")
    assert "no values" in empty and "<polyline" not in empty


# ---- compare's outputs, the summary and the page (synthetic replayed dumps) ---------------------


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stats")
    _build(root)
    return root


def _judged_metric(document: dict, name: str) -> list[float]:
    return [s[name] for c in document["cases"] for s in c["steps"][: c["tokens_judged"]] if s.get("passed") is not None]


def test_case_csv_and_json_carry_the_statistics(replayed: Path) -> None:
    summary = run_compare(CompareOptions(replayed / "golden", replayed / "mine", replayed / "out"))
    document = json.loads(summary.cases_json_path.read_text(encoding="utf-8"))
    assert document["schema_version"] == 3
    kls = _judged_metric(document, "kl_divergence")
    dps = _judged_metric(document, "signed_dp")
    run = document["stats"]
    assert set(run) == set(STATISTICS_FIELDS) and run["kld_steps"] == len(kls) > 20
    assert run["kld_mean"] == pytest.approx(np.mean(kls), rel=1e-12)
    assert run["kld_p99"] == pytest.approx(np.quantile(kls, 0.99), rel=1e-12)
    assert run["dp_p5"] == pytest.approx(np.quantile(dps, 0.05), rel=1e-12, abs=1e-15)
    assert run["dp_rms"] == pytest.approx(math.sqrt(np.mean(np.square(dps))), rel=1e-12)
    same = _judged_metric(document, "top1_match")
    assert run["same_top"] == pytest.approx(np.mean(same)) and 0 < run["same_top"] < 1  # some cases change
    with open(summary.cases_csv_path, newline="", encoding="utf-8") as handle:
        rows = {row["key"]: row for row in csv.DictReader(handle)}
    assert set(STATISTICS_FIELDS) <= set(CASE_COLUMNS)
    for case in document["cases"]:
        row = rows[str(case["key"])]
        stats = case["stats"]
        mine = [s["kl_divergence"] for s in case["steps"][: case["tokens_judged"]] if s.get("passed") is not None]
        assert stats["kld_steps"] == len(mine) and float(row["kld_mean"]) == pytest.approx(np.mean(mine), rel=1e-12)
        assert float(row["kld_max"]) == max(mine) and float(row["kld_mean"]) == pytest.approx(case["mean_kl"])
        assert float(row["same_top"]) == stats["same_top"]


def test_an_older_document_gets_the_same_statistics(replayed: Path) -> None:
    summary = run_compare(CompareOptions(replayed / "golden", replayed / "mine", replayed / "out2"))
    data = json.loads(summary.cases_json_path.read_text(encoding="utf-8"))
    older = {k: v for k, v in data.items() if k != "stats"}
    older["schema_version"] = 2
    older["cases"] = [{k: v for k, v in c.items() if k != "stats"} for c in data["cases"]]
    document = CompareDocument.from_dict(older)
    assert document.stats is not None and document.stats.to_dict() == data["stats"]
    assert [c.stats.to_dict() if c.stats else None for c in document.cases] == [c["stats"] for c in data["cases"]]


def test_summary_and_page_show_the_run_and_every_case(replayed: Path) -> None:
    summary = run_compare(CompareOptions(replayed / "golden", replayed / "mine", replayed / "out3"))
    stats = load_compare(summary).document.stats
    assert stats is not None
    text = format_summary(summary)
    assert f"statistics over {stats.kld_steps} judged steps" in text
    assert f"KLD     mean {stats.kld_mean:.3g} ± {stats.kld_mean_se:.3g}" in text
    assert f"same top token {stats.same_top * 100:.2f}% ± {stats.same_top_se * 100:.2f}%" in text
    page = write_report(summary).read_text(encoding="utf-8")
    cases = sum(1 for c in summary.cases if c.stats is not None)
    assert 'id="statistics"' in page and 'class="grid stats-kld"' in page and 'class="grid stats-dp"' in page
    assert page.count('class="plot plot-dp-histogram"') == cases + 1  # the run's and one per case
    assert page.count('class="plot plot-kld-quantiles"') == cases + 1
    # every case has the run's two tables for itself: every KLD percentile, the Δp percentiles
    assert page.count('class="grid stats-kld"') == page.count('class="grid stats-dp"') == cases + 1
    rows = re.findall(r"<tr><th>this case</th>(.*?)</tr>", page)  # each case: its KLD, Δp and top-token rows
    kld_rows, dp_rows = rows[0::3], rows[1::3]
    for case in (c for c in summary.cases if c.stats is not None):
        assert any(f">{case.stats.kld_p95:.4g}<" in r and f">{case.stats.kld_p999:.4g}<" in r for r in kld_rows)
        assert any(f">{case.stats.dp_p1 * 100:.3g}%<" in r and f">{case.stats.dp_p99 * 100:.3g}%<" in r
                   for r in dp_rows)
    run_block = page[page.index('id="statistics"'):page.index('id="all-cases"')]
    assert f"p99: {stats.kld_p99:.4g}" in run_block and f"max: {stats.kld_max:.4g}" in run_block
    assert f"{stats.dp_mean * 100:.3g}% ±\u00a0{stats.dp_mean_se * 100:.3g}%" in run_block  # wraps before ± only
    assert f">{stats.same_top * 100:.2f}% ±\u00a0{stats.same_top_se * 100:.2f}%<" in run_block


# ---- end to end on the tiny model --------------------------------------------------------------


@pytest.mark.slow
def test_demo_replay_statistics_match_the_per_token_csv(tmp_path: Path) -> None:
    from logitsdump.demo.run import DemoOptions, run_demo

    result = run_demo(DemoOptions(workdir=str(tmp_path / "demo"), tasks=("mmlu_zero_shot",)))
    assert result.report is not None and result.report.is_file()
    (json_path,) = (tmp_path / "demo" / "compare").rglob("logits_cmp_cases_*.json")
    (steps_csv,) = (tmp_path / "demo" / "compare").rglob("logits_cmp_res_*.csv")
    with open(steps_csv, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["passed"] != "NA"]
    kl = [float(r["kl_divergence"]) for r in rows]
    dp = [float(r["signed_dp"]) for r in rows]
    same = [r["top1_match"] == "True" for r in rows]
    document = json.loads(json_path.read_text(encoding="utf-8"))
    assert all(c["replay_mode"] for c in document["cases"])  # replayed: every step is judged
    run = document["stats"]
    assert run["kld_steps"] == len(rows) > 0
    assert run["kld_mean"] == pytest.approx(np.mean(kl), rel=1e-9)  # the CSV prints repr: same doubles
    assert run["kld_p999"] == pytest.approx(np.quantile(kl, 0.999), rel=1e-9)
    assert run["dp_median"] == pytest.approx(np.median(dp), rel=1e-9, abs=1e-15)
    assert run["same_top"] == pytest.approx(np.mean(same))
    assert run["kld_mean"] <= run["kld_p99"] <= run["kld_max"] == max(kl)
    page = result.report.read_text(encoding="utf-8")
    assert page.count('class="plot plot-dp-histogram"') == len(document["cases"]) + 1
    assert f"max: {run['kld_max']:.4g}" in page
