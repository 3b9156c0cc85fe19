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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from logitsdump.compare.run import CASES_JSON, OUTPUT_NAME, output_name
from logitsdump.compare.verdict import (
    DIVERGENT,
    FREE_RUN_VERDICTS,
    INCOMPLETE,
    PRECISION_SUSPECT,
    REPLAY_VERDICTS,
    VERDICTS,
)
from logitsdump.errors import DataError, FileFormatError
from logitsdump.store import read_vocab

#: The case-JSON versions this module reads.
SUPPORTED_SCHEMA = (1,)
#: Task name of a case whose dumps have no manifest.
UNKNOWN_TASK = "unknown"

_RUN_FILE = OUTPUT_NAME


@dataclass(frozen=True)
class Step:
    """One generated token of a case (one row of the compare CSV)."""

    token_index: int | None
    file_name: str
    reason: str
    passed: bool | None
    cosine: float | None
    kl: float | None
    l1: float | None
    max_abs_diff: float | None
    golden_margin: float | None
    golden_top1: int | None
    my_top1: int | None
    golden_top1_text: str | None
    my_top1_text: str | None
    top1_match: bool | None

    @property
    def changed(self) -> bool:
        """The two devices' argmax differs at this step."""
        return self.top1_match is False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        return cls(
            token_index=_int_or_none(data.get("token_id")),
            file_name=str(data.get("file_name") or ""),
            reason=str(data.get("reason") or ""),
            passed=data.get("passed") if isinstance(data.get("passed"), bool) else None,
            cosine=_float_or_none(data.get("cosine_similarity")),
            kl=_float_or_none(data.get("kl_divergence")),
            l1=_float_or_none(data.get("l1_norm")),
            max_abs_diff=_float_or_none(data.get("max_abs_diff")),
            golden_margin=_float_or_none(data.get("golden_margin")),
            golden_top1=_int_or_none(data.get("golden_top1")),
            my_top1=_int_or_none(data.get("my_top1")),
            golden_top1_text=_str_or_none(data.get("golden_top1_text")),
            my_top1_text=_str_or_none(data.get("my_top1_text")),
            top1_match=data.get("top1_match") if isinstance(data.get("top1_match"), bool) else None,
        )


@dataclass(frozen=True)
class Change:
    """A step of a case where the argmax differs (compare's `changes`)."""

    token: int
    golden_token: int | None
    my_token: int | None
    golden_margin: float | None
    my_margin: float | None
    my_rank_in_golden: int | None
    golden_rank_in_mine: int | None
    golden_token_text: str | None = None
    my_token_text: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change | None:
        token = _int_or_none(data.get("token"))
        if token is None:
            return None
        return cls(
            token=token,
            golden_token=_int_or_none(data.get("golden_token")),
            my_token=_int_or_none(data.get("my_token")),
            golden_margin=_float_or_none(data.get("golden_margin")),
            my_margin=_float_or_none(data.get("my_margin")),
            my_rank_in_golden=_int_or_none(data.get("my_rank_in_golden")),
            golden_rank_in_mine=_int_or_none(data.get("golden_rank_in_mine")),
            golden_token_text=_str_or_none(data.get("golden_token_text")),
            my_token_text=_str_or_none(data.get("my_token_text")),
        )


