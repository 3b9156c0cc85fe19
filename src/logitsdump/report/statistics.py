"""The page's statistics (llama.cpp's `--kl-divergence` figures): the run's tables and plots, and a case's.

The numbers are `records.CaseRecord.stats` and `CompareDocument.stats` (`compare/distribution.py`);
the plots draw the same judged steps: a histogram of Δp (p_test − p_golden of golden's token, in
percent) and the KLD quantile curve (`svg.histogram`, `svg.quantile_plot`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from logitsdump.compare.distribution import DP_PERCENTILES, KLD_PERCENTILES, StepStatistics
from logitsdump.compare.lenient import finite_float
from logitsdump.compare.records import CaseRecord
from logitsdump.compare.stats import quantiles
from logitsdump.report import numbers
from logitsdump.report.load import CompareResult
from logitsdump.report.svg import histogram, quantile_plot

#: The quantiles the KLD curve is drawn through (the table's percentiles among them).
CURVE_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999)
_MISSING = "–"


def run_section(result: CompareResult) -> str:
    """The overview's statistics: every case together, then each task (when there are several), and the
    two plots of every judged step."""
    rows: list[tuple[str, StepStatistics | None]] = [("all cases", result.stats)]
    tasks = result.task_stats()
    if len(tasks) > 1:
        rows += list(tasks.items())
    values = result.index.all_steps()
    return (
        '<section id="statistics">'
        "<h2>Statistics <span class=\"muted\">(llama.cpp's <code>--kl-divergence</code> figures, over the "
        "judged steps)</span></h2>"
        '<p class="muted small">Noise: a small KLD with a short tail, Δp symmetric about 0, the same top token '
        "almost always. A precision problem: a long KLD tail and Δp leaning negative (the test makes golden's "
        "token less likely). ± is one standard error. See docs/compare.md, “Statistics”.</p>"
        f"{_kld_table(rows)}{_dp_table(rows)}"
        f'<div class="plots">{_figures(values.kl, values.dp, result, "every judged step")}</div>'
        "</section>"
    )


def case_block(case: CaseRecord, result: CompareResult) -> str:
    """A case's statistics (the run's two tables, for this case alone) and its two distribution plots."""
    stats = case.stats
    if stats is None:
        return ""
    rows = [("this case", stats)]
    return (
        f'<h4>Distribution over the {stats.kld_steps} judged step{"s" if stats.kld_steps != 1 else ""}</h4>'
        f"{_kld_table(rows, 'h5')}{_dp_table(rows, 'h5')}"
        f'<div class="plots">{_case_figures(case, result)}</div>'
    )


def _case_figures(case: CaseRecord, result: CompareResult) -> str:
    measured = [s.metrics for s in case.judged_steps if s.metrics is not None]
    dp = [m.signed_dp for m in measured if m.signed_dp is not None]
    return _figures([m.kl_divergence for m in measured], dp, result, case.label)


def _figures(kl: Sequence[float], dp_fraction: Sequence[float], result: CompareResult, what: str) -> str:
    """The KLD quantile curve and the Δp histogram of the steps whose KL and Δp (a fraction) are given."""
    dp = [value * 100 for value in dp_fraction]
    mean = math.fsum(dp) / len(dp) if dp else None
    tolerance_name = "noise_kl" if result.replayed else "kl_divergence"
    tolerance = finite_float(result.options.get(tolerance_name))
    curve = quantile_plot(
        CURVE_QUANTILES, quantiles(kl, CURVE_QUANTILES), label=f"KLD percentiles, {what}",
        maximum=max(kl, default=None), threshold=tolerance,
        threshold_label="noise KL" if result.replayed else "KL threshold", css_class="plot plot-kld-quantiles",
    )
    bars = histogram(dp, label=f"Δp of golden's token (%), {what}", axis_label="Δp (%)", marker=mean,
                     css_class="plot plot-dp-histogram")
    dashed = "dashed: noise KL" if result.replayed else "dashed: KL threshold"
    return (
        f'<figure><figcaption><b>KLD percentiles (log scale)</b> <span class="muted">median to max; {dashed}'
        f"</span></figcaption>{curve}</figure>"
        '<figure><figcaption><b>Δp of golden\'s token (%)</b> <span class="muted">p_test − p_golden; '
        f"grey: 0, red: the mean ({len(dp)} steps)</span></figcaption>{bars}</figure>"
    )


def _kld_table(rows: Sequence[tuple[str, StepStatistics | None]], heading: str = "h3") -> str:
    head = ["", "steps", "mean ± SE", *(name for name, _ in KLD_PERCENTILES), "max"]
    body = []
    for name, s in rows:
        cells = [_MISSING] * (len(head) - 1) if s is None else [
            str(s.kld_steps), _with_se(s.kld_mean, s.kld_mean_se, _num),
            *(_num(getattr(s, f"kld_{p}")) for p, _ in KLD_PERCENTILES), _num(s.kld_max)]
        body.append(_row(name, cells))
    return _table("KL divergence", [h.replace("p999", "p99.9") for h in head], body, "stats-kld", heading)


def _dp_table(rows: Sequence[tuple[str, StepStatistics | None]], heading: str = "h3") -> str:
    """The Δp table (mean, percentiles, RMS), then the top-token rates in a table of their own (one table
    of both would be wider than the page)."""
    head = ["", "steps", "mean ± SE", *(name for name, _ in DP_PERCENTILES), "RMS ± SE"]
    top_head = ["", "steps", "same top token ± SE", "test's top-1 in golden's top 5", "golden's top-1 in test's top 5"]
    body, top_body = [], []
    for name, s in rows:
        if s is None:
            body.append(_row(name, [_MISSING] * (len(head) - 1)))
            top_body.append(_row(name, [_MISSING] * (len(top_head) - 1)))
            continue
        body.append(_row(name, [
            str(s.dp_steps), _with_se(s.dp_mean, s.dp_mean_se, _pct),
            *(_pct(getattr(s, f"dp_{p}")) for p, _ in DP_PERCENTILES), _with_se(s.dp_rms, s.dp_rms_se, _pct)]))
        top_body.append(_row(name, [str(s.kld_steps), _with_se(s.same_top, s.same_top_se, _rate),
                                    _rate(s.my_top1_in_golden_top5), _rate(s.golden_top1_in_my_top5)]))
    return (_table("Δp of golden's token (p_test − p_golden, %)", head, body, "stats-dp", heading)
            + _table("The top tokens", top_head, top_body, "stats-top", heading))


def _table(title: str, head: Sequence[str], body: Sequence[str], css: str, heading: str) -> str:
    """A statistics table under its title (`heading`: h3 in the run's section, h5 in a case's)."""
    cells = "".join(f'<th class="num">{escape(h)}</th>' if h else "<th></th>" for h in head)
    return (f"<{heading}>{escape(title)}</{heading}>"
            f'<div class="scroll"><table class="grid {css}"><thead><tr>{cells}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _row(name: str, cells: Sequence[str]) -> str:
    """A table row; a `value ± SE` cell may wrap before its ± (class se)."""
    tds = "".join(f'<td class="num{" se" if "±" in c else ""}">{escape(c)}</td>' for c in cells)
    return f"<tr><th>{escape(name)}</th>{tds}</tr>"


def _with_se(value: float | None, se: float | None, fmt) -> str:
    """`value ± se`; the cell may wrap before the ± only (a no-break space after it)."""
    if value is None:
        return _MISSING
    return fmt(value) if se is None else f"{fmt(value)} ±\u00a0{fmt(se)}"


def _num(value: float | None) -> str:
    return numbers.general(value, 4, _MISSING)


def _pct(value: float | None) -> str:
    """A Δp (a probability difference) in percent."""
    return numbers.percent(value, _MISSING)


def _rate(value: float | None) -> str:
    return numbers.percent(value, _MISSING, digits=2)
