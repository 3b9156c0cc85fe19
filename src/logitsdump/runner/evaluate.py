"""The evaluation loop of `logitsdump eval`: cases -> batches -> decode -> judge -> record -> files.

It never names a task nor a framework: the task registry gives the task, which gives
its cases and judges them; the backend registry gives the model, which the loop
reaches only through the `Backend` protocol (via `decoding.Decoder`). With the dump
protocol set, it re-infers only the bad cases and records their logits through
`dumping.LogitsWriter`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from logitsdump import protocol
from logitsdump.errors import ConfigError
from logitsdump.fsutil import check_path_fits, ensure_writable_dir
from logitsdump.logs import get_logger
from logitsdump.runner import backends, interrupt, outputs
from logitsdump.runner.config import (
    ModelConfig,
    TaskConfig,
    check_model_folder,
    load_model_config,
    load_task_config,
    resolve_dataset_root,
)
from logitsdump.runner.decoding import Decoder, Inferred, batches
from logitsdump.runner.tasks import get_task
from logitsdump.runner.tasks.base import Case, Task, Tokenizer, needs_tokenizer, pass_label

if TYPE_CHECKING:
    from logitsdump.protocol import DumpRequest
    from logitsdump.runner.backends import Backend
    from logitsdump.runner.control import ControlSpec
    from logitsdump.runner.distributed import World
    from logitsdump.runner.dumping import LogitsWriter
    from logitsdump.runner.replay import ReplaySource

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
    backend: str | None = None  # overrides the model YAML's requested_gpu_framework


@dataclass(frozen=True)
class EvalResult:
    layout: outputs.OutputLayout
    outcomes: tuple[outputs.CaseOutcome, ...]
    scores: tuple[outputs.SubjectScore, ...]
    dumped_files: int = 0


@dataclass(frozen=True)
class _Plan:
    """What `run_eval` knows before the model loads."""

    options: EvalOptions
    task: Task
    task_config: TaskConfig
    dataset_root: Path
    cases: list[Case]  # empty for tasks that build their cases with the model's tokenizer
    request: DumpRequest | None  # the dump protocol's request; None for a plain evaluation
    control: ControlSpec | None = None  # a control run (`dump --control`): what it changed of the model YAML


@dataclass(frozen=True)
class _Run:
    """One evaluation with its model loaded: what every stage reads."""

    options: EvalOptions
    task: Task
    task_config: TaskConfig
    request: DumpRequest | None
    backend: Backend
    world: World
    layout: outputs.OutputLayout
    control: ControlSpec | None = None

    @property
    def dump_dir(self) -> Path:
        """Where the logits go: the layout's folder, or a control run's folder beside the golden dump."""
        if self.control is not None and self.request is not None and self.request.replay_dir is not None:
            return outputs.control_dir_of(Path(self.request.replay_dir))
        return self.layout.logits_dir


@dataclass(frozen=True)
class _Batch:
    """A batch of cases and its position among all batches (outcomes are put back in that order)."""

    number: int
    cases: Sequence[Case]


@dataclass
class _Tally:
    """What one rank sends rank 0: its outcomes with their batch numbers, files written, cases skipped."""

    outcomes: list[tuple[int, outputs.CaseOutcome]] = field(default_factory=list)
    dumped_files: int = 0
    skipped: int = 0  # complete already (resume)


def run_eval(options: EvalOptions, backend: Backend | None = None) -> EvalResult:
    """Evaluate (or, under the dump protocol, re-infer the bad cases of) one model on one task.

    `backend`: an already loaded model to reuse (single process only), e.g. for benchmarks.
    """
    model_config = load_model_config(options.model_config_path)
    if options.backend is not None:
        model_config = dataclasses.replace(model_config, requested_gpu_framework=options.backend)
    task_config = load_task_config(options.task_config_path)
    try:
        task = get_task(task_config.task_name)
    except ConfigError as err:
        raise ConfigError(f"task config {task_config.source}: {err}") from None
    try:  # before anything loads; checked even when a loaded backend is given
        backend_class = backends.backend_class(model_config.requested_gpu_framework)
    except ConfigError as err:
        where = "--backend" if options.backend is not None else f"model config {model_config.source}"
        raise ConfigError(f"{where}: {err}") from None
    request = protocol.read_request()
    if request is not None and options.batch_size != 1:
        raise ConfigError(f"a logits dump needs --batch_size 1, found {options.batch_size}")
    control = None
    if request is not None and request.control is not None:
        from logitsdump.runner.control import check_golden_side, resolve_control

        check_golden_side(request.replay_dir, model_config)
        control = resolve_control(request.control, model_config, request.control_dtype)
        model_config = control.apply(model_config)
        log.info("dump: the %s, replaying %s", control.description, request.replay_dir)
    _check_output_paths(options, model_config, task_config)
    dataset_root = resolve_dataset_root(task_config)
    # data errors show before the model loads, except for tasks that build cases with its tokenizer
    cases = [] if needs_tokenizer(task) else task.load_cases(task_config, dataset_root)
    if backend is None:
        check_model_folder(model_config)
    ensure_writable_dir(options.output_dir or ".")  # before the model loads, after the input checks
    plan = _Plan(options, task, task_config, dataset_root, cases, request, control)

    from logitsdump.runner import distributed
    from logitsdump.runner.device import choose_device

    world = distributed.detect_world(options.tp)
    if backend is not None:
        if world.distributed:
            raise ConfigError("a preloaded backend cannot be shared by torchrun's processes")
        if control is not None:
            raise ConfigError("a control run loads the golden model in its own configuration: no preloaded backend")
        return _run_loaded(plan, backend, world)
    device = choose_device(options.device, world.local_rank if world.distributed else None)
    distributed.init_process_group(world, device.kind)
    try:
        with interrupt.stop_on_signals():  # SIGINT/SIGTERM while the model loads: one line, exit 130/143
            loaded = backend_class(model_config, device, tensor_parallel=world.tensor_parallel)
        return _run_loaded(plan, loaded, world)
    finally:
        distributed.shutdown(world)


def _check_output_paths(options: EvalOptions, model_config: ModelConfig, task_config: TaskConfig) -> None:
    """Refuse, before any work, output paths too long for the file system (e.g. a long model_name).

    The device label is not known yet: "CPU", "GPU" and "NPU" have the same length.
    """
    layout = outputs.OutputLayout(
        output_dir=Path(options.output_dir or "."), device_label="CPU", task_name=task_config.task_name,
        data_type=model_config.data_type, model_name=model_config.model_name, model_type=model_config.model_type,
        batch_size=options.batch_size, tp=options.tp,
    )
    check_path_fits(layout.output_dir, "--output_dir")
    for path in layout.planned_paths():
        check_path_fits(path, f"an output path (--output_dir, then model_type, data_type and model_name from "
                              f"{model_config.source})")


def _run_loaded(plan: _Plan, backend: Backend, world: World) -> EvalResult:
    """Load tokenizer-built cases, pick the dump's bad cases, lay out the outputs, then evaluate."""
    cases = plan.cases
    if needs_tokenizer(plan.task):
        cases = plan.task.load_cases(plan.task_config, plan.dataset_root, tokenizer=backend.tokenizer)
    if plan.request is not None:
        from logitsdump.runner.dumping import select_cases

        cases = select_cases(cases, plan.request)
        log.info("dump: %d bad cases to re-infer, %d tokens each", len(cases), plan.request.token_max_length)
    model_config = backend.config
    layout = outputs.OutputLayout(
        output_dir=Path(plan.options.output_dir or "."),
        device_label=backend.device.label,
        task_name=plan.task_config.task_name,
        data_type=model_config.data_type,
        model_name=model_config.model_name,
        model_type=model_config.model_type,
        batch_size=plan.options.batch_size,
        tp=plan.options.tp,
    )
    run = _Run(plan.options, plan.task, plan.task_config, plan.request, backend, world, layout, plan.control)
    with interrupt.stop_on_signals():  # SIGINT/SIGTERM: exit 130/143, also inside a forward pass
        return _evaluate(run, cases)


