"""`dump --from-samples`: re-infer the bad docs of an lm-eval run from its logged prompts, through our backend.

Each bad doc's logged requests (`arguments`) are replayed, tokenized as lm-eval's HF model does
(`HFLM.tok_encode` / `TemplateLM._encode_pair`):
- `generate_until`: greedy decoding of the logged context, with the logged `until` and `max_gen_toks`;
  one case per doc (subject = the task);
- `loglikelihood` (multiple choice, ...): each logged continuation scored after its context in one forward
  pass, the continuation forced (so both devices see the same prefix at every step); one case per
  continuation (subject = `<task>_choice<i>`), recorded as a prefill replay of the logged continuation.
The files, manifest (key = doc_id) and vocabulary are written by `runner.dumping.LogitsWriter`, in the usual
`{output_dir}/data/{DEV}/precision_test/{task}/{dtype}/{model}/logits/` folder, so `compare` and `report` read
them unchanged. The manifest's `extra.lm_eval` records what lm-eval logged beside what the replay found.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logitsdump.badcase import read_key_rows
from logitsdump.dump import DumpFolder, DumpResult
from logitsdump.errors import DataError, UsageError
from logitsdump.lmeval.samples import GENERATE, LOGLIKELIHOOD, ROLLING, Request, Sample, read_samples
from logitsdump.logs import get_logger
from logitsdump.protocol import DumpRequest
from logitsdump.runner.dumping import prompt_sha256
from logitsdump.runner.tasks.base import Case

if TYPE_CHECKING:
    from logitsdump.runner.backends.base import Backend, Decoded
    from logitsdump.runner.config import ModelConfig
    from logitsdump.runner.device import Device
    from logitsdump.runner.dumping import LogitsWriter
    from logitsdump.runner.logits_folder import FolderClaim
    from logitsdump.runner.outputs import OutputLayout
    from logitsdump.runner.replay import ReplaySource

log = get_logger("dump")

#: A replayed log-likelihood agrees with the logged one within this relative difference (lm-eval sums
#: log-probabilities in the model's dtype, so bf16 values carry about three significant digits).
LOGLIKELIHOOD_RTOL = 1e-2


@dataclass(frozen=True)
class SamplesDumpOptions:
    """Inputs of `run_samples_dump`."""

    samples_path: str
    bad_case_csv: str
    model_config_path: str
    token_range: int = 1
    output_dir: str = ""
    device: str = "auto"
    resume: bool = False
    logits_fp32: bool = False
    #: replace the previous dump in the logits folder (only the files it wrote)
    overwrite: bool = False
    #: generation docs: the golden dump's logits folder whose tokens are fed (teacher forcing)
    replay: str | None = None
    replay_mode: str = "step"


def choice_subject(task: str, request: int) -> str:
    """The subject of one scored continuation of a log-likelihood doc."""
    return f"{task}_choice{request}"


def bad_docs(samples_path: str | Path, bad_case_csv: str | Path) -> tuple[str, list[Sample]]:
    """(task, the samples of the bad-case CSV's docs, by doc_id); DataError on any mismatch, before a model loads."""
    samples = read_samples(samples_path)
    by_id: dict[int, Sample] = {}
    for sample in samples.samples:
        by_id.setdefault(sample.doc_id, sample)  # every filter logs the same requests for a doc
    wanted: dict[int, Sample] = {}
    for row in read_key_rows(bad_case_csv):
        key = row.cells["key"]
        if not (key.isascii() and key.isdigit()):
            raise DataError(f"{bad_case_csv}: key {key[:40]!r} on line {row.line} is not an lm-eval doc_id "
                            "(an int >= 0): give the bad-case CSV bcanalyze wrote from samples files")
        doc_id = int(key)
        task = row.cells.get("task", "").strip()
        if task and task != samples.task:
            raise DataError(f"{bad_case_csv}, line {row.line}: doc {doc_id} is of task {task}, but "
                            f"{samples.path} is of task {samples.task}: give the samples file of that task")
        sample = by_id.get(doc_id)
        if sample is None:
            raise DataError(f"{bad_case_csv}, line {row.line}: doc_id {doc_id} is not in {samples.path}")
        doc_hash = row.cells.get("doc_hash", "").strip()
        if doc_hash and doc_hash != sample.doc_hash:
            raise DataError(f"{bad_case_csv}, line {row.line}: doc {doc_id} has another doc_hash in "
                            f"{samples.path}: that run saw another dataset row under this doc_id")
        _check_replayable(samples.path, sample)
        wanted.setdefault(doc_id, sample)
    return samples.task, [wanted[i] for i in sorted(wanted)]


def _check_replayable(path: Path, sample: Sample) -> None:
    where = f"{path}, line {sample.line} (doc {sample.doc_id})"
    kinds = {r.kind for r in sample.requests}
    if ROLLING in kinds:
        raise DataError(f"{where}: loglikelihood_rolling (perplexity) requests cannot be replayed yet")
    if len(kinds) > 1:
        raise DataError(f"{where}: mixes generation and log-likelihood requests")
    if prompt_sha256(sample.prompt) != sample.prompt_hash:  # lm-eval's hash_string is our prompt hash
        raise DataError(f"{where}: prompt_hash is not the sha256 of the logged context: the file was edited")
    if GENERATE in kinds and len(sample.requests) > 1:
        raise DataError(f"{where}: {len(sample.requests)} generation requests for one doc: a doc is replayed "
                        "as one greedy generation")


def run_samples_dump(options: SamplesDumpOptions, backend: Backend | None = None) -> DumpResult:
    """Replay the bad docs' logged prompts through the model of `options.model_config_path`; write their logits.

    `backend`: an already loaded model to reuse (tests, benchmarks).
    """
    if options.token_range <= 0:
        raise UsageError(f"--token-range must be an int > 0, found {options.token_range}")
    if options.resume and options.overwrite:
        raise UsageError("--resume keeps the logits folder's complete cases, --overwrite replaces them: give one")
    task, docs = bad_docs(options.samples_path, options.bad_case_csv)
    replay = _replay_source(options, docs)
    from logitsdump.fsutil import ensure_writable_dir

    ensure_writable_dir(options.output_dir or ".")  # before the model loads
    request = DumpRequest(token_max_length=options.token_range, indices=tuple(d.doc_id for d in docs),
                          resume=options.resume, logits_fp32=options.logits_fp32, overwrite=options.overwrite)
    config, device = _model_and_device(options) if backend is None else (backend.config, backend.device)
    claim = _claim(task, request, options.output_dir, config, device.label)  # before the model loads
    try:
        if backend is None:
            backend = _load_backend(config, device)
        return _dump_docs(options, backend, task, docs, replay, request, claim)
    finally:
        claim.release()


def _dump_docs(options: SamplesDumpOptions, backend: Backend, task: str, docs: Sequence[Sample],
               replay: ReplaySource | None, request: DumpRequest, claim: FolderClaim) -> DumpResult:
    """Replay each doc through the loaded model into the claimed logits folder."""
    if backend.config.use_chat_template:
        log.warning("the model YAML's use_chat_template is ignored: the logged prompts are already what lm-eval "
                    "fed the model (with --apply_chat_template, the template is in them)")
    sampled = [d.doc_id for d in docs if any(r.do_sample for r in d.requests)]
    if sampled:
        log.warning("%d doc(s) were sampled by lm-eval (do_sample), replayed greedily: doc_id %s",
                    len(sampled), ", ".join(map(str, sampled[:5])))
    writer = _writer(backend, task, request, options.output_dir, claim)
    planned = sum(len(d.requests) for d in docs)
    log.info("dump: %d bad docs of %s (%d cases), %d tokens each, from %s", len(docs), task, planned,
             options.token_range, options.samples_path)
    replayer = _Replayer(backend, writer, task, Path(options.samples_path).resolve(), options.token_range, replay)
    from tqdm import tqdm

    for doc in tqdm(docs, desc=task, unit="doc", file=sys.stderr, disable=None, dynamic_ncols=True):
        replayer.replay(doc)
    records = writer.finish(matched=len(docs))
    if replayer.disagreements:
        log.warning("%d case(s) replayed differently from lm-eval's log on this model (see extra.lm_eval in the "
                    "manifest): %s; if this is the logged run's own device and dtype, the set-up differs "
                    "(add_bos_token, truncation, model revision)", len(replayer.disagreements),
                    ", ".join(replayer.disagreements[:5]))
    files = sum(len(r.files) for r in records)
    log.info("dump: %d files for %d cases in %s", files, len(records), writer.folder)
    return DumpResult(planned, (DumpFolder(writer.folder, len(records), files),), docs=len(docs))


def _replay_source(options: SamplesDumpOptions, docs: Sequence[Sample]) -> ReplaySource | None:
    if options.replay is None:
        return None
    from logitsdump.runner.replay import ReplaySource

    if all(r.kind == LOGLIKELIHOOD for d in docs for r in d.requests):
        log.warning("--replay: log-likelihood docs are always scored on their logged continuation; nothing to feed")
    return ReplaySource(options.replay, options.replay_mode)


def _model_and_device(options: SamplesDumpOptions) -> tuple[ModelConfig, Device]:
    """The model YAML (its folder checked) and the device, before anything loads."""
    from logitsdump.runner.config import check_model_folder, load_model_config
    from logitsdump.runner.device import choose_device

    config = load_model_config(options.model_config_path)
    check_model_folder(config)
    return config, choose_device(options.device)


def _load_backend(config: ModelConfig, device: Device) -> Backend:
    from logitsdump.errors import ConfigError
    from logitsdump.runner import backends

    try:
        backend_class = backends.backend_class(config.requested_gpu_framework)
    except ConfigError as err:
        raise ConfigError(f"model config {config.source}: {err}") from None
    return backend_class(config, device)


def _layout(config: ModelConfig, task: str, output_dir: str, device_label: str) -> OutputLayout:
    from logitsdump.runner.outputs import OutputLayout

    return OutputLayout(
        output_dir=Path(output_dir or "."), device_label=device_label, task_name=task,
        data_type=config.data_type, model_name=config.model_name, model_type=config.model_type, batch_size=1, tp=1,
    )


def _claim(task: str, request: DumpRequest, output_dir: str, config: ModelConfig, device_label: str) -> FolderClaim:
    """The logits folder checked and locked (`runner.logits_folder`)."""
    from logitsdump.runner.logits_folder import claim

    layout = _layout(config, task, output_dir, device_label)
    return claim(layout.logits_dir, layout.output_dir, request)


def _writer(backend: Backend, task: str, request: DumpRequest, output_dir: str, claim: FolderClaim) -> LogitsWriter:
    from logitsdump.runner.dumping import DumpContext, LogitsWriter

    config, provenance = backend.config, backend.provenance()
    layout = _layout(config, task, output_dir, backend.device.label)
    if layout.logits_dir != claim.folder:  # the backend chose another device than the one claimed
        claim = _claim(task, request, output_dir, config, backend.device.label)
    writer = LogitsWriter(layout.logits_dir, request, DumpContext(
        task=task, model_name=config.model_name, model_path=provenance.model_path, dtype=config.data_type,
        vocab_size=backend.vocab_size, device=provenance.device, versions=dict(provenance.versions),
    ))
    writer.prepare(backend.token_texts(range(backend.vocab_size)), claim)
    return writer


# ---- tokenizing as lm-eval's HF model ------------------------------------------------------------


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """`HFLM.tok_encode` with its defaults: the tokenizer's special tokens, unless the text starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    special = not (isinstance(bos, str) and bos and text.startswith(bos))
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=special)]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's (context, continuation) token split: trailing spaces of the context move to the
    continuation, the whole is encoded and split after the context's tokens; an empty context is
    the prefix token (BOS, else EOS)."""
    if context == "":
        cont = [int(i) for i in tokenizer.encode(continuation, add_special_tokens=False)]
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return ([int(prefix)], cont) if not cont or prefix != cont[0] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = encode_text(tokenizer, context + continuation)
    head = encode_text(tokenizer, context)
    return head, whole[len(head):]


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """lm-eval's post-processing of a generation: the text before the first of each stop string."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text


def loglikelihood(logits: Sequence[Any], continuation: Sequence[int]) -> tuple[float, bool]:
    """(sum of log P(token), greedy?) of a forced continuation, computed as lm-eval does: log_softmax
    in the logits' dtype, gathered and summed in it."""
    import torch

    rows = torch.stack(list(logits)).log_softmax(dim=-1)
    target = torch.tensor(list(continuation), dtype=torch.long)
    picked = rows.gather(1, target[:, None]).squeeze(1)
    return float(picked.sum()), bool((rows.argmax(dim=-1) == target).all())


def _logged_loglikelihood(sample: Sample, request: int) -> tuple[float | None, bool | None]:
    """The (logprob, is_greedy) lm-eval logged for one request (`resps[i][0]`, written as text), or Nones."""
    try:
        value, greedy = sample.responses[request][0]
        return float(value), str(greedy).strip().lower() == "true"
    except (IndexError, TypeError, ValueError):
        return None, None


def _logged_text(sample: Sample) -> str | None:
    try:
        text = sample.responses[0][0]
    except (IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


class _Replayer:
    """Replays one doc's requests and records each case through the writer."""

    def __init__(self, backend: Backend, writer: LogitsWriter, task: str, source: Path, steps: int,
                 replay: ReplaySource | None) -> None:
        self.backend, self.writer, self.task, self.source = backend, writer, task, source
        self.steps, self.golden = steps, replay
        self.disagreements: list[str] = []

    def replay(self, doc: Sample) -> None:
        if doc.requests[0].kind == GENERATE:
            self._generate(doc, doc.requests[0])
        else:
            for number, request in enumerate(doc.requests):
                self._score(doc, number, request)

    def _base(self, doc: Sample, kind: str) -> dict[str, Any]:
        return {"task": self.task, "doc_id": doc.doc_id, "doc_hash": doc.doc_hash, "kind": kind,
                "samples_file": str(self.source)}

    def _generate(self, doc: Sample, request: Request) -> None:
        case = Case(index=doc.doc_id, subject=self.task, key=str(doc.doc_id), query=request.context, reference=None)
        if self.writer.is_complete(case):
            return
        prompt = encode_text(self.backend.tokenizer, request.context)
        extra: dict[str, Any] = {}
        if self.golden is not None:
            forced = self.golden.forced_tokens(case, doc.prompt_hash, self.steps)
            if forced is None:
                return
            decoded = self.golden.decode(self.backend, prompt, forced, self.steps)
            extra.update(self.golden.extra(decoded.own_ids or decoded.output_ids[: len(decoded.step_logits)]))
        else:
            decoded = self._greedy(prompt, request)
        text = cut_at_stops(self.backend.decode(decoded.output_ids), request.until)
        logged = _logged_text(doc)
        agrees = None if self.golden is not None or logged is None else text == logged
        if agrees is False:
            self.disagreements.append(f"{self.task} #{doc.doc_id}")
        extra["lm_eval"] = {**self._base(doc, GENERATE), "until": list(request.until),
                            "max_gen_toks": request.max_gen_toks, "logged_response": logged, "response": text,
                            "agrees_with_log": agrees}
        self.writer.save(case, decoded.step_logits, prompt, decoded.output_ids,
                         self.backend.token_texts(decoded.output_ids), text, extra)

    def _greedy(self, prompt: list[int], request: Request) -> Decoded:
        until = [u for u in request.until if u]
        backend = self.backend

        def stop(ids: Sequence[int]) -> bool:
            text = backend.decode(ids)
            return any(u in text for u in until)

        return backend.greedy([prompt], request.max_gen_toks, self.steps, limits=[request.max_gen_toks],
                              stops=[stop if until else None])[0]

    def _score(self, doc: Sample, number: int, request: Request) -> None:
        case = Case(index=doc.doc_id, subject=choice_subject(self.task, number), key=str(doc.doc_id),
                    query=request.context, reference=None)
        if self.writer.is_complete(case):
            return
        prompt, continuation = encode_pair(self.backend.tokenizer, request.context, request.continuation)
        if not continuation:
            log.warning("doc %s, continuation %d (%r) has no tokens of its own: skipped", doc.doc_id, number,
                        request.continuation)
            return
        logits = self.backend.prefill_logits(prompt, continuation)
        value, greedy = loglikelihood(logits, continuation)
        logged, logged_greedy = _logged_loglikelihood(doc, number)
        agrees = None if logged is None else abs(value - logged) <= LOGLIKELIHOOD_RTOL * max(1.0, abs(logged))
        if agrees is False:
            self.disagreements.append(f"{case.subject} #{doc.doc_id}")
        own = [int(row.argmax()) for row in logits]
        extra = {
            "replay": {"golden_dir": str(self.source), "mode": "prefill", "own_tokens": own},
            "lm_eval": {**self._base(doc, LOGLIKELIHOOD), "request": number, "continuation": request.continuation,
                        "loglikelihood": value, "is_greedy": greedy, "logged_loglikelihood": logged,
                        "logged_is_greedy": logged_greedy, "agrees_with_log": agrees},
        }
        self.writer.save(case, logits, prompt, continuation, self.backend.token_texts(continuation),
                         request.continuation, extra)
