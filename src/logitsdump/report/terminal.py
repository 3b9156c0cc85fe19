"""The terminal summary of a compare run: cases per verdict, the run's statistics, per task, and the worst cases.

`format_summary` returns plain text (ANSI colours only when asked);
`print_summary` decides: colours when the stream is a terminal and NO_COLOR
is unset or empty (https://no-color.org).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

from logitsdump.compare import verdicts
from logitsdump.compare.distribution import DP_PERCENTILES, KLD_PERCENTILES, StepStatistics
from logitsdump.report import numbers, topk_evidence
from logitsdump.report.index import CaseRow, severity
from logitsdump.report.load import CompareResult, load_compare, parse_document

#: How many of the worst cases are listed.
WORST_CASES = 5

_RESET = "\033[0m"
_COLORS = {
    **{v.name: f"\033[{v.ansi}m" for v in verdicts.TABLE},
    "bold": "\033[1m",
    "dim": "\033[2m",
}


def use_color(stream: TextIO | None = None) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to a non-empty value."""
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def print_summary(source: Any, stream: TextIO | None = None, *, color: bool | None = None,
                  worst: int = WORST_CASES, triage: Any = None) -> None:
    """Print `format_summary(source)` to `stream` (stdout), coloured where the terminal allows."""
    stream = stream if stream is not None else sys.stdout
    text = format_summary(source, color=use_color(stream) if color is None else color, worst=worst, triage=triage)
    stream.write(text + "\n")
    stream.flush()


def format_summary(source: Any, *, color: bool = False, worst: int = WORST_CASES, triage: Any = None) -> str:
    """A readable summary table of a compare run, the set-up-or-numerics block first.

    `source`: a `CompareSummary`, a loaded `CompareResult`, compare's case JSON
    as a dict, or a path (the compare output folder or one of its files).
    `triage`: the probe's and the ablation's evidence (`report.triage.Evidence`).
    """
    from logitsdump.report.triage import terminal_block

    result = _result(source)
    paint = _painter(color)
    counts = result.verdict_counts()
    lines: list[str] = [*terminal_block(result, triage, paint), ""]
    summary = result.summary
    count_text = ", ".join(
        f"{paint(v, v) if counts.get(v) else v} {counts.get(v, 0)}" for v in counts
    )
    lines.append(paint("bold", f"cases: {len(result.cases)}") + f" ({count_text})")
    hints = [f"{paint(v, v)}: {verdicts.BY_NAME[v].hint}" for v in counts if counts.get(v) and v in verdicts.BY_NAME]
    if hints:
        lines.append("  " + " · ".join(hints))
    if isinstance(summary.get("rows"), int):  # token pairs are not cases: each case has one pair per step
        lines.append(f"token pairs: {summary['rows']} (against msit's per-token thresholds: "
                     f"passed {summary.get('passed', '?')}, failed {summary.get('failed', '?')}, "
                     f"NA {summary.get('na', '?')})")
    if result.stats is not None:
        lines.append("")
        lines += _statistics(result.stats, paint)
    # -- tasks
    tasks = result.task_counts()
    shown_verdicts = result.verdicts_shown()
    if tasks:
        lines.append("")
        task_w = max(4, *(len(t) for t in tasks))
        header = f"  {'task':<{task_w}}  {'cases':>5}" + "".join(
            f"  {v:>{max(len(v), 3)}}" for v in shown_verdicts
        )
        lines.append(paint("dim", header))
        for task, row in tasks.items():
            cells = []
            for verdict in shown_verdicts:
                n = row.get(verdict, 0)
                cell = f"{n:>{max(len(verdict), 3)}}"
                cells.append("  " + (paint(verdict, cell) if n else paint("dim", cell)))
            lines.append(f"  {task:<{task_w}}  {sum(row.values()):>5}" + "".join(cells))
    # -- worst cases
    ranked = sorted(result.rows, key=severity)
    listed = [c for c in ranked if verdicts.listed_among_worst(c.verdict)]
    shown = listed[:worst]
    if shown:
        lines.append("")
        lines.append(paint("bold", "worst cases"))
        table = [("case", "task", "verdict", "at token", "margin", "worst cos", "worst KL")]
        for case in shown:
            table.append((
                _clip(case.label, 36), _clip(case.task, 20), case.verdict,
                _focus(case), _num(_margin(case)), _cos(case.worst_cosine), _num(case.worst_kl),
            ))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        right = {3, 4, 5, 6}
        for index, row in enumerate(table):
            cells = []
            for i, cell in enumerate(row):
                text = cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                if index and i == 2:
                    text = paint(row[2], text)
                cells.append(text)
            line = "  " + "  ".join(cells).rstrip()
            lines.append(paint("dim", line) if index == 0 else line)
        hidden = len(listed) - len(shown)
        if hidden > 0:
            lines.append(paint("dim", f"  ... and {hidden} more (see the report)"))
    lines.append("")
    lines.append(paint("dim", _thresholds(result)))
    return "\n".join(lines)


