"""modeltest's output layout and the files of an evaluation.

The only home of the folder layout:
    {output_dir}/results/{dev}/precision_test/{task}/{dtype}/{model}/  result file, infer results
    {output_dir}/debug/{dev}/precision_test/{task}/{dtype}/{model}/    debug CSVs
    {output_dir}/data/{dev}/precision_test/{task}/{dtype}/{model}/logits/   logits files + manifest
    {output_dir}/data/{dev}/precision_test/{task}/{dtype}/{model}/control/  the control arm of that dump
                                                                            (our extension: `dump --control`)
Names from YAML files are made safe as single path components, so nothing
can be written outside `output_dir`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitsdump.csvsafe import write_csv
from logitsdump.fsutil import atomic_open, safe_component

DEBUG_COLUMNS = ("key", "queries", "input_token_ids", "output_token_ids", "test_result", "golden_result", "pass")
BAD_CASE_COLUMNS = ("key", "passed")
RESULT_COLUMNS = ("subject", "total", "correct", "not_judged", "accuracy")

#: The area of `output_dir` that holds the logits folders.
DATA_AREA = "data"
#: The folder of one run's logits files, manifest and vocabulary (the last part of the layout).
LOGITS_FOLDER = "logits"
#: The folder of a dump's control arm (the same cases replayed in a second healthy configuration), beside it.
CONTROL_FOLDER = "control"


def control_dir_of(logits_dir: Path) -> Path:
    """Where the control arm of the dump in `logits_dir` lives: the `control` folder beside it."""
    return Path(logits_dir).parent / CONTROL_FOLDER


def data_root(output_dir: Path) -> Path:
    """`{output_dir}/data`: every run's logits folder is somewhere below it."""
    return Path(output_dir) / DATA_AREA


@dataclass(frozen=True)
class OutputLayout:
    """Where one evaluation writes (modeltest §5)."""

    output_dir: Path
    device_label: str  # GPU / NPU / CPU
    task_name: str
    data_type: str
    model_name: str
    model_type: str
    batch_size: int
    tp: int

    def _base(self, area: str) -> Path:
        return (
            self.output_dir / area / safe_component(self.device_label) / "precision_test"
            / safe_component(self.task_name) / safe_component(self.data_type)
            / safe_component(self.model_name or "model")
        )

    @property
    def results_dir(self) -> Path:
        return self._base("results")

    @property
    def debug_dir(self) -> Path:
        return self._base("debug")

    @property
    def logits_dir(self) -> Path:
        return self._base(DATA_AREA) / LOGITS_FOLDER

    @property
    def control_dir(self) -> Path:
        """The control arm of this run's dump (`control_dir_of(logits_dir)`)."""
        return control_dir_of(self.logits_dir)

    @property
    def stem(self) -> str:
        """`{task}_{model_type}_batch{bs}_tp{tp}`, modeltest's file-name stem."""
        return safe_component(f"{self.task_name}_{self.model_type}_batch{self.batch_size}_tp{self.tp}")

    @property
    def result_file(self) -> Path:
        return self.results_dir / f"{self.stem}_result.csv"

    @property
    def infer_results_file(self) -> Path:
        return self.results_dir / f"{self.stem}_infer_results.jsonl"

    @property
    def debug_file(self) -> Path:
        return self.debug_dir / f"{self.stem}_debug_info.csv"

    @property
    def provenance_file(self) -> Path:
        """The run's provenance beside the debug CSV (`store.provenance_path_for_csv`)."""
        from logitsdump.store import provenance_path_for_csv

        return provenance_path_for_csv(self.debug_file)

    @property
    def bad_case_file(self) -> Path:
        return self.debug_dir / f"{self.stem}_bad_case_debug_info.csv"

    def planned_paths(self) -> tuple[Path, ...]:
        """Every file this run may write (the logits folder with room for its longest file names),
        so `check_path_fits` can refuse a too long name before any work."""
        from logitsdump.fsutil import OUTPUT_NAME_ALLOWANCE

        return (self.result_file, self.infer_results_file, self.debug_file, self.bad_case_file,
                self.provenance_file, self.logits_dir / OUTPUT_NAME_ALLOWANCE,
                self.control_dir / OUTPUT_NAME_ALLOWANCE)


