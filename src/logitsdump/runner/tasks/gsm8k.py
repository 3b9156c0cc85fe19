"""GSM8K: `GSM8K.jsonl` rows (question, answer ending `#### n`); the query is the question."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer
from logitsdump.runner.tasks.common import read_jsonl

FIELDS = ("question", "answer")
TOLERANCE = Decimal("1e-4")

# A number: optional sign, then 1,234,567-style groups or plain digits, then an optional
# fraction; or a bare fraction (.5). Not part of a longer digit run.
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?!\d)")


def last_number(text: str) -> str | None:
    """The last number in `text`, commas and `+` removed (`-1,234.5` -> `-1234.5`); None if none."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "").replace("+", "") if found else None


def numbers_equal(golden: str | None, predicted: str | None) -> bool:
    """Decimal comparison with an absolute tolerance of 1e-4."""
    if golden is None or predicted is None:
        return False
    try:
        return abs(Decimal(golden) - Decimal(predicted)) <= TOLERANCE
    except (InvalidOperation, ArithmeticError):
        return False


class GSM8KTask:
    """Grade-school maths; correct when the generation's last number equals the answer's."""

    pass_labels: tuple[str, str] = ("True", "False")
    writes_bad_case_csv: bool = False

    def load_cases(self, config: TaskConfig, dataset_root: Path) -> list[Case]:
        """Every row of every sub-dataset; the query is the question as it is."""
        cases: list[Case] = []
        for subject in config.subjects:
            rows = read_jsonl(dataset_root / subject, FIELDS, "GSM8K JSON lines: question, answer")
            for line, row in rows:
                index = len(cases)
                query, answer = str(row["question"]), str(row["answer"])
                cases.append(Case(index, subject, str(index), query, answer, {"line": line}))
        return cases

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """test_result is the generation (left-stripped, "-1" if empty), golden_result the answer."""
        completion = generation.text.lstrip() if generation.text else "-1"
        passed = numbers_equal(last_number(str(case.reference)), last_number(completion))
        return Judgement(passed, completion, case.reference)