def _make_writer(run: _Run, request: DumpRequest) -> LogitsWriter | None:
    """The logits writer of this rank (None when it writes none); rank 0 prepares the folder first."""
    from logitsdump import store
    from logitsdump.runner import distributed
    from logitsdump.runner.dumping import DumpContext, LogitsWriter

    backend, world = run.backend, run.world
    writer = None
    if world.writes_logits:
        provenance = backend.provenance()
        writer = LogitsWriter(
            run.dump_dir,
            request,
            DumpContext(
                task=run.task_config.task_name,
                model_name=backend.config.model_name,
                model_path=provenance.model_path,
                dtype=backend.config.data_type,
                vocab_size=backend.vocab_size,
                device=provenance.device,
                versions=dict(provenance.versions),
            ),
            manifest_name=store.manifest_part_name(world.rank) if world.data_parallel else store.MANIFEST_NAME,
        )
        if world.is_main:
            writer.prepare(backend.token_texts(range(backend.vocab_size)))
    distributed.barrier(world)
    if writer is not None and not world.is_main:
        writer.load_complete()
    return writer


def _evaluate(run: _Run, cases: Sequence[Case]) -> EvalResult:
    """This rank's share of the batches, then (rank 0) everyone's outcomes into the output files."""
    from logitsdump.runner import distributed

    world = run.world
    writer = _make_writer(run, run.request) if run.request is not None else None
    numbered = [_Batch(n, b) for n, b in enumerate(batches(cases, run.options.batch_size, run.task_config.need_logits))]
    error: BaseException | None = None
    tally = _Tally()
    try:
        tally = _run_batches(run, world.my_share(numbered), writer)
    except Exception as err:  # reported to every rank below; KeyboardInterrupt ends the process as usual
        error = err
    distributed.raise_if_any_failed(world, error)
    counts_here = world.data_parallel or world.is_main  # in tensor parallel, rank 0's results are the results
    gathered: list[_Tally] | None = distributed.gather_to_main(world, tally if counts_here else _Tally())
    if not world.is_main or gathered is None:
        return EvalResult(run.layout, (), (), tally.dumped_files)
    ordered = sorted((item for part in gathered for item in part.outcomes), key=lambda item: item[0])
    outcomes = [outcome for _, outcome in ordered]
    dumped_files = sum(part.dumped_files for part in gathered)
    skipped = sum(part.skipped for part in gathered)
    if writer is not None:
        records = writer.finish(matched=len(cases))
        log.info("dump: %d files for %d cases in %s (%d already complete)",
                 dumped_files, len(records), run.dump_dir, skipped)
    if run.control is not None:  # a teacher-forced second configuration: its accuracy files would mislead
        return EvalResult(run.layout, tuple(outcomes), (), dumped_files)
    return _write_outputs(run.options, run.task, run.task_config, run.layout, outcomes, dumped_files)


