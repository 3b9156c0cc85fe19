"""Re-running chosen cases through the runner, in chosen batches (for the probe and the ablation).

The model loads once (`Rerunner`); each run decodes batches of the task's cases through the runner's
own `decoding.Decoder`, so a case computes exactly as in `logitsdump eval`, and the task judges it.
A flipped case "at batch size N among other cases" is run in the batch the evaluation put it in:
the task's cases in dataset order, cut into batches of N (`batches_with`).
torch and the framework are imported when the model loads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from logitsdump.badcase import normalise_passed, read_key_rows
from logitsdump.errors import ConfigError, DataError
from logitsdump.logs import get_logger
from logitsdump.runner.config import ModelConfig, TaskConfig, load_model_config, load_task_config, resolve_dataset_root
from logitsdump.runner.tasks.base import Case

log = get_logger("triage")


@dataclass(frozen=True)
class FlippedCase:
    """A bad case of bcanalyze's CSV: its key and what each side's evaluation said (when the CSV tells)."""

    key: str
    golden_pass: str | None = None
    test_pass: str | None = None
    golden_output: str | None = None


def read_flipped(path: str | os.PathLike[str]) -> list[FlippedCase]:
    """The cases of a bad-case CSV (bcanalyze's columns `passed_golden`, `passed_test`, ...)."""
    rows = read_key_rows(path)
    return [FlippedCase(row.cells["key"], _passed(row.cells, "passed_golden"), _passed(row.cells, "passed_test"),
                        _cell(row.cells, "output_token_ids_golden")) for row in rows]


def _cell(cells: Mapping[str, str], name: str) -> str | None:
    value = cells.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _passed(cells: Mapping[str, str], name: str) -> str | None:
    value = _cell(cells, name)
    return normalise_passed(value) if value is not None else None


@dataclass(frozen=True)
class Outcome:
    """One case of one run: its tokens, the task's verdict (as bcanalyze normalises it: true, false,
    notjudged), and the first kept steps' raw logits."""

    key: str
    output_ids: tuple[int, ...]
    pass_label: str
    #: float32 tensors [vocab] of the first kept steps (on the CPU).
    step_logits: tuple[Any, ...] = ()


class Rerunner:
    """A model loaded with the runner's backend and one task's cases."""

    def __init__(self, model_config: ModelConfig, task_config: TaskConfig, device: str = "auto") -> None:
        from logitsdump.runner import backends
        from logitsdump.runner.config import check_model_folder
        from logitsdump.runner.device import choose_device
        from logitsdump.runner.tasks import get_task
        from logitsdump.runner.tasks.base import needs_tokenizer

        self.model_config = model_config
        self.task_config = task_config
        self.task = get_task(task_config.task_name)
        backend_class = backends.backend_class(model_config.requested_gpu_framework)
        check_model_folder(model_config)
        root = resolve_dataset_root(task_config)
        cases = [] if needs_tokenizer(self.task) else self.task.load_cases(task_config, root)
        self.device = choose_device(device)
        self.backend = backend_class(model_config, self.device)
        if needs_tokenizer(self.task):
            cases = self.task.load_cases(task_config, root, tokenizer=self.backend.tokenizer)
        self.cases: list[Case] = cases

    @classmethod
    def from_files(cls, model_config_path: str, task_config_path: str, device: str = "auto",
                   backend: str | None = None) -> Rerunner:
        model_config = load_model_config(model_config_path)
        if backend is not None:
            model_config = replace(model_config, requested_gpu_framework=backend)
        return cls(model_config, load_task_config(task_config_path), device)

    def find(self, keys: Iterable[str]) -> list[Case]:
        """The cases with these debug-CSV keys, in dataset order; DataError when none is in the dataset."""
        wanted = list(dict.fromkeys(keys))
        found = [case for case in self.cases if case.key in set(wanted)]
        missing = [k for k in wanted if k not in {c.key for c in found}]
        if missing:
            log.warning("%d key(s) of the bad-case CSV are not in the dataset and were skipped: %s", len(missing),
                        ", ".join(missing[:5]))
        if not found:
            raise DataError(f"none of the {len(wanted)} bad cases is a case of task {self.task_config.task_name}")
        return found

    def batches_with(self, cases: Sequence[Case], batch_size: int) -> list[list[Case]]:
        """The evaluation's batches of `batch_size` (dataset order) that hold one of `cases`."""
        from logitsdump.runner.decoding import batches

        wanted = {case.key for case in cases}
        return [list(batch) for batch in batches(self.cases, batch_size, self.task_config.need_logits)
                if any(case.key in wanted for case in batch)]

    def run(self, batches: Sequence[Sequence[Case]], keep_steps: int, only: Iterable[str] | None = None
            ) -> dict[str, Outcome]:
        """Decode each batch; the outcome of each case (of those in `only`, when given)."""
        from logitsdump.runner.decoding import Decoder
        from logitsdump.runner.tasks.base import pass_label

        keep = set(only) if only is not None else None
        decoder = Decoder(self.backend, self.task, self.task_config, keep_steps)
        outcomes: dict[str, Outcome] = {}
        for batch in batches:
            inferred = decoder.decode(batch)
            for item in inferred or ():
                if keep is not None and item.case.key not in keep:
                    continue
                judgement = self.task.judge(item.case, item.generation, self.backend.tokenizer)
                outcomes[item.case.key] = Outcome(
                    item.case.key, tuple(item.generation.output_ids),
                    normalise_passed(pass_label(self.task, judgement.passed)),
                    tuple(step.float().clone() for step in item.decoded.step_logits),
                )
        return outcomes


def max_abs_difference(a: Outcome, b: Outcome) -> tuple[float, bool, int]:
    """(max |Δlogit| over the steps both fed the same prefix, bitwise equal there, steps compared).

    Steps are compared up to and including the first one where the two chose differently (after it
    the prefixes differ)."""
    import torch

    worst, equal, steps = 0.0, True, 0
    for t, (x, y) in enumerate(zip(a.step_logits, b.step_logits, strict=False)):
        steps += 1
        if not torch.equal(x, y):
            equal = False
            worst = max(worst, float((x - y).abs().max()))
        if t >= len(a.output_ids) or t >= len(b.output_ids) or a.output_ids[t] != b.output_ids[t]:
            break
    return worst, equal, steps


@contextmanager
def environment(changes: Mapping[str, str | None]):
    """Set (a str) or remove (None) environment variables for the duration of a block."""
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_batch_size(value: int, flag: str = "--batch_size") -> int:
    if value < 1:
        raise ConfigError(f"{flag} must be >= 1, found {value}")
    return value


def output_folder(path: str | os.PathLike[str] | None, default: str) -> Path:
    from logitsdump.fsutil import ensure_writable_dir

    return ensure_writable_dir(path or default)
