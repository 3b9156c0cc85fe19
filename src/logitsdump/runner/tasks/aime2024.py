"""AIME 2024: `<root>/aime_2024_problems.parquet` (columns `Problem`, `Answer`; the public file also
has `ID` and `Solution`), long reasoning generations judged by their last number.

Query (modeltest's): the problem, then `\\nPlease reason step by step, and put your final answer
within \\boxed{}.` Answer extraction (modeltest's): when the generation holds no `boxed{`, its last
line is dropped (it may have been cut by the length limit); the prediction is then the last number
left, commas and `+` removed. It is correct when it equals the answer within 1e-4 (Decimal).
"""

from __future__ import annotations

import re
from pathlib import Path

from logitsdump.errors import DataError
from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer
from logitsdump.runner.tasks.common import read_parquet_rows
from logitsdump.runner.tasks.gsm8k import numbers_equal

COLUMNS = ("Problem", "Answer")
INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."
#: modeltest's number pattern: optional sign, then 0, 1,234-style groups or digits, then a fraction.
_NUMBER = re.compile(r"([+-])?(?=([0-9]|\.[0-9]))(0|([1-9](\d{0,2}(,\d{3})*)|\d*))?(\.\d*)?(?=\D|$)")


def drop_last_line(text: str) -> str:
    """`text` without what follows its last line break (unchanged when it has none)."""
    cut = text.rfind("\n")
    return text if cut == -1 else text[:cut]


def extract_answer(completion: str) -> str | None:
    """The predicted number of a generation, as modeltest finds it; None when there is none."""
    text = completion if "boxed{" in completion else drop_last_line(completion)
    found = [match.group() for match in _NUMBER.finditer(text)]
    return found[-1].replace(",", "").replace("+", "").strip() if found else None


class AIME2024Task:
    """Competition maths; correct when the extracted number equals the `Answer` column."""

    pass_labels: tuple[str, str] = ("True", "False")
    writes_bad_case_csv: bool = False

    def load_cases(self, config: TaskConfig, dataset_root: Path) -> list[Case]:
        """Every row of every parquet sub-dataset, in file order."""
        cases: list[Case] = []
        for subject in config.subjects:
            path = dataset_root / subject
            for number, row in read_parquet_rows(path, COLUMNS, "an AIME parquet file: Problem, Answer"):
                problem, answer = row["Problem"], row["Answer"]
                if not isinstance(problem, str) or not problem.strip():
                    raise DataError(f"{path}, row {number}: 'Problem' must be a non-empty text")
                if answer is None or (isinstance(answer, str) and not answer.strip()):
                    raise DataError(f"{path}, row {number}: 'Answer' is empty")
                index = len(cases)
                data = {"row": number, "id": str(row.get("ID", ""))}
                cases.append(Case(index, subject, str(index), problem + INSTRUCTION, answer, data))
        return cases

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """test_result is the generation (left-stripped, "-1" if empty), golden_result the answer."""
        completion = generation.text.lstrip() if generation.text else "-1"
        passed = numbers_equal(str(case.reference).strip(), extract_answer(completion))
        return Judgement(passed, completion, case.reference)