def _statistics(s: StepStatistics, paint) -> list[str]:
    """llama.cpp's `--kl-divergence` figures of the run, in three lines."""
    kld = "  ".join(f"{name.replace('p999', 'p99.9')} {_num(getattr(s, f'kld_{name}'))}" for name, _ in KLD_PERCENTILES)
    dp = "  ".join(f"{name} {_pct(getattr(s, f'dp_{name}'))}" for name, _ in DP_PERCENTILES)
    return [
        paint("bold", f"statistics over {s.kld_steps} judged steps") + paint("dim", " (as llama.cpp --kl-divergence)"),
        f"  KLD     mean {_se(s.kld_mean, s.kld_mean_se, _num)}  {kld}  max {_num(s.kld_max)}",
        f"  Δp      mean {_se(s.dp_mean, s.dp_mean_se, _pct)}  {dp}" if s.dp_steps else "  Δp      -",
        f"  RMS Δp {_se(s.dp_rms, s.dp_rms_se, _pct)}  same top token {_se(s.same_top, s.same_top_se, _rate)}  "
        f"in the other's top 5: test's {_rate(s.my_top1_in_golden_top5)}, golden's {_rate(s.golden_top1_in_my_top5)}",
    ]


def _se(value: float | None, se: float | None, fmt) -> str:
    if value is None:
        return "-"
    return fmt(value) if se is None else f"{fmt(value)} ± {fmt(se)}"


def _pct(value: float | None) -> str:
    return numbers.percent(value, "-")


def _rate(value: float | None) -> str:
    return numbers.percent(value, "-", digits=2)


def _result(source: Any) -> CompareResult:
    if isinstance(source, CompareResult):
        return source
    if isinstance(source, dict):
        return parse_document(source, Path("<compare result>"))
    return load_compare(source)


def _painter(color: bool):
    def paint(style: str, text: str) -> str:
        code = _COLORS.get(style)
        return f"{code}{text}{_RESET}" if color and code and text else text

    return paint


def _focus(case: CaseRow) -> str:
    return str(case.focus_step) if case.focus_step is not None else "-"


def _margin(case: CaseRow) -> float | None:
    """Golden's flip margin at the step the case is shown at (a replay: the focus step's change)."""
    if not case.replayed:
        return case.flip_margin
    change = case.change_at(case.focus_step)
    return change.flip_margin if change is not None else None


def _num(value: float | None) -> str:
    return numbers.general(value, 3, "-")


def _cos(value: float | None) -> str:
    return numbers.cosine(value, "-")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _thresholds(result: CompareResult) -> str:
    """What decides the verdicts (the floor for replayed cases, msit's thresholds and the tie tolerance for
    free runs), the floor, and msit's per-token thresholds (every token pair's pass/fail)."""
    o = result.options
    replayed = sum(1 for c in result.rows if c.replayed)
    free = len(result.rows) - replayed
    decide = []
    if replayed:
        decide.append(f"{replayed} replayed case(s) by the noise floor (noise margin {o.get('noise_margin', '?')} "
                      f"logits, steps close when KL <= {o.get('noise_kl', '?')} and cosine >= "
                      f"{o.get('noise_cosine', '?')})")
    if free or not result.rows:
        decide.append(f"{free} free-run case(s) by msit's thresholds up to the first argmax change, then the tie "
                      f"tolerance {o.get('tie_tolerance', '?')} logits")
    lines = ["verdicts: " + "; ".join(decide)]
    floor = result.document.floor
    if floor is not None and floor.get("description"):
        lines.append(f"floor: {floor['description']}")
    reference = result.document.reference
    if reference is not None and reference.get("source") == "control" and reference.get("description"):
        lines.append(f"reference: {reference['description']}")
    note = topk_evidence.terminal_note(result.rows)  # a server's top-k dump
    if note:
        lines.append(note)
    msit = (f"msit's per-token thresholds (each token pair's pass/fail): cosine > {o.get('cosine_similarity', '?')}, "
            f"KL < {o.get('kl_divergence', '?')}, |L1| < {o.get('l1_norm', '?')} (or max logit within 1 ULP of "
            f"{o.get('dtype', '?')})")
    if result.rows and not free:
        msit += "; replayed verdicts do not use them"
    lines.append(msit)
    return "\n".join(lines)
