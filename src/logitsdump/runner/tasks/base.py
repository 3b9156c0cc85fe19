"""What every task provides: its cases, and how to judge one generation.

A task module defines one class per `task_name` satisfying `Task`, and the
registry (`tasks/__init__.py`) maps the name to it. The evaluation loop only
talks to this interface, so adding a task never touches the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from logitsdump.runner.config import TaskConfig


@dataclass(frozen=True)
class Case:
    """One dataset row, ready to infer.

    `index` is the 0-based global row index across sub-datasets in
    subject_mapping order (per language for humanevalx): the number the
    bad-case list refers to and the `{key}` of logits file names. `key` is the
    debug-CSV key: `str(index)`, or `HumanEval/3`, `CPP/12`, ...
    """

    index: int
    subject: str
    key: str
    query: str
    reference: Any
    data: Mapping[str, Any] = field(default_factory=dict)
    #: How many tokens to generate for this case; None: the task YAML's requested_max_output_length
    #: (LongBench sets each sub-dataset's `maxlen`).
    max_new_tokens: int | None = None
    #: True: one forward pass, judged from the last logits; False: generate; None: the YAML's need_logits
    #: (TruthfulQA mixes both; LongBench generates although modeltest's YAML says need_logits: true).
    forward_only: bool | None = None
    #: Forward-only cases: the query's prefix after which every token is scored; the judge then gets
    #: the log-probability of each following query token in `Generation.continuation_logprobs`.
    continuation_from: str | None = None


@dataclass(frozen=True)
class Generation:
    """The model's answer to one case: token ids, text and the first step's raw logits."""

    input_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    text: str
    first_logits: Any = None  # torch.Tensor [vocab], float32, for need_logits judging
    #: log P(token | everything before it) for the query tokens after `Case.continuation_from`.
    continuation_logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class Judgement:
    """The verdict on one case, as the debug CSV shows it."""

    passed: bool | None  # None: could not be judged (e.g. a missing toolchain)
    test_result: Any
    golden_result: Any


class Tokenizer(Protocol):
    """The part of a tokenizer a task may use when judging."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class Task(Protocol):
    """One modeltest task (`task_name`).

    Optional members, read with the helpers below: `needs_tokenizer` (bool: `load_cases` then
    receives the model's tokenizer as `tokenizer=`, and cases are loaded after the model),
    `finished(case, text) -> bool` (a stopping rule on the text generated so far, checked after
    each token, as modeltest's code-completion stopping) and `choice_tokens(case, tokenizer) ->
    {label: token id}` (a task judged from the logits of its choices: which tokens).
    """

    #: `Correct`/`Wrong` for MMLU and C-Eval; `True`/`False` for the others.
    pass_labels: tuple[str, str]
    #: True for pass_k tasks, which also write `..._bad_case_debug_info.csv`.
    writes_bad_case_csv: bool

    def load_cases(self, config: TaskConfig, dataset_root: Path) -> list[Case]:
        """All rows of all sub-datasets, in global-index order. Raise DataError on bad files."""
        ...

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """Judge one generation."""
        ...


def pass_label(task: Task, passed: bool | None) -> str:
    """The `pass` cell of the debug CSV."""
    if passed is None:
        return "NotJudged"
    return task.pass_labels[0] if passed else task.pass_labels[1]


def needs_tokenizer(task: Task) -> bool:
    """Whether `task.load_cases` wants the model's tokenizer (NeedleBench, CMMLU)."""
    return bool(getattr(task, "needs_tokenizer", False))


def is_forward_only(case: Case, need_logits: bool) -> bool:
    """Whether `case` is judged from one forward pass rather than a generation."""
    return need_logits if case.forward_only is None else case.forward_only


def choice_logits(
    task: Task, case: Case, generation: Generation, tokenizer: Tokenizer
) -> list[dict[str, Any]] | None:
    """The logits the task judged `case` from, for tasks judged from their choices' logits (BoolQ's yes/no,
    CMMLU's letters; optional members `choice_tokens(case, tokenizer) -> {label: token id}` and
    `pick_choice({label: logit}) -> label`, default the first largest): `[{"label", "token", "logit",
    "picked"}, ...]`, the manifest's `store.EXTRA_CHOICES`; None for the other tasks or without logits."""
    choose = getattr(task, "choice_tokens", None)
    logits = generation.first_logits
    if choose is None or logits is None:
        return None
    row = logits.reshape(-1, logits.shape[-1])[-1]
    values = {label: float(row[token]) for label, token in choose(case, tokenizer).items()}
    pick = getattr(task, "pick_choice", None)
    picked = pick(values) if pick is not None else max(values, key=values.__getitem__)
    return [{"label": label, "token": int(token), "logit": values[label], "picked": label == picked}
            for label, token in choose(case, tokenizer).items()]


def stop_rule(task: Task, case: Case, decode: Any) -> Callable[[Sequence[int]], bool] | None:
    """The task's optional stopping rule for `case` as a test on the generated ids so far
    (`decode` turns ids into text), or None when the task has none."""
    finished = getattr(task, "finished", None)
    if finished is None:
        return None
    return lambda output_ids: bool(finished(case, decode(output_ids)))
