"""The files a compare run writes, and their names.

In `<output_dir>` (checked writable before any work):
- `logits_cmp_res_<tag>.csv`: msit's ten columns, then ours (one row per file pair);
- `logits_cmp_cases_<tag>.csv` and `.json`: one verdict per case (`records.CaseRecord`), with llama.cpp's
  statistics of its judged steps (the JSON also has the run's, over every case: `stats`).
`<tag>` is `<YYYYmmddHHMMSS>`, or `<YYYYmmddHHMMSS>_N` when a run of the same second
already claimed the plain stamp: names are never reused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from logitsdump.compare.distribution import STATISTICS_FIELDS, StepStatistics
from logitsdump.compare.document import CompareDocument
from logitsdump.compare.records import CSV_EXTRA_COLUMNS, ONLY_IN_GOLDEN, ONLY_IN_MY, CaseRecord, PairMetrics, Step
from logitsdump.csvsafe import write_csv
from logitsdump.fsutil import atomic_write_text

#: msit's columns, in msit's order.
MSIT_COLUMNS = (
    "file_name", "key", "token_id", "cosine_similarity", "kl_divergence", "l1_norm",
    "ulp_max_diff", "ulp", "passed", "cmp_fail_reason",
)
#: Our columns, after msit's: the `PairMetrics` fields marked as CSV columns.
EXTRA_COLUMNS = CSV_EXTRA_COLUMNS
CSV_COLUMNS = MSIT_COLUMNS + EXTRA_COLUMNS
CASE_COLUMNS = (
    "subject", "key", "verdict", "passed", "tokens_total", "tokens_compared", "tokens_judged",
    "first_diff_token", "golden_token", "my_token", "golden_token_text", "my_token_text",
    "flip_margin", "worst_cosine", "worst_kl", "reason",
    "replay_mode", "changed_steps", "flip_margins", "my_flip_margins", "my_ranks_in_golden",
    "golden_ranks_in_mine", "mean_kl", "p95_kl", "mean_cosine", "p95_cosine",
    *STATISTICS_FIELDS,  # llama.cpp's statistics of the judged steps (`distribution.StepStatistics`)
    "noise_floor",  # the floor the verdict used (`floor.Floor.label`)
    "evidence", "kl_is_lower_bound",  # top-k evidence (`compare/topk.py`): the KL columns are lower bounds
    "reference", "noise_ratio", "noise_ratio_p",  # what judged the case; against a control: the paired statistic
)
NA = "NA"

#: The output files of one compare run: `{prefix}{tag}{suffix}`.
RESULT_CSV = ("logits_cmp_res_", ".csv")
CASES_CSV = ("logits_cmp_cases_", ".csv")
CASES_JSON = ("logits_cmp_cases_", ".json")
#: Matches any of them; groups: timestamp, N.
OUTPUT_NAME = re.compile(r"^logits_cmp_(?:res|cases)_(\d{14})(?:_(\d+))?\.(?:csv|json)$")


def output_name(kind: tuple[str, str], tag: str) -> str:
    """The file name of one compare output (`RESULT_CSV`, `CASES_CSV` or `CASES_JSON`) for `tag`."""
    return f"{kind[0]}{tag}{kind[1]}"


def run_names(tag: str) -> tuple[str, str, str]:
    """The three file names of the run tagged `tag` (the result CSV first: it claims the tag)."""
    return tuple(output_name(kind, tag) for kind in (RESULT_CSV, CASES_CSV, CASES_JSON))  # type: ignore[return-value]


def run_tag(path: Path) -> tuple[str, int] | None:
    """(timestamp, N) of a compare output's file name; None for any other name."""
    match = OUTPUT_NAME.match(path.name)
    return (match.group(1), int(match.group(2) or 0)) if match else None


# ---- the per-token CSV ------------------------------------------------------------------------


