"""Decoding batches of cases through the `Backend` protocol: generation, one forward pass, or a replay.

The evaluation loop hands a batch here and gets back, per case, the `Generation` the
task judges and the `Decoded` steps the dump records. Nothing here judges or writes,
and nothing names a framework.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from logitsdump.logs import get_logger
from logitsdump.runner import inputs
from logitsdump.runner.backends.base import Backend, Decoded, first_logits
from logitsdump.runner.dumping import prompt_sha256
from logitsdump.runner.tasks.base import Case, Generation, Task, is_forward_only, stop_rule

if TYPE_CHECKING:
    from logitsdump.runner.config import TaskConfig
    from logitsdump.runner.replay import ReplaySource
    from logitsdump.store import CaseInputs

log = get_logger("decoding")


@dataclass(frozen=True)
class Inferred:
    """One case after decoding: what the judge and the recorder read."""

    case: Case
    generation: Generation  # for the task's judge
    decoded: Decoded  # the kept raw steps and replay's own choices, for the dump
    inputs: CaseInputs | None = None  # what it fed the model, for the run's provenance


@dataclass(frozen=True)
class Decoder:
    """How this run decodes: the backend, the task and its YAML, and the dump's steps and replay."""

    backend: Backend
    task: Task
    task_config: TaskConfig
    keep_steps: int = 0  # steps of raw logits to keep per case (the dump's N; 0 outside a dump)
    replay: ReplaySource | None = None
    cut: CutPrompts = field(default_factory=lambda: CutPrompts())

    def decode(self, batch: Sequence[Case]) -> list[Inferred] | None:
        """Decode one batch; None when a replay has no golden tokens for its case (skipped)."""
        config = self.task_config
        fitted = [
            fit_input(self.backend.encode(c.query), config.requested_max_input_length, config.need_truncate_input)
            for c in batch
        ]
        for case, item in zip(batch, fitted, strict=True):
            self.cut.add(case, item)
        encoded = [item.ids for item in fitted]
        forward_only = is_forward_only(batch[0], config.need_logits)
        forced = None
        if self.replay is not None:  # a dump: batch size 1
            forced = self.replay.forced_tokens(batch[0], prompt_sha256(batch[0].query), self.keep_steps)
            if forced is None:
                return None
        limits = [c.max_new_tokens or config.requested_max_output_length for c in batch]
        replayed = self.replay is not None and forced is not None and not forward_only
        if replayed:
            decoded = [self.replay.decode(self.backend, encoded[0], forced, self.keep_steps)]
        elif forward_only:
            decoded = forward_as_decoded(self.backend, encoded)
        else:
            stops = [stop_rule(self.task, c, self.backend.decode) for c in batch]
            decoded = self.backend.greedy(encoded, max(limits), self.keep_steps, limits=limits, stops=stops)
        mode = inputs.FORWARD if forward_only else inputs.GENERATE
        return [self._inferred(c, item, result, limit, mode, replayed)
                for c, item, result, limit in zip(batch, fitted, decoded, limits, strict=True)]

    def warn_cut_prompts(self) -> None:
        """One WARNING for the task when some of its prompts were cut (call once decoding is over)."""
        self.cut.warn(self.task_config)

    def _inferred(self, case: Case, fitted: FittedInput, result: Decoded, limit: int, mode: str,
                  replayed: bool) -> Inferred:
        ids = fitted.ids
        text = self.backend.decode(result.output_ids)
        scored = continuation_logprobs(self.backend, fitted, case.continuation_from)
        generation = Generation(tuple(ids), tuple(result.output_ids), text, result.first_logits, scored)
        shots = case.data.get("shots")
        recorded = inputs.case_inputs(self.backend, case.query, ids, fitted.original_length, result.output_ids,
                                      max_new_tokens=limit, mode=mode, forced=replayed,
                                      shots=shots if isinstance(shots, (list, tuple)) else None)
        return Inferred(case, generation, result, recorded)