@dataclass(frozen=True)
class CaseOutcome:
    """One evaluated case, as the output files show it."""

    key: str
    subject: str
    query: str
    input_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    output_text: str
    test_result: Any
    golden_result: Any
    passed: bool | None
    pass_label: str


@dataclass(frozen=True)
class SubjectScore:
    subject: str
    total: int
    correct: int
    not_judged: int

    @property
    def accuracy(self) -> float:
        judged = self.total - self.not_judged
        return self.correct / judged if judged else 0.0


def subject_scores(outcomes: Sequence[CaseOutcome], subjects: Iterable[str]) -> list[SubjectScore]:
    """Accuracy per sub-dataset in subject_mapping order, plus a `total` row."""
    rows = []
    for subject in [*subjects, None]:
        chosen = [o for o in outcomes if subject is None or o.subject == subject]
        if subject is not None and not chosen:
            continue
        rows.append(
            SubjectScore(
                subject="total" if subject is None else subject,
                total=len(chosen),
                correct=sum(1 for o in chosen if o.passed),
                not_judged=sum(1 for o in chosen if o.passed is None),
            )
        )
    return rows


def write_debug_csv(layout: OutputLayout, outcomes: Sequence[CaseOutcome], path: Path | None = None) -> Path:
    """The seven-column debug CSV (lists as Python repr), to `path` (default: the layout's)."""
    rows = [
        (o.key, o.query, repr(list(o.input_token_ids)), repr(list(o.output_token_ids)),
         o.test_result, o.golden_result, o.pass_label)
        for o in outcomes
    ]
    write_csv(path or layout.debug_file, DEBUG_COLUMNS, rows)
    return layout.debug_file


def write_bad_case_csv(layout: OutputLayout, outcomes: Sequence[CaseOutcome], path: Path | None = None) -> Path:
    """pass_k tasks: `key,passed` for every case (keys like `HumanEval/3`)."""
    write_csv(path or layout.bad_case_file, BAD_CASE_COLUMNS, [(o.key, o.pass_label) for o in outcomes])
    return layout.bad_case_file


def write_result_file(layout: OutputLayout, scores: Sequence[SubjectScore], path: Path | None = None) -> Path:
    """Accuracy per sub-dataset and in total."""
    rows = [(s.subject, s.total, s.correct, s.not_judged, f"{s.accuracy:.4f}") for s in scores]
    write_csv(path or layout.result_file, RESULT_COLUMNS, rows)
    return layout.result_file


def write_infer_results(layout: OutputLayout, outcomes: Sequence[CaseOutcome], path: Path | None = None) -> Path:
    """One JSON line per case: key, subject, query, generated text, verdict."""
    with atomic_open(path or layout.infer_results_file, "w", encoding="utf-8", newline="") as handle:
        for o in outcomes:
            record = {"key": o.key, "subject": o.subject, "query": o.query, "output": o.output_text,
                      "test_result": _jsonable(o.test_result), "golden_result": _jsonable(o.golden_result),
                      "pass": o.pass_label}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return layout.infer_results_file


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def format_score_table(task_name: str, scores: Sequence[SubjectScore]) -> str:
    """A plain text table of accuracy per sub-dataset, for the terminal."""
    width = max([len("subject"), *(len(s.subject) for s in scores)])
    lines = [f"{task_name}: accuracy per sub-dataset", f"{'subject':<{width}}  {'cases':>5}  {'correct':>7}  accuracy"]
    for s in scores:
        note = f"  ({s.not_judged} not judged)" if s.not_judged else ""
        lines.append(f"{s.subject:<{width}}  {s.total:>5}  {s.correct:>7}  {s.accuracy:8.2%}{note}")
    return "\n".join(lines)
