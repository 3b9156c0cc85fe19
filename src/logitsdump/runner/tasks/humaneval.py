"""HumanEval: `human-eval.jsonl` (or `HumanEval.jsonl`) problems; the completion runs against
the problem's tests in a separate process (`runner.sandbox`)."""

from __future__ import annotations

import secrets
from pathlib import Path

from logitsdump.errors import DataError
from logitsdump.runner.config import TaskConfig
from logitsdump.runner.sandbox import require, run_python
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer
from logitsdump.runner.tasks.common import read_jsonl

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
#: The public file's name, accepted when the configured `human-eval.jsonl` is absent.
PUBLIC_NAME = "HumanEval.jsonl"
#: Seconds one completion may run (modeltest's value).
TIMEOUT_S = 3.0
#: Where a completion that only holds indented lines is cut (the last occurrence, as modeltest does).
END_WORDS = ("\ndef", "\nclass", "\n#", "\nassert", '\n"""', "\nprint", "\nif", "\n\n\n")


def clean_completion(text: str) -> str:
    """The function body only: cut at the first non-empty line that is not indented
    (a new `def`, `class`, `if __name__`, `print`, comment, ...); failing that, at the end words."""
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if line.strip() and line[0] not in " \t":
            return "\n".join(lines[:number])
    for word in END_WORDS:
        if word in text:
            text = text[: text.rfind(word)]
    return text


def build_program(problem: dict[str, str], completion: str, marker: str = "") -> str:
    """The script that is run: prompt, completion, tests, `check(entry_point)`, then `marker` printed."""
    program = f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"
    if marker:
        program += f"import sys as _sys\n_sys.__stdout__.write({marker!r})\n"
    return program


def run_problem(problem: dict[str, str], completion: str, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """(passed, status) of `completion` against the problem's tests, in a separate process.

    Passing needs exit status 0 and the end marker printed, so a completion that exits early passes nothing.
    """
    marker = f"<<logitsdump-done-{secrets.token_hex(8)}>>"
    result = run_python(build_program(problem, completion, marker), timeout_s, what="HumanEval")
    passed = result.passed and marker in result.stdout
    status = result.status if not result.passed or passed else "failed: exited before the tests ran"
    return passed, status


class HumanEvalTask:
    """Python function completion, scored pass@1; keys are the task ids (`HumanEval/N`)."""

    pass_labels: tuple[str, str] = ("True", "False")
    writes_bad_case_csv: bool = True

    def dataset_file(self, dataset_root: Path, subject: str) -> Path:
        """`<root>/<subject>`, or the public file name beside it when that is absent."""
        path = dataset_root / subject
        public = path.with_name(PUBLIC_NAME)
        if not path.is_file() and public.is_file():
            return public
        return path

    def load_cases(self, config: TaskConfig, dataset_root: Path) -> list[Case]:
        """Every problem of every sub-dataset; query = prompt stripped, reference = canonical solution.

        Refused in one line, before the model loads, where no sandbox can run the tests (`sandbox.require`)."""
        require("HumanEval")
        cases: list[Case] = []
        for subject in config.subjects:
            path = self.dataset_file(dataset_root, subject)
            what = f"HumanEval JSON lines ({subject} or {PUBLIC_NAME}): " + ", ".join(FIELDS)
            for line, row in read_jsonl(path, FIELDS, what):
                for name in FIELDS:
                    if not isinstance(row[name], str):
                        raise DataError(f"{path}, line {line}: field {name!r} must be a string")
                problem = {name: row[name] for name in FIELDS}
                index = len(cases)
                query = row["prompt"].strip()
                cases.append(Case(index, subject, row["task_id"], query, row["canonical_solution"], problem))
        return cases

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """Clean the completion and run it against the tests; test_result is the cleaned completion."""
        completion = clean_completion(generation.text)
        passed, _ = run_problem(dict(case.data), completion)
        return Judgement(passed, completion, case.reference)
