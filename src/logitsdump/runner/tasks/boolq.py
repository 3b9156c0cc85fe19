"""BoolQ: `dev.jsonl` rows (question, title, passage, answer), judged from the logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from logitsdump.errors import DataError
from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer
from logitsdump.runner.tasks.common import format_prompt, read_jsonl

FIELDS = ("question", "title", "passage", "answer")
#: As modeltest does, the "yes" / "no" ids are the last tokens of a phrase ending ": yes" / ": no"
#: (the leading space makes them the word tokens a model predicts after "Answer:").
YES_SAMPLE = "Is this the answer: yes"
NO_SAMPLE = "Is this the answer: no"


def choice_token_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """The ids of the "yes" and "no" tokens, as modeltest picks them."""
    return (
        tokenizer.encode(YES_SAMPLE, add_special_tokens=False)[-1],
        tokenizer.encode(NO_SAMPLE, add_special_tokens=False)[-1],
    )


class BoolQTask:
    """Yes/no questions; True when log-softmax("yes") > log-softmax("no") at the last position."""

    pass_labels: tuple[str, str] = ("True", "False")
    writes_bad_case_csv: bool = False

    def load_cases(self, config: TaskConfig, dataset_root: Path) -> list[Case]:
        """Every row of every sub-dataset; query = prompt.format(title=, text=question, passage=)."""
        cases: list[Case] = []
        for subject in config.subjects:
            path = dataset_root / subject
            for line, row in read_jsonl(path, FIELDS, "BoolQ JSON lines: " + ", ".join(FIELDS)):
                answer = row["answer"]
                if not isinstance(answer, bool):
                    raise DataError(
                        f"{path}, line {line}: field 'answer' must be true or false, not {answer!r}"
                    )
                title, passage = row["title"], row["passage"]
                query = format_prompt(config, title=title, text=row["question"], passage=passage)
                index = len(cases)
                cases.append(Case(index, subject, str(index), query, answer, {"line": line}))
        return cases

    def choice_tokens(self, case: Case, tokenizer: Tokenizer) -> dict[str, int]:
        """The tokens whose logits decide the answer."""
        yes, no = choice_token_ids(tokenizer)
        return {"yes": yes, "no": no}

    @staticmethod
    def pick_choice(logits: dict[str, float]) -> str:
        """"yes" only when its logit is the larger (a tie answers "no", as `judge`)."""
        return "yes" if logits["yes"] > logits["no"] else "no"

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """Compare the "yes" and "no" log-probabilities of `generation.first_logits`."""
        import torch

        logits: Any = generation.first_logits
        if logits is None:
            raise ValueError("BoolQ is judged from the logits, but the generation carries none")
        yes, no = choice_token_ids(tokenizer)
        logits = torch.as_tensor(logits).float()
        while logits.dim() > 1:  # [1, vocab] or [1, seq, vocab]: the last position
            logits = logits[-1]
        log_probs = torch.log_softmax(logits, dim=-1)
        answer = bool(log_probs[yes] > log_probs[no])
        return Judgement(answer == case.reference, answer, case.reference)
