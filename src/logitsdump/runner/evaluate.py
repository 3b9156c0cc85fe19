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
from typing import TYPE_CHECKING

from logitsdump import protocol
from logitsdump.errors import ConfigError
from logitsdump.logs import get_logger
from logitsdump.runner import outputs
from logitsdump.runner.config import load_model_config, load_task_config, resolve_dataset_root
from logitsdump.runner.tasks import get_task
from logitsdump.runner.tasks.base import Case, Generation, is_forward_only, needs_tokenizer, pass_label, stop_rule

if TYPE_CHECKING:
    from logitsdump.runner.backend import HFBackend

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


def _batches(items: Sequence[Case], size: int, need_logits: bool = False) -> Iterator[Sequence[Case]]:
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


def run_eval(options: EvalOptions, backend: HFBackend | None = None) -> EvalResult:
    """Evaluate (or, under the dump protocol, re-infer the bad cases of) one model on one task.

    `backend`: an already loaded model to reuse (single process only), e.g. for benchmarks.
    """
    model_config = load_model_config(options.model_config_path)
    task_config = load_task_config(options.task_config_path)
    try:
        task = get_task(task_config.task_name)
    except ConfigError as err:
        raise ConfigError(f"task config {task_config.source}: {err}") from None
    request = protocol.read_request()
    if request is not None and options.batch_size != 1:
        raise ConfigError(f"a logits dump needs --batch_size 1, found {options.batch_size}")
    dataset_root = resolve_dataset_root(task_config)
    # data errors show before the model loads, except for tasks that build cases with its tokenizer
    cases = [] if needs_tokenizer(task) else task.load_cases(task_config, dataset_root)

    from logitsdump.runner import distributed
    from logitsdump.runner.backend import HFBackend, choose_device

    world = distributed.detect_world(options.tp)
    if backend is not None:
        if world.distributed:
            raise ConfigError("a preloaded backend cannot be shared by torchrun's processes")
        return _run_loaded(options, task, task_config, dataset_root, cases, request, backend, world)
    device = choose_device(options.device, world.local_rank if world.distributed else None)
    distributed.init_process_group(world, device.kind)
    try:
        backend = HFBackend(model_config, device, tensor_parallel=world.tensor_parallel)
        return _run_loaded(options, task, task_config, dataset_root, cases, request, backend, world)
    finally:
        distributed.shutdown(world)


def _run_loaded(options, task, task_config, dataset_root, cases, request, backend, world) -> EvalResult:
    device = backend.device
    model_config = backend.config
    if needs_tokenizer(task):
        cases = task.load_cases(task_config, dataset_root, tokenizer=backend.tokenizer)
    if request is not None:
        from logitsdump.runner.dumping import select_cases

        cases = select_cases(cases, request)
        log.info("dump: %d bad cases to re-infer, %d tokens each", len(cases), request.token_max_length)
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
        return _evaluate(options, task, task_config, cases, backend, layout, request, world)


def _make_writer(layout, request, task_config, backend, world):
    """The logits writer of this rank (None when it writes none); rank 0 prepares the folder first."""
    from logitsdump import store
    from logitsdump.runner import distributed
    from logitsdump.runner.dumping import DumpContext, LogitsWriter

    writer = None
    if world.writes_logits:
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
            manifest_name=store.manifest_part_name(world.rank) if world.data_parallel else store.MANIFEST_NAME,
        )
        if world.is_main:
            writer.prepare(backend.token_texts(range(backend.vocab_size)))
    distributed.barrier(world)
    if writer is not None and not world.is_main:
        writer.load_complete()
    return writer


def _evaluate(options, task, task_config, cases, backend, layout, request, world) -> EvalResult:
    from logitsdump.runner import distributed

    writer = _make_writer(layout, request, task_config, backend, world) if request is not None else None
    batches = list(_batches(cases, options.batch_size, task_config.need_logits))
    error: BaseException | None = None
    mine: list[tuple[int, outputs.CaseOutcome]] = []
    dumped_files = skipped = 0
    try:
        mine, dumped_files, skipped = _run_batches(
            world.my_share(list(enumerate(batches))), options, task, task_config, backend, request, writer, world
        )
    except Exception as err:  # reported to every rank below; KeyboardInterrupt ends the process as usual
        error = err
    distributed.raise_if_any_failed(world, error)
    counts_here = world.data_parallel or world.is_main  # in tensor parallel, rank 0's results are the results
    gathered = distributed.gather_to_main(world, (mine, dumped_files, skipped) if counts_here else ([], 0, 0))
    if not world.is_main:
        return EvalResult(layout, (), (), dumped_files)
    ordered = sorted((item for part in gathered for item in part[0]), key=lambda item: item[0])
    outcomes = [outcome for _, outcome in ordered]
    dumped_files = sum(part[1] for part in gathered)
    skipped = sum(part[2] for part in gathered)
    if writer is not None:
        records = writer.finish()
        log.info("dump: %d files for %d cases in %s (%d already complete)",
                 dumped_files, len(records), layout.logits_dir, skipped)
    return _write_outputs(options, task, task_config, layout, outcomes, dumped_files)


