"""GPQA: four-choice science questions from `<root>/<subject_mapping value's name>` (modeltest's
YAML: `diamond: {name: gpqa_diamond.csv}`), the public GPQA CSV with its header row.

As modeltest reads it: the data rows' columns 7 to 11 (0-based) are the question, the correct
answer and the three incorrect ones. The options are rotated by the row's position in its file, so
that the correct one is A, D, C, B, A, ... (rows 0, 1, 2, 3, 4, ...). The query is the YAML's
`prompt` filled with the question and the four options, stripped. The answer letter is found by
modeltest's GPQA patterns ("The correct answer is (X)", `ANSWER: X`, `\\boxed{X}`, Chinese answer
phrases, then a bare letter); test_result is that letter ("" when none).

modeltest's `gpqa.yaml` single-quotes its prompt, so its `\\n` are a backslash and an `n`, not line
breaks (YAML single-quoted strings have no escapes); modeltest's runner sends them so, and so do
we: the query is what the YAML says (a warning says so). Our shipped YAML double-quotes the prompt,
giving the line breaks modeltest's older harness (`base/model_test.py`) used.
modeltest bug, not copied: a missing comma glues its `故选X` and `只有X是对` patterns into one that
never matches; both work here.
"""

from __future__ import annotations

import re
from pathlib import Path

from logitsdump.errors import DataError
from logitsdump.logs import get_logger
from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer
from logitsdump.runner.tasks.common import format_prompt, mapping_value, read_csv_rows

log = get_logger("tasks.gpqa")

LETTERS = "ABCD"
#: The 0-based columns of the question, the correct answer and the three incorrect answers.
FIRST_COLUMN = 7
HEADER = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
#: For a row's position modulo 4: the order of (correct, incorrect 1, 2, 3) as options A-D, and the answer.
ROTATIONS = (((0, 1, 2, 3), "A"), ((1, 2, 3, 0), "D"), ((2, 3, 0, 1), "C"), ((3, 0, 1, 2), "B"))


def arrange(position: int, correct: str, incorrect: tuple[str, str, str]) -> tuple[tuple[str, ...], str]:
    """The four options of the row at `position` (0-based in its file) and the correct letter."""
    answers = (correct, *incorrect)
    order, letter = ROTATIONS[position % 4]
    return tuple(answers[i] for i in order), letter


def _patterns(o: str) -> list[str]:
    """modeltest's GPQA answer patterns, most specific first; `o` is a character class such as `[ABCD]`."""
    return [
        rf"答案是?\s*({o})",
        rf"答案是?\s*：\s*({o})",
        rf"答案是?\s*:\s*({o})",
        rf"答案选项应?该?是\s*({o})",
        rf"答案选项应?该?为\s*({o})",
        rf"答案应该?是\s*({o})",
        rf"答案应该?选\s*({o})",
        rf"答案选项为?\s*：\s*({o})",
        rf"答案选项为?\s+\(?\*?\*?({o})\*?\*?\)?",
        rf"答案选项是?\s*:\s*({o})",
        rf"答案为\s*({o})",
        rf"答案选\s*({o})",
        rf"选择?\s*({o})",
        rf"故选?\s*({o})",
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
        rf"[\s，,：:][故即]({o})[。\.]?$",
        rf"[\s，,：:]因此({o})[。\.]?$",
        rf"[是为。]\s?({o})[。\.]?$",
        rf"因此\s?({o})[。\.]?$",
        rf"显然\s?({o})[。\.]?$",
        r"答案是\s?(\S+)(?:。|$)",
        r"答案应该是\s?(\S+)(?:。|$)",
        r"答案为\s?(\S+)(?:。|$)",
        rf"(?i)ANSWER\s*:\s*({o})",
        rf"[Tt]he answer is:?\s+\(?({o})\)?",
        rf"[Tt]he answer is:?\s+\(?\*?\*?({o})\*?\*?\)?",
        rf"[Tt]he answer is option:?\s+\(?({o})\)?",
        rf"[Tt]he correct answer is:?\s+\(?({o})\)?",
        rf"[Tt]he correct answer is option:?\s+\(?({o})\)?",
        rf"[Tt]he correct answer is:?.*?boxed{{({o})}}",
        rf"[Tt]he correct option is:?.*?boxed{{({o})}}",
        rf"[Tt]he correct answer option is:?.*?boxed{{({o})}}",
        rf"[Tt]he answer to the question is:?\s+\(?({o})\)?",
        rf"^选项\s?({o})",
        rf"^({o})\s?选?项",
        rf"(\s|^){o}[\s。，,：:\.$]",
        r"1.\s?(.*?)$",
        rf"1.\s?({o})[.。$]?$",
        # the "cushion": any letter followed by a colon, then any letter
        rf"({o}):",
        rf"({o})",
    ]


_PATTERNS = [re.compile(p, re.DOTALL) for p in _patterns(f"[{LETTERS}]")]


def extract_letter(text: str) -> str:
    """The answer letter of a generation, "" when none is found.

    As modeltest: the first pattern that matches wins if its first group (or, when that is
    empty, the whole match) holds an option letter, the first of A-D it holds.
    """
    text = text.strip()
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match:
            found = match.group(1) or match.group(0)
            for letter in LETTERS:
                if letter in found:
                    return letter
    return ""


class GPQATask:
    """Four choices, options rotated as modeltest does; judged by the letter found in the generation."""

    pass_labels: tuple[str, str] = ("Correct", "Wrong")
    writes_bad_case_csv: bool = False

    def read(self, path: Path) -> list[tuple[int, str, tuple[str, str, str, str]]]:
        """(line, question, (correct, incorrect 1, 2, 3)) of each data row; the header row is skipped."""
        width = FIRST_COLUMN + len(HEADER)
        rows = read_csv_rows(path, width, f"the GPQA CSV: a header row, then {', '.join(HEADER)} in columns 8-12")
        if not rows:
            raise DataError(f"{path}: empty file")
        header = tuple(cell.strip() for cell in rows[0][1][FIRST_COLUMN:width])
        if header != HEADER:
            log.warning("%s: columns 8-12 are named %s, not GPQA's %s; read as GPQA's", path, header, HEADER)
        result = []
        for line, cells in rows[1:]:
            question, correct, *incorrect = cells[FIRST_COLUMN:width]
            result.append((line, question, (correct, incorrect[0], incorrect[1], incorrect[2])))
        return result

    def load_cases(self, config: TaskConfig, dataset_root: Path) -> list[Case]:
        """Every row of every sub-dataset (file: the subject_mapping value's `name`)."""
        if "\\n" in config.prompt:
            log.warning("task config %s: the prompt holds a backslash and an n, not line breaks "
                        "(single-quoted YAML); sent as written, as modeltest does", config.source)  # fmt: skip
        cases: list[Case] = []
        for subject in config.subjects:
            path = dataset_root / mapping_value(config, subject, "name")
            for position, (line, question, (correct, *incorrect)) in enumerate(self.read(path)):
                options, letter = arrange(position, correct, (incorrect[0], incorrect[1], incorrect[2]))
                query = format_prompt(config, question, *options).strip()
                index = len(cases)
                data = {"line": line, "file": path.name}
                cases.append(Case(index, subject, str(index), query, letter, data))
        return cases

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """Correct when the extracted letter is the answer; test_result is the letter."""
        predicted = extract_letter(generation.text)
        return Judgement(predicted == case.reference, predicted, case.reference)
