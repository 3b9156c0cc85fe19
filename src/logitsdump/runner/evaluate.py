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
from logitsdump.errors import ConfigError, DataError
from logitsdump.fsutil import check_path_fits, ensure_writable_dir, result_set
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
from logitsdump.runner.tasks.base import (
    Case,
    Task,
    Tokenizer,
    choice_logits,
    needs_tokenizer,
    pass_label,
)

if TYPE_CHECKING:
    from logitsdump.protocol import DumpRequest
    from logitsdump.runner.backends import Backend
    from logitsdump.runner.control import ControlSpec
    from logitsdump.runner.distributed import World
    from logitsdump.runner.dumping import LogitsWriter
    from logitsdump.runner.logits_folder import FolderClaim
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
    #: rank 0 of a dump: the logits folder's lock and what it found there
    claim: FolderClaim | None = None
    #: The run's provenance (`runner.provenance.run_provenance`): beside the debug CSV and the dump.
    provenance: dict = field(default_factory=dict)
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
    #: (key, `CaseInputs.to_dict(with_prompt=False)`) of each decoded case, for the run's provenance.
    inputs: list[tuple[str, dict]] = field(default_factory=list)
    #: (case key, reason) of the cases the backend could not decode (a server that kept failing)
    missing: list[tuple[str, str]] = field(default_factory=list)


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
        claim = _claim_logits_folder(plan, model_config, backend.device.label, world)
        try:
            return _run_loaded(plan, backend, world, claim)
        finally:
            if claim is not None:
                claim.release()
    device = choose_device(options.device, world.local_rank if world.distributed else None)
    # the dump's folder: an odd layout, another dump writing it, or files nobody said to keep or replace
    # are refused here, before the model loads
    claim = _claim_logits_folder(plan, model_config, device.label, world)
    distributed.init_process_group(world, device.kind)
    try:
        with interrupt.stop_on_signals():  # SIGINT/SIGTERM while the model loads: one line, exit 130/143
            loaded = backend_class(model_config, device, tensor_parallel=world.tensor_parallel)
        return _run_loaded(plan, loaded, world, claim)
    finally:
        distributed.shutdown(world)
        if claim is not None:
            claim.release()


def _claim_logits_folder(plan: _Plan, model_config: ModelConfig, device_label: str, world: World) -> FolderClaim | None:
    """Rank 0 of a dump: check, lock and inspect the logits folder (`logits_folder.claim`); None otherwise."""
    if plan.request is None or not world.is_main:
        return None
    from logitsdump.runner.logits_folder import claim

    layout = _layout(plan.options, model_config, plan.task_config, device_label)
    folder = layout.logits_dir
    if plan.control is not None and plan.request.replay_dir is not None:  # beside the golden dump it replays
        folder = outputs.control_dir_of(Path(plan.request.replay_dir))
    return claim(folder, layout.output_dir, plan.request)


def _layout(options: EvalOptions, model_config: ModelConfig, task_config: TaskConfig,
            device_label: str) -> outputs.OutputLayout:
    return outputs.OutputLayout(
        output_dir=Path(options.output_dir or "."), device_label=device_label, task_name=task_config.task_name,
        data_type=model_config.data_type, model_name=model_config.model_name, model_type=model_config.model_type,
        batch_size=options.batch_size, tp=options.tp,
    )


def _check_output_paths(options: EvalOptions, model_config: ModelConfig, task_config: TaskConfig) -> None:
    """Refuse, before any work, output paths too long for the file system (e.g. a long model_name).

    The device label is not known yet: "CPU", "GPU" and "NPU" have the same length.
    """
    layout = _layout(options, model_config, task_config, "CPU")
    check_path_fits(layout.output_dir, "--output_dir")
    for path in layout.planned_paths():
        check_path_fits(path, f"an output path (--output_dir, then model_type, data_type and model_name from "
                              f"{model_config.source})")


def _run_loaded(plan: _Plan, backend: Backend, world: World, claim: FolderClaim | None) -> EvalResult:
    """Load tokenizer-built cases, pick the dump's bad cases, lay out the outputs, then evaluate."""
    cases = plan.cases
    if needs_tokenizer(plan.task):
        cases = plan.task.load_cases(plan.task_config, plan.dataset_root, tokenizer=backend.tokenizer)
    if plan.request is not None:
        from logitsdump.runner.dumping import select_cases

        cases = select_cases(cases, plan.request)
        log.info("dump: %d bad cases to re-infer, %d tokens each", len(cases), plan.request.token_max_length)
    layout = _layout(plan.options, backend.config, plan.task_config, backend.device.label)
    from logitsdump.runner.provenance import run_provenance

    provenance = run_provenance(backend, plan.task_config, batch_size=plan.options.batch_size, tp=plan.options.tp,
                                world=world, request=plan.request)
    run = _Run(plan.options, plan.task, plan.task_config, plan.request, backend, world, layout, claim, provenance,
               plan.control)
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
                run=run.provenance,
                extra=dict(provenance.extra),
            ),
            manifest_name=store.manifest_part_name(world.rank) if world.data_parallel else store.MANIFEST_NAME,
        )
        if world.is_main:
            claim = run.claim
            if claim is None or claim.folder != run.dump_dir:  # the backend chose another device
                from logitsdump.runner.logits_folder import claim as claim_folder

                claim = claim_folder(run.dump_dir, run.layout.output_dir, request)
            writer.prepare(backend.token_texts(range(backend.vocab_size)), claim)
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
    missing = [item for part in gathered for item in part.missing]
    if run.control is not None:  # a teacher-forced second configuration: its accuracy files would mislead
        _fail_on_missing(missing, writer is not None)
        return EvalResult(run.layout, tuple(outcomes), (), dumped_files)
    result = _write_outputs(run.options, run.task, run.task_config, run.layout, outcomes, dumped_files)
    if run.options.save_debug:
        _write_provenance(run, [item for part in gathered for item in part.inputs])
    _fail_on_missing(missing, writer is not None)
    return result