def _run_batches(numbered_batches, options, task, task_config, backend, request, writer, world):
    """Infer and judge this rank's batches; returns ((position, outcome) pairs, files written, cases skipped)."""
    from tqdm import tqdm

    from logitsdump.runner.dumping import prompt_sha256

    keep_steps = request.token_max_length if request is not None else 0
    replay = None
    if request is not None and request.replay_dir is not None:
        from logitsdump.runner.replay import ReplaySource

        replay = ReplaySource(request.replay_dir, request.replay_mode)
    max_input = task_config.requested_max_input_length
    outcomes: list[tuple[int, outputs.CaseOutcome]] = []
    dumped_files = 0
    skipped = 0
    total = sum(len(batch) for _, batch in numbered_batches)
    progress = tqdm(total=total, desc=task_config.task_name, unit="case", file=sys.stderr,
                    disable=None if world.is_main else True, dynamic_ncols=True)
    for number, batch in numbered_batches:
        if writer is not None and writer.is_complete(batch[0]):
            skipped += 1
            progress.update(1)
            continue
        encoded = [_fit_input(backend.encode(c.query), max_input, task_config.need_truncate_input) for c in batch]
        forced = None
        if replay is not None:  # a dump: batch size 1
            forced = replay.forced_tokens(batch[0], prompt_sha256(batch[0].query), keep_steps)
            if forced is None:
                progress.update(1)
                continue
        if forced is not None and not is_forward_only(batch[0], task_config.need_logits):
            decoded = [replay.decode(backend, encoded[0], forced, keep_steps)]
        elif is_forward_only(batch[0], task_config.need_logits):
            decoded = _forward_as_decoded(backend, encoded)
        else:
            limits = [c.max_new_tokens or task_config.requested_max_output_length for c in batch]
            stops = [stop_rule(task, c, backend.decode) for c in batch]
            decoded = backend.greedy(encoded, max(limits), keep_steps, limits=limits, stops=stops)
        for case, ids, result in zip(batch, encoded, decoded, strict=True):
            text = backend.decode(result.output_ids)
            scored = _continuation_logprobs(backend, ids, case.continuation_from)
            generation = Generation(tuple(ids), tuple(result.output_ids), text, result.first_logits, scored)
            judgement = task.judge(case, generation, backend.tokenizer)
            outcomes.append((
                number,
                outputs.CaseOutcome(
                    key=case.key, subject=case.subject, query=case.query,
                    input_token_ids=tuple(ids), output_token_ids=tuple(result.output_ids), output_text=text,
                    test_result=judgement.test_result, golden_result=judgement.golden_result,
                    passed=judgement.passed, pass_label=pass_label(task, judgement.passed),
                ),
            ))
            if writer is not None:
                extra = None
                if replay is not None:
                    extra = replay.extra(result.own_ids or result.output_ids[: len(result.step_logits)])
                dumped_files += len(
                    writer.save(case, result.step_logits, ids, result.output_ids,
                                backend.token_texts(result.output_ids), text, extra)
                )
        progress.update(len(batch))
    progress.close()
    return outcomes, dumped_files, skipped


def _write_outputs(options, task, task_config, layout, outcomes, dumped_files) -> EvalResult:
    """Rank 0: the result file, infer results, debug CSVs, and the table on the terminal."""
    subjects = dict.fromkeys([*task_config.subjects, *(o.subject for o in outcomes)])  # + run-time sub-datasets
    scores = outputs.subject_scores(outcomes, list(subjects))
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


def _continuation_logprobs(backend, ids, prefix):
    """log P(ids[k] | ids[:k]) for each query token after `prefix` (none when prefix is None)."""
    if prefix is None:
        return ()
    import torch

    start = min(max(len(backend.encode(prefix)), 1), len(ids))
    if start >= len(ids):
        return ()
    logits = backend.last_logits([ids[:k] for k in range(start, len(ids))])
    positions = range(start, len(ids))
    return tuple(float(torch.log_softmax(row.float(), -1)[ids[k]]) for row, k in zip(logits, positions, strict=True))


def _fit_input(ids: list[int], max_length: int, truncate: bool) -> list[int]:
    """Middle-truncate inputs longer than `max_length` when the task asks for it."""
    if len(ids) <= max_length or not truncate:
        return ids
    half = max_length // 2
    return ids[:half] + ids[len(ids) - (max_length - half):]