@dataclass(frozen=True)
class Case:
    """One case of a compare run, as the report shows it."""

    subject: str
    key: str
    verdict: str
    passed: bool
    reason: str
    tokens_total: int
    tokens_judged: int
    first_diff_token: int | None
    worst_cosine: float | None
    worst_kl: float | None
    flip_margin: float | None
    golden_token: int | None
    my_token: int | None
    golden_token_text: str | None
    my_token_text: str | None
    steps: tuple[Step, ...]
    #: The manifest summaries of compare's JSON (task, query, output tokens...), or None.
    golden_manifest: Mapping[str, Any] | None = field(default=None, repr=False)
    my_manifest: Mapping[str, Any] | None = field(default=None, repr=False)
    #: The logits folders this case was compared from (set when several runs are merged).
    golden_dir: Path | None = field(default=None, repr=False)
    my_dir: Path | None = field(default=None, repr=False)
    #: "step" or "prefill" when the test side replayed golden's tokens; None for a free run.
    replay_mode: str | None = None
    #: The judged steps where the argmax differs (a free run: at most the first).
    changes: tuple[Change, ...] = ()
    mean_kl: float | None = None
    p95_kl: float | None = None
    mean_cosine: float | None = None
    p95_cosine: float | None = None

    @property
    def replayed(self) -> bool:
        return self.replay_mode is not None

    @property
    def label(self) -> str:
        """`subject/key`, or the key alone when the subject is empty."""
        return f"{self.subject} #{self.key}" if self.subject else f"#{self.key}"

    @property
    def task(self) -> str:
        for manifest in (self.golden_manifest, self.my_manifest):
            if manifest and manifest.get("task"):
                return str(manifest["task"])
        return UNKNOWN_TASK

    @property
    def query(self) -> str | None:
        for manifest in (self.golden_manifest, self.my_manifest):
            if manifest and isinstance(manifest.get("query"), str):
                return manifest["query"]
        return None

    def focus_step(self) -> Step | None:
        """The step the report centres on.

        A free run: the first argmax change; else, for a divergent or incomplete case,
        the last judged token (the one that failed); else the worst cosine.
        A replayed case: the argmax change where golden was surest (largest golden
        margin), unless the case is precision-suspect with every change a near-tie
        by its reason (drift): then, as without changes, the step with the worst KL.
        """
        if not self.steps:
            return None
        if self.replayed:
            return self._replay_focus()
        if self.first_diff_token is not None:
            for step in self.steps:
                if step.token_index == self.first_diff_token:
                    return step
        if self.verdict in (DIVERGENT, INCOMPLETE) and 0 < self.tokens_judged <= len(self.steps):
            return self.steps[self.tokens_judged - 1]
        measured = [s for s in self.steps if s.cosine is not None]
        return min(measured, key=lambda s: s.cosine or 0.0) if measured else self.steps[0]

    def _replay_focus(self) -> Step | None:
        by_token = {s.token_index: s for s in self.steps}
        drift_only = self.verdict == PRECISION_SUSPECT and "clear golden margin" not in self.reason
        margins = [c for c in self.changes if c.golden_margin is not None and c.token in by_token]
        if margins and not drift_only:
            return by_token[max(margins, key=lambda c: c.golden_margin or 0.0).token]
        measured = [s for s in self.steps if s.kl is not None]
        if measured:
            return max(measured, key=lambda s: s.kl or 0.0)
        return self.steps[0]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Case:
        steps = data.get("steps") or []
        if not isinstance(steps, list):
            raise DataError("case JSON: 'steps' of a case is not a list")
        verdict = str(data.get("verdict") or "")
        return cls(
            subject=str(data.get("subject") or ""),
            key=str(data.get("key")),
            verdict=verdict,
            passed=bool(data.get("passed")),
            reason=str(data.get("reason") or ""),
            tokens_total=_int_or_none(data.get("tokens_total")) or len(steps),
            tokens_judged=_int_or_none(data.get("tokens_judged")) or 0,
            first_diff_token=_int_or_none(data.get("first_diff_token")),
            worst_cosine=_float_or_none(data.get("worst_cosine")),
            worst_kl=_float_or_none(data.get("worst_kl")),
            flip_margin=_float_or_none(data.get("flip_margin")),
            golden_token=_int_or_none(data.get("golden_token")),
            my_token=_int_or_none(data.get("my_token")),
            golden_token_text=_str_or_none(data.get("golden_token_text")),
            my_token_text=_str_or_none(data.get("my_token_text")),
            steps=tuple(Step.from_dict(s) for s in steps if isinstance(s, Mapping)),
            golden_manifest=_mapping_or_none(data.get("golden_manifest")),
            my_manifest=_mapping_or_none(data.get("my_manifest")),
            replay_mode=_str_or_none(data.get("replay_mode")),
            changes=tuple(
                change for change in (
                    Change.from_dict(c) for c in (data.get("changes") or []) if isinstance(c, Mapping)
                ) if change is not None
            ) if isinstance(data.get("changes"), list) else (),
            mean_kl=_float_or_none(data.get("mean_kl")),
            p95_kl=_float_or_none(data.get("p95_kl")),
            mean_cosine=_float_or_none(data.get("mean_cosine")),
            p95_cosine=_float_or_none(data.get("p95_cosine")),
        )


@dataclass(frozen=True)
class CompareResult:
    """A compare run read back from its case JSON."""

    json_path: Path
    tool: str
    timestamp: str
    options: Mapping[str, Any]
    summary: Mapping[str, Any]
    cases: tuple[Case, ...]

    @property
    def replayed(self) -> bool:
        """Whether any case of the run was replayed (`dump --replay`)."""
        return any(case.replayed for case in self.cases)

    def verdicts_shown(self) -> tuple[str, ...]:
        """The verdicts this run can have, in VERDICTS order: a free run's five, a replay's five, or
        all seven when the run mixes both (and any other verdict that a case has)."""
        kinds = {case.replayed for case in self.cases}
        wanted = set(REPLAY_VERDICTS if kinds == {True} else FREE_RUN_VERDICTS)
        if kinds == {True, False}:
            wanted |= set(REPLAY_VERDICTS)
        wanted |= {case.verdict for case in self.cases if case.verdict in VERDICTS}
        return tuple(v for v in VERDICTS if v in wanted)

    def verdict_counts(self) -> dict[str, int]:
        """verdict -> number of cases, every verdict of `verdicts_shown` present, in VERDICTS order."""
        counts = {v: 0 for v in self.verdicts_shown()}
        for case in self.cases:
            counts[case.verdict] = counts.get(case.verdict, 0) + 1
        return counts

    def task_counts(self) -> dict[str, dict[str, int]]:
        """task -> verdict -> number of cases (tasks sorted, `unknown` last)."""
        table: dict[str, dict[str, int]] = {}
        shown = self.verdicts_shown()
        for case in self.cases:
            row = table.setdefault(case.task, {v: 0 for v in shown})
            row[case.verdict] = row.get(case.verdict, 0) + 1
        return dict(sorted(table.items(), key=lambda kv: (kv[0] == UNKNOWN_TASK, kv[0])))

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
    """Read a compare run from a folder, one of its files, or a `CompareSummary`."""
    path = find_cases_json(source)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    return parse_document(document, path)