def _run_batches(run: _Run, my_batches: Sequence[_Batch], writer: LogitsWriter | None) -> _Tally:
    """Decode, judge and record this rank's batches."""
    from tqdm import tqdm

    request = run.request
    replay = None
    if request is not None and request.replay_dir is not None:
        from logitsdump.runner.replay import ReplaySource

        replay = ReplaySource(request.replay_dir, request.replay_mode)
    keep_steps = request.token_max_length if request is not None else 0
    decoder = Decoder(run.backend, run.task, run.task_config, keep_steps, replay)
    tally = _Tally()
    total = sum(len(batch.cases) for batch in my_batches)
    progress = tqdm(total=total, desc=run.task_config.task_name, unit="case", file=sys.stderr,
                    disable=None if run.world.is_main else True, dynamic_ncols=True)
    for batch in my_batches:
        if writer is not None and writer.is_complete(batch.cases[0]):
            tally.skipped += 1
            progress.update(1)
            continue
        inferred = decoder.decode(batch.cases)
        if inferred is None:  # a replay without golden tokens for this case
            progress.update(1)
            continue
        for item in inferred:
            tally.outcomes.append((batch.number, _judge(run.task, item, run.backend.tokenizer)))
            if writer is not None:
                tally.dumped_files += _record(writer, item, run.backend, replay, run.control)
        progress.update(len(batch.cases))
    progress.close()
    decoder.warn_cut_prompts()
    return tally


def _judge(task: Task, item: Inferred, tokenizer: Tokenizer) -> outputs.CaseOutcome:
    """The task's verdict on one decoded case, as the output files show it."""
    case, generation = item.case, item.generation
    judgement = task.judge(case, generation, tokenizer)
    return outputs.CaseOutcome(
        key=case.key, subject=case.subject, query=case.query,
        input_token_ids=generation.input_ids, output_token_ids=generation.output_ids, output_text=generation.text,
        test_result=judgement.test_result, golden_result=judgement.golden_result,
        passed=judgement.passed, pass_label=pass_label(task, judgement.passed),
    )


def _record(writer: LogitsWriter, item: Inferred, backend: Backend, replay: ReplaySource | None,
            control: ControlSpec | None = None) -> int:
    """Write one case's logits files and manifest line; the number of files written."""
    decoded, generation = item.decoded, item.generation
    extra = None
    if replay is not None:
        extra = replay.extra(decoded.own_ids or decoded.output_ids[: len(decoded.step_logits)])
    if control is not None:
        from logitsdump.store import CONTROL_EXTRA

        extra = {**(extra or {}), CONTROL_EXTRA: control.to_dict()}
    names = writer.save(item.case, decoded.step_logits, generation.input_ids, decoded.output_ids,
                        backend.token_texts(decoded.output_ids), generation.text, extra)
    return len(names)


def _write_outputs(
    options: EvalOptions,
    task: Task,
    task_config: TaskConfig,
    layout: outputs.OutputLayout,
    outcomes: Sequence[outputs.CaseOutcome],
    dumped_files: int,
) -> EvalResult:
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
