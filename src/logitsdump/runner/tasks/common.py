"""Helpers shared by several tasks: reading dataset files, and the multiple-choice
tasks (MMLU and C-Eval, few-shot and zero-shot) that differ only in file layout.

Every dataset problem is raised as a one-line `DataError` naming the file, and the
line and field where there is one.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from logitsdump.errors import ConfigError, DataError
from logitsdump.fsutil import check_regular, open_input
from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file; DataError saying what was expected otherwise."""
    check_regular(path, "dataset file")  # a FIFO or a device: one line, never a read that blocks
    if not path.is_file():
        raise DataError(f"dataset file not found: {path} (expected {what})")
    return path


def read_jsonl(path: Path, required: Sequence[str], what: str) -> list[tuple[int, dict[str, Any]]]:
    """The objects of a JSON-lines file with their 1-based line numbers; blank lines are skipped."""
    require_file(path, what)
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        with open_input(path, "dataset file", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}, line {number}: expected a JSON object, found {type(row).__name__}"
                    )
                missing = [name for name in required if name not in row]
                if missing:
                    raise DataError(f"{path}, line {number}: missing field {missing[0]!r}")
                rows.append((number, row))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read dataset file {path}: {err}") from None
    return rows


def read_csv_rows(path: Path, min_columns: int, what: str) -> list[tuple[int, list[str]]]:
    """The rows of a CSV file (no header handling) with the line number where each starts.

    Every row must have at least `min_columns` cells; fully empty rows are skipped.
    """
    require_file(path, what)
    rows: list[tuple[int, list[str]]] = []
    try:
        with open_input(path, "dataset file", encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            start = 1
            for row in reader:
                if any(cell.strip() for cell in row):
                    if len(row) < min_columns:
                        raise DataError(
                            f"{path}, line {start}: expected at least {min_columns} columns, found {len(row)}"
                        )
                    rows.append((start, row))
                start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path}: not valid CSV ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read dataset file {path}: {err}") from None
    return rows


#: How to get the optional parquet reader (the `parquet` extra of pyproject.toml).
PARQUET_INSTALL = "pip install pyarrow (or: pip install 'logitsdump[parquet]')"