def load_compares(sources: Sequence[Any]) -> CompareResult:
    """One or several compare runs (e.g. one per task) as one result; cases keep their own folders."""
    results = [source if isinstance(source, CompareResult) else load_compare(source) for source in sources]
    if len(results) == 1:
        return results[0]
    if not results:
        raise DataError("no compare output given")
    cases = tuple(
        replace(case, golden_dir=result.golden_dir(), my_dir=result.my_dir())
        for result in results
        for case in result.cases
    )
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
    first = results[0]
    options = dict(first.options)
    for name in ("golden_path", "my_path"):
        folders = [str(r.options.get(name, "")) for r in results]
        options[name] = folders[0] if len(set(folders)) == 1 else f"{len(folders)} folders"
    return CompareResult(first.json_path, first.tool, max(r.timestamp for r in results), options, summary, cases)


def parse_document(document: Any, path: Path) -> CompareResult:
    """A CompareResult from compare's case JSON (already parsed)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("cases"), list):
        raise DataError(f"{path}: expected compare's case JSON with a 'cases' list")
    version = document.get("schema_version")
    if version not in SUPPORTED_SCHEMA:
        raise DataError(f"{path}: schema_version {version!r} is not supported (this report reads "
                        f"{', '.join(map(str, SUPPORTED_SCHEMA))}); use the logitsdump that wrote it")
    options = document.get("options") if isinstance(document.get("options"), Mapping) else {}
    summary = document.get("summary") if isinstance(document.get("summary"), Mapping) else {}
    cases = tuple(Case.from_dict(c) for c in document["cases"] if isinstance(c, Mapping))
    return CompareResult(
        json_path=path,
        tool=str(document.get("tool") or "logitsdump"),
        timestamp=str(document.get("timestamp") or ""),
        options=dict(options),
        summary=dict(summary),
        cases=cases,
    )


def find_cases_json(source: Any) -> Path:
    """The case JSON of `source`: a folder (its newest run), a result file, or a CompareSummary."""
    summary_json = getattr(source, "cases_json_path", None)
    if summary_json is not None:
        return Path(summary_json)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path or a CompareSummary, got {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        runs = [p for p in path.iterdir() if _RUN_FILE.match(p.name) and p.name.endswith(".json")]
        if not runs:
            raise DataError(f"{path}: no logits_cmp_cases_<timestamp>.json in this folder; "
                            "run `logitsdump compare -o` into it first")
        return max(runs, key=_run_order)
    if not path.exists():
        raise DataError(f"{path} does not exist: give the compare output folder or one of its files")
    match = _RUN_FILE.match(path.name)
    if match is None:
        raise DataError(f"{path}: expected the compare output folder, logits_cmp_res_<ts>.csv or "
                        "logits_cmp_cases_<ts>.json")
    tag = match.group(1) + (f"_{match.group(2)}" if match.group(2) else "")
    json_path = path.with_name(output_name(CASES_JSON, tag))
    if not json_path.is_file():
        raise DataError(f"{json_path} is missing: the report needs compare's case JSON written beside {path.name}")
    return json_path


def _run_order(path: Path) -> tuple:
    match = _RUN_FILE.match(path.name)
    assert match is not None
    return (match.group(1), int(match.group(2) or 0), path.stat().st_mtime)


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


def load_topk(result: CompareResult, case: Case, k: int = 10, step: Step | None = None) -> TopK:
    """The top-k candidates of both devices at `step` (default: the case's focus step), read from the
    logits files named in the step. Problems (folder moved, file unreadable) become `problem`."""
    step = step or case.focus_step()
    if step is None or not step.file_name:
        return TopK(None, problem="no logits file for this case")
    problems: list[str] = []
    sides: list[tuple[Candidate, ...]] = []
    folders = (("golden", case.golden_dir or result.golden_dir()), ("test", case.my_dir or result.my_dir()))
    for label, folder in folders:
        if folder is None:
            problems.append(f"{label} folder not found")
            sides.append(())
            continue
        try:
            sides.append(top_candidates(folder / step.file_name, k, read_vocab(folder)))
        except FileFormatError as err:
            problems.append(f"{label}: {err}")
            sides.append(())
    return TopK(step.token_index, sides[0], sides[1], "; ".join(problems))


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


# ---- small converters -------------------------------------------------------------------------


def finite_float(value: Any) -> float | None:
    """`value` as a finite float, else None (None, text that is no number, NaN, infinities)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _float_or_none(value: Any) -> float | None:
    return None if isinstance(value, bool) else finite_float(value)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _mapping_or_none(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None
