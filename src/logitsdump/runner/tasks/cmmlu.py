"""CMMLU: Chinese multiple choice, judged from the last-position logits of the option letters.

Files (modeltest's layout): `<root>/test/{subject}.csv` and, for shots, `<root>/dev/{subject}.csv`,
each with a header row and an index column: `,Question,A,B,C,D,Answer`. subject_mapping values
carry `name_en2zh` (the Chinese subject name put in the prompt).

Query: `以下是关于{name_en2zh}的单项选择题，请直接给出正确答案的选项。\\n\\n` (the YAML's `prompt`, or this
text when it is empty), the shots, then `题目：{question}\\nA. a\\nB. b\\nC. c\\nD. d\\n答案是：`. As in
modeltest, when head and question exceed 2048 tokens the query is the question part alone, and shots
are dropped, longest first, until they fit. The prediction is the option whose letter token has the
largest logit; test_result is that letter.

modeltest bug, not copied: with `shots` > 0 its examples lose their question column and shift the
options (`题目：` is followed by option A); here the examples are whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from logitsdump.errors import DataError
from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer
from logitsdump.runner.tasks.common import format_prompt, mapping_value, read_csv_rows

DEFAULT_PROMPT = "以下是关于{}的单项选择题，请直接给出正确答案的选项。\n\n"
#: modeltest's token budget for head + shots + question.
MAX_PROMPT_TOKENS = 2048


def format_example(question: str, options: tuple[str, ...], letters: tuple[str, ...], answer: str | None) -> str:
    """`题目：Q\\nA. a...\\n答案是：`, plus `X\\n\\n` for a worked example."""
    text = "题目：" + question + "".join(f"\n{x}. {option}" for x, option in zip(letters, options, strict=True))
    text += "\n答案是："
    return text + f"{answer}\n\n" if answer is not None else text


def choice_token_id(tokenizer: Any, letter: str) -> int:
    """The id of an option letter's token (modeltest: `convert_tokens_to_ids`)."""
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is not None:
        token_id = convert(letter)
        unknown = getattr(tokenizer, "unk_token_id", None)
        if isinstance(token_id, int) and token_id != unknown:
            return token_id
    return tokenizer.encode(letter, add_special_tokens=False)[-1]


class CMMLUTask:
    """67 subjects in modeltest's YAML; one forward pass per question."""

    pass_labels: tuple[str, str] = ("True", "False")
    writes_bad_case_csv: bool = False
    needs_tokenizer: bool = True

    def letters(self, config: TaskConfig) -> tuple[str, ...]:
        return tuple(config.choices) or ("A", "B", "C", "D")

    def read_rows(self, path: Path, letters: tuple[str, ...]) -> list[tuple[int, str, tuple[str, ...], str]]:
        """(line, question, options, answer) of each data row (the header row is skipped)."""
        width = len(letters) + 3
        rows = read_csv_rows(path, width, f"a CSV file with a header row: ,Question,{','.join(letters)},Answer")
        result = []
        for line, cells in rows[1:]:
            answer = cells[len(letters) + 2].strip()
            if answer not in letters:
                raise DataError(f"{path}, line {line}: answer must be one of {', '.join(letters)}, found {answer!r}")
            result.append((line, cells[1], tuple(cells[2 : len(letters) + 2]), answer))
        return result

    def load_cases(self, config: TaskConfig, dataset_root: Path, tokenizer: Tokenizer | None = None) -> list[Case]:
        """Every test row of every subject, in subject_mapping order."""
        letters = self.letters(config)
        cases: list[Case] = []
        for subject in config.subjects:
            name = mapping_value(config, subject, "name_en2zh")
            head = format_prompt(config, name) if config.prompt else DEFAULT_PROMPT.format(name)
            shots: list[str] = []
            if config.shots:
                dev = self.read_rows(dataset_root / "dev" / f"{subject}.csv", letters)
                if len(dev) < config.shots:
                    dev_path = dataset_root / "dev" / f"{subject}.csv"
                    raise DataError(f"{dev_path}: has {len(dev)} examples, but shots is {config.shots}")
                shots = [format_example(q, o, letters, a) for _, q, o, a in dev[: config.shots]]
            for line, question, options, answer in self.read_rows(dataset_root / "test" / f"{subject}.csv", letters):
                end = format_example(question, options, letters, None)
                query = self.fit(head, shots, end, tokenizer)
                index = len(cases)
                cases.append(Case(index, subject, str(index), query, answer, {"line": line, "letters": letters}))
        return cases

    @staticmethod
    def fit(head: str, shots: list[str], end: str, tokenizer: Tokenizer | None) -> str:
        """modeltest's 2048-token rule (skipped without a tokenizer, as modeltest does)."""
        if tokenizer is None:
            return head + "".join(shots) + end
        base = len(tokenizer.encode(head)) + len(tokenizer.encode(end))
        if base > MAX_PROMPT_TOKENS:
            return end
        sized = [(shot, len(tokenizer.encode(shot))) for shot in shots]
        while sized and sum(n for _, n in sized) >= MAX_PROMPT_TOKENS - base:
            longest = max(n for _, n in sized)
            sized = [(shot, n) for shot, n in sized if n != longest]
        return head + "".join(shot for shot, _ in sized) + end

    def choice_tokens(self, case: Case, tokenizer: Tokenizer) -> dict[str, int]:
        """The option letters' tokens, whose logits decide the answer."""
        letters = tuple(case.data.get("letters", ("A", "B", "C", "D")))
        return {letter: choice_token_id(tokenizer, letter) for letter in letters}

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """The option letter with the largest logit against the answer."""
        logits = generation.first_logits
        if logits is None:
            raise ValueError("CMMLU is judged from the logits, but the generation carries none")
        letters = tuple(case.data.get("letters", ("A", "B", "C", "D")))
        values = [float(logits.reshape(-1, logits.shape[-1])[-1][choice_token_id(tokenizer, x)]) for x in letters]
        predicted = letters[max(range(len(values)), key=values.__getitem__)]
        return Judgement(predicted == case.reference, predicted, case.reference)