def read_parquet_rows(path: Path, required: Sequence[str], what: str) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a parquet file as dicts, with their 1-based row numbers.

    Read with pyarrow alone (no pandas), imported only here: it is optional, and
    a missing one is a one-line DataError saying how to install it.
    """
    require_file(path, what)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet files needs pyarrow; {PARQUET_INSTALL}") from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]})") from None
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (expected {what})")
    return list(enumerate(table.to_pylist(), start=1))


def format_prompt(config: TaskConfig, *args: Any, **kwargs: Any) -> str:
    """`config.prompt.format(...)`, with a ConfigError when its placeholders do not fit."""
    try:
        return config.prompt.format(*args, **kwargs)
    except (IndexError, KeyError, ValueError) as err:
        raise ConfigError(
            f"task config {config.source or config.task_name}: 'prompt' cannot be filled "
            f"({type(err).__name__}: {err}); check its {{}} placeholders"
        ) from None


# --- multiple choice (MMLU, C-Eval) ----------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceRow:
    """One multiple-choice question, and where it came from."""

    question: str
    options: tuple[str, ...]
    answer: str
    line: int


def subject_words(subject: str) -> str:
    """modeltest's few-shot subject text: each `_`-separated word preceded by a space.

    `college_biology` -> ` college biology` (the leading space is modeltest's, after the
    original MMLU code, and changes the prompt, so it is kept).
    """
    return "".join(" " + word for word in subject.split("_"))


def format_question(row: ChoiceRow, letters: Sequence[str], answer: bool) -> str:
    """`Q\\nA. a\\nB. b...\\nAnswer:`, plus ` X\\n\\n` for a worked example."""
    text = row.question + "".join(
        f"\n{letter}. {option}" for letter, option in zip(letters, row.options, strict=True)
    )
    text += "\nAnswer:"
    return text + f" {row.answer}\n\n" if answer else text


def first_letter(text: str) -> str:
    """The few-shot prediction: the first character of the generation after leading space.

    modeltest answers "-1" for an empty generation and crashes on an all-space one; both give "-1" here.
    """
    stripped = text.lstrip()
    return stripped[0] if stripped else "-1"


def _choice_patterns(opts: str) -> list[str]:
    """modeltest's answer-finding patterns for zero-shot generations, most specific first."""
    o = f"[{opts}]"
    ends = r"[。\.]?$"
    return [
        # Chinese answer phrases: 答案是X, 答案：X, 答案应该是X, 选X, 故选X, ...
        rf"答案是?\s?({o})",
        rf"答案是?\s?：({o})",
        rf"答案是?\s?:({o})",
        rf"答案应该?是\s?({o})",
        rf"答案应该?选\s?({o})",
        rf"答案为\s?({o})",
        rf"答案选\s?({o})",
        rf"选择?\s?({o})",
        rf"故选?\s?({o})",
        rf"只有选?项?\s?({o})\s?是?对",
        rf"只有选?项?\s?({o})\s?是?错",
        rf"只有选?项?\s?({o})\s?不?正确",
        rf"只有选?项?\s?({o})\s?错误",
        rf"说法不?对选?项?的?是\s?({o})",
        rf"说法不?正确选?项?的?是\s?({o})",
        rf"说法错误选?项?的?是\s?({o})",
        rf"({o})\s?是正确的",
        rf"({o})\s?是正确答案",
        rf"选项\s?({o})\s?正确",
        rf"所以答\s?({o})",
        rf"所以\s?({o}[.。$]?$)",
        rf"所有\s?({o}[.。$]?$)",
        rf"[\s，：:,]({o})[。，,\.]?$",
        rf"[\s，,：:][故即]({o}){ends}",
        rf"[\s，,：:]因此({o}){ends}",
        rf"[是为。]\s?({o}){ends}",
        rf"因此\s?({o}){ends}",
        rf"显然\s?({o}){ends}",
        r"答案是\s?(\S+)(?:。|$)",
        r"答案应该是\s?(\S+)(?:。|$)",
        r"答案为\s?(\S+)(?:。|$)",
        # English answer phrases
        rf"[Tt]he answer is \(?({o})\)?",
        rf"[Tt]he answer is option \(?({o})\)?",
        rf"[Tt]he correct answer is \(?({o})\)?",
        rf"[Tt]he correct answer is option \(?({o})\)?",
        rf"[Tt]he answer to the question is \(?({o})\)?",
        # a bare letter
        rf"^选项\s?({o})",
        rf"^({o})\s?选?项",
        rf"(\s|^){o}[\s。，,：:\.$]",
        rf"(\s|^){o}(\s|$)",
        r"1.\s?(.*?)$",
        rf"1.\s?({o})[.。$]?$",
        # last resort: any letter
        rf"({o}):",
        o,
    ]


_PATTERN_CACHE: dict[str, list[re.Pattern[str]]] = {}


def extract_choice(text: str, options: str = "ABCD") -> str:
    """The zero-shot prediction: the option letter found by the first pattern that matches.

    As in modeltest, the answer is the first option (in `options` order) contained in the
    whole matched text; a match holding no option moves on to the next pattern; "" when none.
    (modeltest lost two patterns, `故选X` and `只有X是对`, to a missing comma; both work here.)
    """
    patterns = _PATTERN_CACHE.get(options)
    if patterns is None:
        patterns = _PATTERN_CACHE[options] = [re.compile(p) for p in _choice_patterns(re.escape(options))]
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            found = match.group(0)
            for letter in options:
                if letter in found:
                    return letter
    return ""


