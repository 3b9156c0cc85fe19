"""The files `localize judge` writes, and reading them back (the report's only reader). Torch-free.

In `<output_dir>`, `<tag>` a timestamp (`_N` when a run of the same second claimed it):
- `localize_cases_<tag>.json`: the document: the run's verdict, and per case its verdict, causal check,
  head, every candidate's local and accumulated error with its band, the accumulated baselines;
- `localize_cases_<tag>.csv`: one row per case;
- `localize_candidates_<tag>.csv`: one row per case and candidate (module-level, then whole layers);
- `msprobe_<case>_<tag>.json`: the msprobe hand-off of each culprit (`msprobe.culprit_config`);
- `localize_<tag>.html`: the page (`report/localize.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from logitsdump.csvsafe import write_csv
from logitsdump.errors import DataError
from logitsdump.localize.records import SCHEMA_VERSION

DOCUMENT = ("localize_cases_", ".json")
CASES_CSV = ("localize_cases_", ".csv")
CANDIDATES_CSV = ("localize_candidates_", ".csv")
PAGE = ("localize_", ".html")
NAME = re.compile(r"^localize_cases_(\d{14})(?:_(\d+))?\.json$")

CASE_COLUMNS = (
    "id", "subject", "key", "task", "focus_step", "tokens", "verdict", "layer", "module", "head", "score",
    "runner_up", "runner_up_score", "causal", "kl_test", "kl_noise", "kl_necessity", "kl_sufficiency",
    "necessity_recovered", "sufficiency_reproduced", "sufficiency_cosine", "sufficiency_share",
    "sufficiency_null_max", "necessity_share", "necessity_cosine", "necessity_rule", "dither_runs",
    "first_cosine_below_0.99", "largest_jump", "band_source", "reason",
)
CANDIDATE_COLUMNS = (
    "id", "label", "name", "layer", "module", "kind", "local_mean", "local_max", "band_mean", "band_max",
    "band_widened", "score", "above", "accumulated_mean", "accumulated_max", "accumulated_cosine",
    "control_accumulated_mean",
)


def names(tag: str) -> tuple[str, str, str, str]:
    """The document, case CSV, candidate CSV and page names of one judge run."""
    return tuple(f"{prefix}{tag}{suffix}" for prefix, suffix in (DOCUMENT, CASES_CSV, CANDIDATES_CSV, PAGE))  # type: ignore[return-value]


def write_document(path: Path, document: Mapping[str, Any]) -> None:
    from logitsdump.localize.files import write_json

    write_json(path, document, indent=1)


def write_cases_csv(path: Path, cases: Sequence[Mapping[str, Any]]) -> None:
    rows = []
    for case in cases:
        verdict = case["verdict"]
        causal = case.get("causal") or {}
        rows.append([
            case["id"], case["subject"], case["key"], case["task"], case["focus_step"], case["tokens"],
            verdict["label"], verdict.get("layer"), verdict.get("module"), verdict.get("head"), verdict.get("score"),
            verdict.get("runner_up"), verdict.get("runner_up_score"), causal.get("outcome"), case.get("kl_test"),
            case.get("kl_noise"), causal.get("kl_necessity"), causal.get("kl_sufficiency"),
            causal.get("necessity_recovered"), causal.get("sufficiency_reproduced"), causal.get("sufficiency_cosine"),
            causal.get("sufficiency_share"), causal.get("sufficiency_null_max"), causal.get("necessity_share"),
            causal.get("necessity_cosine"), causal.get("necessity_rule"), causal.get("dither_runs"),
            case["baselines"].get("first_cosine_below"),
            case["baselines"].get("largest_jump"),
            case.get("band_source"), verdict["reason"],
        ])
    write_csv(path, CASE_COLUMNS, rows)


def write_candidates_csv(path: Path, cases: Sequence[Mapping[str, Any]], above: float) -> None:
    rows = []
    for case in cases:
        for row in [*case["candidates"], *case["layers"]]:
            rows.append([case["id"], row["label"], row["name"], row["layer"], row["module"], row["kind"],
                         row["local_mean"], row["local_max"], row["band_mean"], row["band_max"], row["band_widened"],
                         row["score"], (row["score"] or 0) > above, row.get("accumulated_mean"),
                         row.get("accumulated_max"), row.get("accumulated_cosine"),
                         row.get("control_accumulated_mean")])
    write_csv(path, CANDIDATE_COLUMNS, rows)


def find_document(source: str | Path) -> Path:
    """The newest `localize_cases_<tag>.json` of a judge output folder, or the file itself."""
    path = Path(source)
    if path.is_dir():
        runs = [p for p in path.iterdir() if NAME.match(p.name)]
        if not runs:
            raise DataError(f"{path}: no localize_cases_<timestamp>.json in this folder; run `logitsdump localize "
                            "judge -o` into it first")
        return max(runs, key=_order)
    if not path.is_file():
        raise DataError(f"{path} does not exist: give the localize judge output folder or its "
                        "localize_cases_<ts>.json")
    return path


def read_document(source: str | Path) -> dict[str, Any]:
    """The judge document (a JSON object of this schema); DataError when it is not one."""
    path = find_document(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"{path}: not a readable localize document: {err}") from err
    if not isinstance(data, dict) or data.get("kind") != "localize" or data.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{path}: not a localize judge document of schema version {SCHEMA_VERSION}")
    return data


def _order(path: Path) -> tuple[str, int]:
    match = NAME.match(path.name)
    assert match is not None
    return match.group(1), int(match.group(2) or 0)
