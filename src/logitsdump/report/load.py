"""Read a compare output for the report: the case JSON, and top-k candidates from the logits files.

`load_compare(source)` accepts the compare output folder (the newest run in it
is taken), a `logits_cmp_res_<ts>.csv`, a `logits_cmp_cases_<ts>.csv` or
`.json`, or the `CompareSummary` that `run_compare` returned. Everything the
report shows comes from the `logits_cmp_cases_<ts>.json` beside them, except the
top-k candidates at a case's divergence step: those are read again from the
two logits folders named in the JSON's options (`load_topk`).

Nothing here computes a comparison metric; the softmax of the top-k table is
the only arithmetic (to show probabilities).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from logitsdump.compare.distribution import StepStatistics
from logitsdump.compare.document import CompareDocument
from logitsdump.compare.outputs import CASES_JSON, OUTPUT_NAME, output_name, run_tag
from logitsdump.compare.records import UNKNOWN_TASK, CaseRecord, Step
from logitsdump.compare.schema_v1 import upgrade_document
from logitsdump.compare.verdicts import FREE_RUN_VERDICTS, REPLAY_VERDICTS, VERDICTS
from logitsdump.errors import DataError, FileFormatError
from logitsdump.fsutil import check_regular
from logitsdump.report.index import CaseRow, RunIndex, index_cases
from logitsdump.report.stream import CaseFile, LazyCases, read_case_file, read_head
from logitsdump.store import read_vocab

__all__ = ["UNKNOWN_TASK", "CompareResult", "find_cases_json", "load_compare", "load_compares", "load_topk"]


@dataclass(frozen=True)
class CompareResult:
    """A compare run read back from its case JSON (or several runs merged).

    `cases` are full records (read from the file on demand when the run was streamed: `stream.py`);
    `rows` (one compact `index.CaseRow` per case), `stats` and `index` hold what every case contributes
    to the overview, the table and the statistics, without the steps."""

    json_path: Path
    document: CompareDocument
    #: Per case (same order), the logits folders it was compared from, when several runs were merged.
    case_folders: tuple[tuple[Path | None, Path | None], ...] = field(default=(), repr=False)
    #: The index built while the cases were read (None: built from `cases` when first asked for).
    prebuilt_index: RunIndex | None = field(default=None, repr=False, compare=False)

    @cached_property
    def index(self) -> RunIndex:
        return self.prebuilt_index if self.prebuilt_index is not None else index_cases(self.cases)

    @property
    def rows(self) -> list[CaseRow]:
        return self.index.rows

    @cached_property
    def stats(self) -> StepStatistics | None:
        """llama.cpp's statistics of every case's judged steps (`CompareDocument.stats`, from the index)."""
        return self.index.all_steps().statistics()

    def task_stats(self) -> dict[str, StepStatistics | None]:
        """The same per task, tasks sorted."""
        return {task: values.statistics() for task, values in sorted(self.index.steps.items())}

    @property
    def tool(self) -> str:
        return self.document.tool

    @property
    def timestamp(self) -> str:
        return self.document.timestamp

    @property
    def options(self) -> Mapping[str, Any]:
        return self.document.options

    @property
    def summary(self) -> Mapping[str, Any]:
        return self.document.summary

    @property
    def cases(self) -> tuple[CaseRecord, ...]:
        return self.document.cases

    @cached_property
    def replayed(self) -> bool:
        """Whether any case of the run was replayed (`dump --replay`)."""
        return any(row.replayed for row in self.rows)

    def verdicts_shown(self) -> tuple[str, ...]:
        """The verdicts this run can have, in VERDICTS order: a free run's five, a replay's five, or
        all seven when the run mixes both (and any other verdict that a case has)."""
        kinds = {row.replayed for row in self.rows}
        wanted = set(REPLAY_VERDICTS if kinds == {True} else FREE_RUN_VERDICTS)
        if kinds == {True, False}:
            wanted |= set(REPLAY_VERDICTS)
        wanted |= {row.verdict for row in self.rows if row.verdict in VERDICTS}
        return tuple(v for v in VERDICTS if v in wanted)

    def verdict_counts(self) -> dict[str, int]:
        """verdict -> number of cases, every verdict of `verdicts_shown` present, in VERDICTS order."""
        counts = {v: 0 for v in self.verdicts_shown()}
        for row in self.rows:
            counts[row.verdict] = counts.get(row.verdict, 0) + 1
        return counts

    def task_counts(self) -> dict[str, dict[str, int]]:
        """task -> verdict -> number of cases (tasks sorted, `unknown` last)."""
        table: dict[str, dict[str, int]] = {}
        shown = self.verdicts_shown()
        for case in self.rows:
            row = table.setdefault(case.task, {v: 0 for v in shown})
            row[case.verdict] = row.get(case.verdict, 0) + 1
        return dict(sorted(table.items(), key=lambda kv: (kv[0] == UNKNOWN_TASK, kv[0])))

    def folders(self, index: int) -> tuple[Path | None, Path | None]:
        """The golden and test logits folders of case `index`."""
        if index < len(self.case_folders):
            return self.case_folders[index]
        return self.golden_dir(), self.my_dir()

    def golden_dir(self) -> Path | None:
        return self._input_dir("golden_path")

    def my_dir(self) -> Path | None:
        return self._input_dir("my_path")

    def _input_dir(self, name: str) -> Path | None:
        """An input folder of the run. Relative paths were relative to compare's working folder:
        try the current folder, then the folder compare ran in (the JSON's folder minus `output_dir`)."""
        raw = self.options.get(name)
        if not raw:
            return None
        path = Path(str(raw))
        candidates = [path]
        if not path.is_absolute():
            base = _run_folder(self.json_path.parent, self.options.get("output_dir"))
            if base is not None:
                candidates.append(base / path)
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
        return None


def load_compare(source: Any) -> CompareResult:
    """Read a compare run from a folder, one of its files, or a `CompareSummary`: the case JSON streamed
    one case at a time (`stream.read_case_file`), so memory does not grow with the steps."""
    path = find_cases_json(source)
    in_memory = getattr(source, "cases", None) if hasattr(source, "cases_json_path") else None
    head = read_head(path) if in_memory is not None else None
    # compare's own summary: its cases are in memory, only the head is read
    read = CaseFile(head, tuple(in_memory), index_cases(in_memory)) if head is not None else read_case_file(path)
    head = read.head
    options, summary = head.get("options"), head.get("summary")
    document = CompareDocument(
        tool=head["tool"] if isinstance(head.get("tool"), str) else "logitsdump",
        timestamp=head["timestamp"] if isinstance(head.get("timestamp"), str) else "",
        options=dict(options) if isinstance(options, Mapping) else {},
        summary=dict(summary) if isinstance(summary, Mapping) else {},
        cases=read.cases,  # type: ignore[arg-type]  # a lazy sequence, parsed on demand
        floor=dict(head["floor"]) if isinstance(head.get("floor"), Mapping) else None,
        reference=dict(head["reference"]) if isinstance(head.get("reference"), Mapping) else None,
    )
    return CompareResult(path, document, prebuilt_index=read.index)


def load_compares(sources: Sequence[Any]) -> CompareResult:
    """One or several compare runs (e.g. one per task) as one result; cases keep their own folders."""
    results = [source if isinstance(source, CompareResult) else load_compare(source) for source in sources]
    if len(results) == 1:
        return results[0]
    if not results:
        raise DataError("no compare output given")
    lazy = [result.cases for result in results]
    if all(isinstance(c, LazyCases) for c in lazy):
        cases: Sequence[CaseRecord] = sum(lazy[1:], start=lazy[0])  # type: ignore[arg-type]
    else:
        cases = tuple(case for result in results for case in result.cases)
    index = RunIndex()
    for result in results:
        index.extend(result.index)
    folders = tuple(result.folders(i) for result in results for i in range(len(result.cases)))
    summary: dict[str, Any] = {}
    for result in results:
        for name, value in result.summary.items():
            if isinstance(value, int) and not isinstance(value, bool):
                summary[name] = summary.get(name, 0) + value
            elif isinstance(value, Mapping):
                merged = summary.setdefault(name, {})
                for key, count in value.items():
                    if isinstance(count, int):
                        merged[key] = merged.get(key, 0) + count
    summary["preflights"] = [r.summary.get("preflight") for r in results]  # one per run (report.triage)
    first = results[0]
    options = dict(first.options)
    for name in ("golden_path", "my_path"):
        paths = [str(r.options.get(name, "")) for r in results]
        options[name] = paths[0] if len(set(paths)) == 1 else f"{len(paths)} folders"
    floors = {json.dumps(r.document.floor, sort_keys=True) for r in results}
    floor = first.document.floor if len(floors) == 1 else None  # merged runs of different floors: none named
    references = {json.dumps(r.document.reference, sort_keys=True) for r in results}
    reference = first.document.reference if len(references) == 1 else None  # likewise the noise reference
    document = CompareDocument(first.tool, max(r.timestamp for r in results), options, summary,
                               cases, floor=floor, reference=reference)  # type: ignore[arg-type]
    return CompareResult(first.json_path, document, folders, prebuilt_index=index)


def parse_document(document: Any, path: Path) -> CompareResult:
    """A CompareResult from compare's case JSON (already parsed)."""
    if not isinstance(document, Mapping):
        raise DataError(f"{path}: expected compare's case JSON with a 'cases' list")
    try:
        return CompareResult(path, CompareDocument.from_dict(upgrade_document(document)))
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None


def find_cases_json(source: Any) -> Path:
    """The case JSON of `source`: a folder (its newest run), a result file, or a CompareSummary."""
    summary_json = getattr(source, "cases_json_path", None)
    if summary_json is not None:
        return Path(summary_json)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path or a CompareSummary, got {type(source).__name__}")
    path = Path(source)
    if path.is_dir():  # regular files only: a FIFO named like a case JSON would block the read
        runs = [p for p in path.iterdir() if run_tag(p) is not None and p.name.endswith(".json") and p.is_file()]
        if not runs:
            raise DataError(f"{path}: no logits_cmp_cases_<timestamp>.json in this folder; "
                            "run `logitsdump compare -o` into it first")
        return max(runs, key=_run_order)
    if not path.exists():
        raise DataError(f"{path} does not exist: give the compare output folder or one of its files")
    check_regular(path, "COMPARE_OUTPUT")  # a FIFO would block the read
    match = OUTPUT_NAME.match(path.name)
    if match is None:
        raise DataError(f"{path}: expected the compare output folder, logits_cmp_res_<ts>.csv or "
                        "logits_cmp_cases_<ts>.json")
    tag = match.group(1) + (f"_{match.group(2)}" if match.group(2) else "")
    json_path = path.with_name(output_name(CASES_JSON, tag))
    if not json_path.is_file():
        raise DataError(f"{json_path} is missing: the report needs compare's case JSON written beside {path.name}")
    return json_path


def _run_order(path: Path) -> tuple:
    tag = run_tag(path)
    assert tag is not None
    return (*tag, path.stat().st_mtime)


def _run_folder(json_dir: Path, output_dir: Any) -> Path | None:
    """The folder compare ran in, when `output_dir` (relative) is the tail of `json_dir`."""
    if not output_dir:
        return None
    out = Path(str(output_dir))
    if out.is_absolute() or ".." in out.parts:
        return None
    parts = [p for p in out.parts if p != "."]
    resolved = json_dir.resolve()
    if not parts:
        return resolved
    if tuple(resolved.parts[-len(parts):]) != tuple(parts):
        return None
    return Path(*resolved.parts[: -len(parts)])


# ---- top-k at a step --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One of a device's top-k tokens at a step."""

    token: int
    text: str | None
    logit: float
    probability: float


@dataclass(frozen=True)
class TopK:
    """Both devices' top-k candidates at one step, or why they are unavailable."""

    token_index: int | None
    golden: tuple[Candidate, ...] = ()
    mine: tuple[Candidate, ...] = ()
    #: Why a side is empty ('' when both are there).
    problem: str = ""


def load_topk(result: CompareResult, index: int, k: int = 10, step: Step | None = None) -> TopK:
    """The top-k candidates of both devices at `step` (default: the focus step of case `index`), read
    from the logits files named in the step. Problems (folder moved, file unreadable) become `problem`."""
    step = step or result.cases[index].focus()
    if step is None or not step.file_name:
        return TopK(None, problem="no logits file for this case")
    problems: list[str] = []
    sides: list[tuple[Candidate, ...]] = []
    for label, folder in zip(("golden", "test"), result.folders(index), strict=True):
        if folder is None:
            problems.append(f"{label} folder not found")
            sides.append(())
            continue
        try:
            sides.append(top_candidates(folder / step.file_name, k, read_vocab(folder)))
        except FileFormatError as err:
            problems.append(f"{label}: {err}")
            sides.append(())
    return TopK(step.token_id, sides[0], sides[1], "; ".join(problems))


def top_candidates(path: Path, k: int, vocab: Sequence[str] | None = None) -> tuple[Candidate, ...]:
    """The k largest logits of one file with their softmax probabilities (float64)."""
    if not path.is_file():
        raise FileFormatError(f"{path.name}: not found in {path.parent}")
    from logitsdump.tensorio import load_logits

    logits = np.asarray(load_logits(path), dtype=np.float64)
    finite = np.isfinite(logits)
    if not finite.any():
        raise FileFormatError(f"{path.name}: no finite logit")
    k = max(1, min(k, logits.size))
    values = np.where(finite, logits, -np.inf)
    top = np.argpartition(-values, k - 1)[:k]
    top = top[np.lexsort((top, -values[top]))]  # by logit, ties by id (argmax's first index)
    peak = values[top[0]]
    weights = np.exp(values[finite] - peak)
    total = float(weights.sum())
    out = []
    for index in top.tolist():
        value = float(logits[index])
        prob = math.exp(value - peak) / total if math.isfinite(value) else 0.0
        text = vocab[index] if vocab is not None and 0 <= index < len(vocab) else None
        out.append(Candidate(int(index), text, value, prob))
    return tuple(out)