@dataclass(frozen=True)
class FittedInput:
    """A prompt's token ids as the model sees them, and where the original ids were cut."""

    ids: list[int]
    original_length: int
    cut_at: int = 0  # original position where the removed span begins (0: the front)

    @property
    def removed(self) -> int:
        return self.original_length - len(self.ids)

    def position(self, original: int) -> int:
        """Where original position `original` (not removed) lies in `ids`."""
        return original - min(max(original - self.cut_at, 0), self.removed)


@dataclass
class CutPrompts:
    """The prompts of one task that were longer than its limit: counted for one warning."""

    prompts: int = 0
    cut: int = 0
    longest: int = 0

    def add(self, case: Case, fitted: FittedInput) -> None:
        self.prompts += 1
        if fitted.removed:
            self.cut += 1
            self.longest = max(self.longest, fitted.original_length)
            log.debug("case %s: %d prompt tokens cut to %d", case.key, fitted.original_length, len(fitted.ids))

    def warn(self, config: TaskConfig) -> None:
        if not self.cut:
            return
        limit = config.requested_max_input_length
        kept = "their first and last halves (need_truncate_input)" if config.need_truncate_input else "their last"
        log.warning(
            "task %s: %d of %d prompts were longer than requested_max_input_length (%d tokens; the longest had %d) "
            "and were cut to %s %d tokens",
            config.task_name, self.cut, self.prompts, limit, self.longest, kept, limit,
        )


def batches(items: Sequence[Case], size: int, need_logits: bool = False) -> Iterator[Sequence[Case]]:
    """Consecutive cases, `size` at most, never mixing forward-only and generated cases."""
    batch: list[Case] = []
    for case in items:
        mode_changes = is_forward_only(case, need_logits) != is_forward_only(batch[0], need_logits) if batch else False
        if batch and (len(batch) == size or mode_changes):
            yield batch
            batch = []
        batch.append(case)
    if batch:
        yield batch


def forward_as_decoded(backend: Backend, encoded: Sequence[Sequence[int]]) -> list[Decoded]:
    """need_logits cases: one forward pass; the argmax is the one 'generated' token."""
    return [Decoded([int(row.argmax())], [row], first_logits(backend, [row])) for row in backend.last_logits(encoded)]


def continuation_logprobs(backend: Backend, fitted: FittedInput, prefix: str | None) -> tuple[float, ...]:
    """log P(ids[k] | ids[:k]) for each query token the model saw after `prefix` (none when prefix is None)."""
    if prefix is None:
        return ()
    ids = fitted.ids
    start = min(max(fitted.position(len(backend.encode(prefix))), 1), len(ids))
    if start >= len(ids):
        return ()
    scorer = getattr(backend, "token_logprobs", None)  # a server scores the query in one request
    if scorer is not None:
        return tuple(scorer(ids, start))
    logits = backend.last_logits([ids[:k] for k in range(start, len(ids))])
    positions = range(start, len(ids))
    return tuple(float(row.float().log_softmax(-1)[ids[k]]) for row, k in zip(logits, positions, strict=True))


def fit_input(ids: list[int], max_length: int, middle: bool) -> FittedInput:
    """At most `max_length` token ids, always ending with the prompt's last ones.

    As modeltest: its tokenizers cut on the left, keeping a prompt's end (Ascend/MindIE-LLM,
    examples/atb_models/atb_llm/models/base/router.py `get_tokenizer`, and the old
    tests/modeltest/base/model_test.py, both `truncation_side="left"`); with `need_truncate_input`
    (LongBench) it keeps the first and last halves (tests/modeltest/modeltest/task/longbench.py,
    there on decoded text, here on the ids).
    """
    if len(ids) <= max_length:
        return FittedInput(ids, len(ids))
    if middle:
        half = max_length // 2
        return FittedInput(ids[:half] + ids[len(ids) - (max_length - half):], len(ids), cut_at=half)
    return FittedInput(ids[len(ids) - max_length:], len(ids))
