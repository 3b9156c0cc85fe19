"""The evaluation loop of `logitsdump eval`: cases -> batches -> model -> judge -> files.

It never names a task: the registry gives the task, the task gives its cases
and judges them. With the dump protocol set, it re-infers only the bad cases
and writes their logits through `dumping.LogitsWriter`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from logitsdump import protocol
from logitsdump.errors import ConfigError
from logitsdump.logs import get_logger
from logitsdump.runner import outputs
from logitsdump.runner.config import load_model_config, load_task_config, resolve_dataset_root
from logitsdump.runner.tasks import get_task
from logitsdump.runner.tasks.base import Case, Generation, pass_label

log = get_logger("eval")


@dataclass(frozen=True)
class EvalOptions:
    """modeltest's flags, plus our `device`."""

    model_config_path: str
    task_config_path: str
    batch_size: int = 1
    tp: int = 1
    output_dir: str = ""
    save_debug: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class EvalResult:
    layout: outputs.OutputLayout
    outcomes: tuple[outputs.CaseOutcome, ...]
    scores: tuple[outputs.SubjectScore, ...]
    dumped_files: int = 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so temporary files are cleaned up on the way out."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _batches(items: Sequence[Case], size: int) -> Iterator[Sequence[Case]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_eval(options: EvalOptions) -> EvalResult:
    """Evaluate (or, under the dump protocol, re-infer the bad cases of) one model on one task."""
    model_config = load_model_config(options.model_config_path)
    task_config = load_task_config(options.task_config_path)
    task = get_task(task_config.task_name)
    request = protocol.read_request()
    if request is not None and options.batch_size != 1:
        raise ConfigError(f"a logits dump needs --batch_size 1, found {options.batch_size}")
    cases = task.load_cases(task_config, resolve_dataset_root(task_config))
    if request is not None:
        from logitsdump.runner.dumping import select_cases

        cases = select_cases(cases, request)
        log.info("dump: %d bad cases to re-infer, %d tokens each", len(cases), request.token_max_length)

    from logitsdump.runner.backend import HFBackend, choose_device

    device = choose_device(options.device)
    backend = HFBackend(model_config, device)
    layout = outputs.OutputLayout(
        output_dir=Path(options.output_dir or "."),
        device_label=device.label,
        task_name=task_config.task_name,
        data_type=model_config.data_type,
        model_name=model_config.model_name,
        model_type=model_config.model_type,
        batch_size=options.batch_size,
        tp=options.tp,
    )
    with _sigterm_as_interrupt():
        return _evaluate(options, task, task_config, cases, backend, layout, request)


def _evaluate(options, task, task_config, cases, backend, layout, request) -> EvalResult:
    from tqdm import tqdm

    writer = None
    if request is not None:
        from logitsdump.runner.dumping import DumpContext, LogitsWriter

        writer = LogitsWriter(
            layout.logits_dir,
            request,
            DumpContext(
                task=task_config.task_name,
                model_name=backend.config.model_name,
                model_path=str(backend.model_path),
                dtype=backend.config.data_type,
                vocab_size=backend.vocab_size,
                device=backend.device.torch_device,
                versions=backend.versions(),
            ),
        )
        writer.prepare(backend.token_texts(range(backend.vocab_size)))
    keep_steps = request.token_max_length if request is not None else 0
    max_input = task_config.requested_max_input_length
    outcomes: list[outputs.CaseOutcome] = []
    dumped_files = 0
    skipped = 0
    progress = tqdm(total=len(cases), desc=task_config.task_name, unit="case", file=sys.stderr,
                    disable=None, dynamic_ncols=True)
    for batch in _batches(cases, options.batch_size):
        if writer is not None and writer.is_complete(batch[0]):
            skipped += 1
            progress.update(1)
            continue
        encoded = [_fit_input(backend.encode(c.query), max_input, task_config.need_truncate_input) for c in batch]
        if task_config.need_logits:
            decoded = _forward_as_decoded(backend, encoded)
        else:
            decoded = backend.greedy(encoded, task_config.requested_max_output_length, keep_steps)
        for case, ids, result in zip(batch, encoded, decoded, strict=True):
            text = backend.decode(result.output_ids)
            generation = Generation(tuple(ids), tuple(result.output_ids), text, result.first_logits)
            judgement = task.judge(case, generation, backend.tokenizer)
            outcomes.append(
                outputs.CaseOutcome(
                    key=case.key, subject=case.subject, query=case.query,
                    input_token_ids=tuple(ids), output_token_ids=tuple(result.output_ids), output_text=text,
                    test_result=judgement.test_result, golden_result=judgement.golden_result,
                    passed=judgement.passed, pass_label=pass_label(task, judgement.passed),
                )
            )
            if writer is not None:
                dumped_files += len(
                    writer.save(case, result.step_logits, ids, result.output_ids,
                                backend.token_texts(result.output_ids), text)
                )
        progress.update(len(batch))
    progress.close()
    if writer is not None:
        records = writer.finish()
        log.info("dump: %d files for %d cases in %s (%d already complete)",
                 dumped_files, len(records), layout.logits_dir, skipped)
    scores = outputs.subject_scores(outcomes, task_config.subjects)
    outputs.write_result_file(layout, scores)
    outputs.write_infer_results(layout, outcomes)
    if options.save_debug:
        outputs.write_debug_csv(layout, outcomes)
        if task.writes_bad_case_csv:
            outputs.write_bad_case_csv(layout, outcomes)
    print(outputs.format_score_table(task_config.task_name, scores))
    print(f"results: {layout.result_file}")
    if options.save_debug:
        print(f"debug:   {layout.debug_file}")
    return EvalResult(layout, tuple(outcomes), tuple(scores), dumped_files)


def _forward_as_decoded(backend, encoded):
    """need_logits tasks: one forward pass; the argmax is the one 'generated' token."""
    from logitsdump.runner.backend import Decoded

    results = []
    for logits in backend.last_logits(encoded):
        results.append(Decoded([int(logits.argmax())], [logits], logits.float().clone()))
    return results


def _fit_input(ids: list[int], max_length: int, truncate: bool) -> list[int]:
    """Middle-truncate inputs longer than `max_length` when the task asks for it."""
    if len(ids) <= max_length or not truncate:
        return ids
    half = max_length // 2
    return ids[:half] + ids[len(ids) - (max_length - half):]
