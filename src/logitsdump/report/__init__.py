"""HTML and terminal rendering of compare results (`logitsdump report`, the summary after `compare`).

Public API:
- `write_report(source, output_path=None, *, topk=None) -> Path`: the self-contained HTML page;
- `format_summary(source, *, color=False) -> str` / `print_summary(source, stream=None)`: the terminal table;
- `load_compare(source) -> CompareResult`: a compare run read back from its case JSON.
`source` is the compare output folder (its newest run), one of its result files, the
`CompareSummary` returned by `run_compare`, or (for `write_report`) a list of these, merged into one page.
"""

from __future__ import annotations

from logitsdump.report.html import default_report_path, render_report, write_report
from logitsdump.report.load import CompareResult, load_compare, load_compares
from logitsdump.report.terminal import format_summary, print_summary, use_color

__all__ = [
    "CompareResult",
    "default_report_path",
    "format_summary",
    "load_compare",
    "load_compares",
    "print_summary",
    "render_report",
    "use_color",
    "write_report",
]