def write_steps_csv(path: Path, steps: Iterable[Step]) -> None:
    steps = list(steps)
    if any(step.topk is not None for step in steps):  # a top-k comparison: its own columns
        from logitsdump.compare.topk import write_topk_steps_csv

        write_topk_steps_csv(path, steps)
        return
    write_csv(path, CSV_COLUMNS, (_step_row(step) for step in steps))


def _num(value: float) -> str:
    return repr(float(value))


def _cell(value: Any) -> Any:
    """A CSV cell of one of our metric columns: bools as True/False, numbers as they are, None as NA."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return str(value)
    return float(value) if isinstance(value, float) else value


def _step_row(step: Step) -> list[Any]:
    keyed = step.key is not None and step.reason not in (ONLY_IN_GOLDEN, ONLY_IN_MY)
    key = str(step.key) if keyed else NA
    token = step.token_id if keyed else NA
    m: PairMetrics | None = step.metrics
    if m is None:
        return [step.file_name, key, token, *([NA] * 6), step.reason, *([NA] * len(EXTRA_COLUMNS))]
    kl = "0" if m.kl_divergence == 0.0 else _num(m.kl_divergence)  # msit's max(0, kl) prints 0
    return [
        step.file_name, key, token, float(m.cosine_similarity), kl, float(m.l1_norm),
        float(m.ulp_max_diff), float(m.ulp), str(m.passed), "",
        *(_cell(getattr(m, name)) for name in EXTRA_COLUMNS),
    ]


# ---- the case CSV and JSON --------------------------------------------------------------------


def write_cases_csv(path: Path, cases: Iterable[CaseRecord], floor_label: str,
                    control_label: str | None = None) -> None:
    """The cases CSV; `floor_label` (the run's floor) fills the `noise_floor` column, and the `reference`
    column of a case judged against the control arm is `control_label`, of any other the floor's."""
    write_csv(path, CASE_COLUMNS, (_case_row(case, floor_label, control_label) for case in cases))


def _case_row(case: CaseRecord, floor_label: str, control_label: str | None = None) -> dict[str, Any]:
    data = case.to_dict()
    data["noise_floor"] = floor_label
    judged_by_control = case.reference == "control" and case.paired is not None
    data["reference"] = control_label if judged_by_control and control_label else floor_label
    data["noise_ratio"] = math.exp(case.paired.log_ratio) if judged_by_control and case.paired else None
    data["noise_ratio_p"] = case.paired.p_value if judged_by_control and case.paired else None
    data["key"] = str(case.key)
    data["changed_steps"] = " ".join(str(t) for t in case.changed_steps)
    data["flip_margins"] = " ".join(_num(c.flip_margin) for c in case.changes)
    data["my_flip_margins"] = " ".join(_num(c.my_flip_margin) for c in case.changes)
    data["my_ranks_in_golden"] = " ".join(str(c.my_rank_in_golden) for c in case.changes)
    data["golden_ranks_in_mine"] = " ".join(str(c.golden_rank_in_mine) for c in case.changes)
    data.update(case.stats.to_dict() if case.stats is not None else StepStatistics.empty_row())
    return {name: ("" if data.get(name) is None else data[name]) for name in CASE_COLUMNS}


def write_cases_json(path: Path, document: CompareDocument) -> None:
    """The case JSON, one line per case: json's C encoder writes each line (with `indent`, json uses its
    pure-Python encoder, ten times slower on thousands of cases)."""
    data = document.to_dict()
    head = _dumps({k: v for k, v in data.items() if k != "cases"}, indent=1)
    cases = ",\n".join(_dumps(case) for case in data["cases"])
    text = f'{head[:-2]},\n "cases": [\n{cases}\n ]\n}}\n' if cases else f'{head[:-2]},\n "cases": []\n}}\n'
    atomic_write_text(path, text)


def _dumps(value: Any, indent: int | None = None) -> str:
    """JSON of `value`; a value that is not finite (a statistic of logits near float's limit) written as
    null, looked for only when the plain encoding refuses one."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=indent)
    except ValueError:
        return json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, indent=indent)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