class ChoiceTask:
    """The common part of MMLU and C-Eval: reading the question CSVs and the subject loop.

    Subclasses set `test_folder` (`test`/`val`) and `skip` (1 for C-Eval's header row
    and id column, 0 for MMLU) and build the query.
    """

    pass_labels: tuple[str, str] = ("Correct", "Wrong")
    writes_bad_case_csv: bool = False
    test_folder: ClassVar[str] = "test"
    skip: ClassVar[int] = 0

    def read_rows(self, root: Path, subject: str, folder: str, n_options: int) -> list[ChoiceRow]:
        """The questions of `<root>/<folder>/<subject>_<folder>.csv`."""
        path = root / folder / f"{subject}_{folder}.csv"
        width = self.skip + n_options + 2
        what = f"a CSV file of {'id, ' if self.skip else ''}question, {n_options} options and the answer"
        rows = read_csv_rows(path, width, what)[self.skip :]
        result = []
        for line, cells in rows:
            cells = cells[self.skip :]
            result.append(
                ChoiceRow(cells[0], tuple(cells[1 : n_options + 1]), cells[n_options + 1].strip(), line)
            )
        return result

    def build_queries(self, config: TaskConfig, root: Path, subject: str, rows: list[ChoiceRow]) -> list[str]:
        """One query per test row of `subject`."""
        raise NotImplementedError

    def letters(self, config: TaskConfig) -> tuple[str, ...]:
        """The option letters (the task's `choices`, A-D by default)."""
        return tuple(config.choices) or ("A", "B", "C", "D")

    def load_cases(self, config: TaskConfig, dataset_root: Path) -> list[Case]:
        """Every test row of every subject, in subject_mapping order."""
        cases: list[Case] = []
        letters = self.letters(config)
        for subject in config.subjects:
            rows = self.read_rows(dataset_root, subject, self.test_folder, len(letters))
            queries = self.build_queries(config, dataset_root, subject, rows)
            shots = self.shot_labels(config, dataset_root, subject)
            for row, query in zip(rows, queries, strict=True):
                index = len(cases)
                data = {"options": "".join(letters), "line": row.line, "shots": shots}
                cases.append(Case(index, subject, str(index), query, row.answer, data))
        return cases

    def shot_labels(self, config: TaskConfig, root: Path, subject: str) -> tuple[str, ...]:
        """Which worked examples a query of `subject` holds (`dev/<file>:<line>`; none for zero-shot)."""
        return ()


class FewShotChoiceTask(ChoiceTask):
    """`shots` worked dev examples, then the question; the answer is the first generated letter."""

    def shot_rows(self, config: TaskConfig, root: Path, subject: str) -> list[ChoiceRow]:
        """The first `shots` dev examples of `subject`."""
        if not config.shots:
            return []
        dev = self.read_rows(root, subject, "dev", len(self.letters(config)))
        if len(dev) < config.shots:
            raise DataError(
                f"{root / 'dev' / f'{subject}_dev.csv'}: has {len(dev)} examples, but shots is {config.shots}"
            )
        return dev[: config.shots]

    def shot_labels(self, config: TaskConfig, root: Path, subject: str) -> tuple[str, ...]:
        return tuple(f"dev/{subject}_dev.csv:{row.line}" for row in self.shot_rows(config, root, subject))

    def build_queries(self, config: TaskConfig, root: Path, subject: str, rows: list[ChoiceRow]) -> list[str]:
        letters = self.letters(config)
        shots = self.shot_rows(config, root, subject)
        head = format_prompt(config, subject_words(subject))
        head += "".join(format_question(row, letters, answer=True) for row in shots)
        return [head + format_question(row, letters, answer=False) for row in rows]

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """Correct when the first non-space character is the answer letter."""
        predicted = first_letter(generation.text)
        return Judgement(predicted == case.reference, predicted, case.reference)


class ZeroShotChoiceTask(ChoiceTask):
    """The task prompt filled with subject, question and four options; the letter is found by regex."""

    def subject_name(self, config: TaskConfig, subject: str) -> str:
        """The subject text of the zero-shot prompt."""
        raise NotImplementedError

    def letters(self, config: TaskConfig) -> tuple[str, ...]:
        return ("A", "B", "C", "D")  # the zero-shot prompts have exactly four option slots

    def build_queries(self, config: TaskConfig, root: Path, subject: str, rows: list[ChoiceRow]) -> list[str]:
        name = self.subject_name(config, subject)
        return [format_prompt(config, name, row.question, *row.options) for row in rows]

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """Correct when the letter found in the generation is the answer."""
        predicted = extract_choice(generation.text, str(case.data.get("options", "ABCD")))
        return Judgement(predicted == case.reference, predicted, case.reference)


def mapping_value(config: TaskConfig, subject: str, field: str) -> str:
    """`subject_mapping[subject][field]`, with a ConfigError naming the file when absent."""
    entry = config.subject_mapping.get(subject)
    if not isinstance(entry, Mapping) or field not in entry:
        raise ConfigError(
            f"task config {config.source or config.task_name}: subject_mapping.{subject} needs a {field!r}"
        )
    return str(entry[field])