def _write_provenance(run: _Run, inputs: Sequence[tuple[str, dict]]) -> None:
    """The run's provenance and each case's inputs beside the debug CSV (for bcanalyze's preflight)."""
    from logitsdump import store

    store.write_provenance(run.layout.provenance_file, store.RunProvenance(run.provenance, dict(inputs)))


def _fail_on_missing(missing: Sequence[tuple[str, str]], dumping: bool) -> None:
    """Exit 1 naming the cases the backend could not decode (their rows are absent from the outputs)."""
    if not missing:
        return
    keys = ", ".join(key for key, _ in missing[:10]) + (" ..." if len(missing) > 10 else "")
    again = "rerun the dump with --resume to redo only them" if dumping else "rerun the evaluation"
    raise DataError(f"{len(missing)} case(s) missing: the backend could not decode them (keys {keys}; first reason: "
                    f"{missing[0][1]}); the outputs hold the others: {again}")


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
        try:
            inferred = decoder.decode(batch.cases)
        except backends.CaseUnavailable as err:  # recorded, reported at the end; the others go on
            log.error("case(s) %s missing: %s", ", ".join(str(c.key) for c in batch.cases), err)
            tally.missing.extend((str(c.key), str(err)) for c in batch.cases)
            progress.update(len(batch.cases))
            continue
        if inferred is None:  # a replay without golden tokens for this case
            progress.update(1)
            continue
        for item in inferred:
            tally.outcomes.append((batch.number, _judge(run.task, item, run.backend.tokenizer)))
            if item.inputs is not None and run.options.save_debug:
                tally.inputs.append((item.case.key, item.inputs.to_dict(with_prompt=False)))
            if writer is not None:
                tally.dumped_files += _record(writer, item, run.backend, replay, run.task, run.control)
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


def _record(writer: LogitsWriter, item: Inferred, backend: Backend, replay: ReplaySource | None, task: Task,
            control: ControlSpec | None = None) -> int:
    """Write one case's logits files and manifest line (with the choices' logits of a task judged from
    them; a control run's configuration); the number of files written."""
    decoded, generation = item.decoded, item.generation
    extra: dict | None = None
    if replay is not None:
        extra = replay.extra(decoded.own_ids or decoded.output_ids[: len(decoded.step_logits)])
    take_notes = getattr(backend, "take_notes", None)  # a server: requests per case, replay method
    if take_notes is not None:
        notes = take_notes()
        method = notes.pop("replay_method", None)
        if extra is not None and method is not None:
            extra["replay"]["method"] = method
        extra = {**(extra or {}), **notes}
    choices = choice_logits(task, item.case, generation, backend.tokenizer)
    if choices is not None:
        from logitsdump.store import EXTRA_CHOICES

        extra = {**(extra or {}), EXTRA_CHOICES: choices}
    if control is not None:
        from logitsdump.store import CONTROL_EXTRA

        extra = {**(extra or {}), CONTROL_EXTRA: control.to_dict()}
    names = writer.save(item.case, decoded.step_logits, generation.input_ids, decoded.output_ids,
                        backend.token_texts(decoded.output_ids), generation.text, extra, item.inputs)
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
    paths = [layout.result_file, layout.infer_results_file]
    if options.save_debug:
        paths += [layout.debug_file, *([layout.bad_case_file] if task.writes_bad_case_csv else [])]
    with result_set(paths) as staged:  # the run's files appear together or not at all
        outputs.write_result_file(layout, scores, staged[0])
        outputs.write_infer_results(layout, outcomes, staged[1])
        if options.save_debug:
            outputs.write_debug_csv(layout, outcomes, staged[2])
            if task.writes_bad_case_csv:
                outputs.write_bad_case_csv(layout, outcomes, staged[3])
    print(outputs.format_score_table(task_config.task_name, scores))
    print(f"results: {layout.result_file}")
    if options.save_debug:
        print(f"debug:   {layout.debug_file}")
    return EvalResult(layout, tuple(outcomes), tuple(scores), dumped_files)
