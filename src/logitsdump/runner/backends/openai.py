"""The server backend: a deployed model server (vLLM, SGLang, MindIE-Service) as a `Backend`, over HTTP.

The model YAML names it (`requested_gpu_framework: Server`, or `eval --backend server`) and says where
the server is in its `server:` mapping (`LOGITSDUMP_SERVER`, a JSON object, overrides any key):

```yaml
server:
  base_url: http://127.0.0.1:8000   # required
  api: vllm            # vllm | sglang | mindie | openai (server_api.API_KINDS)
  model: ""            # the served model name; "" = the only one /v1/models lists
  top_k: 20            # logprobs per step; -1 = the whole vocabulary (vLLM --max-logprobs -1)
  logprobs_mode: raw_logprobs   # what the server's values are (vLLM --logprobs-mode); checked where it says
  api_key_env: ""      # the environment variable holding a bearer key (never the key itself)
  concurrency: 4       # requests in flight (rows of a batch, positions of a per-position replay)
  timeout: 120         # seconds per request
  retries: 3           # more tries after the first, waiting backoff * 2**n seconds
  backoff: 1.0
  replay: auto         # teacher forcing: auto (the API's best) | prompt_logprobs | logprob_start_len | per_position
  device_label: ""     # the {dev} of the output folders (GPU, NPU, CPU); "" = --device's
```
`model_path` still names a local folder with the model's tokenizer and config: prompts are tokenised here
and sent as token ids (vLLM, SGLang), so the server never re-tokenises text; the text-only APIs (MindIE,
plain OpenAI) get our ids decoded, and the prompt length the server reports is checked against ours.

What comes back per step: the top-k log probabilities (`topkfile.TopkStep`, written as top-k files), or with
`top_k: -1` the whole vocabulary as a dense float32 vector (written as ordinary logits files, `logits_kind`
the server's mode). Greedy tokens, EOS and stopping are decided here as in the other backends (the server
is told `ignore_eos`, our EOS ids as stop ids where that works, and the ids are cut here too).

A request that fails is retried (`http_client`); after the last retry its case raises `CaseUnavailable`:
the evaluation records it as missing and fails at the end, never dropping it. A server that refuses
logprobs, caps k below what is asked, rejects the key or the model, or answers in another API's shape is a
`ConfigError` at once. What the server reports about itself (`/version`, `/v1/models`, vLLM's dev
`/server_info`, SGLang's `/get_model_info` and `/get_server_info`) goes into every case's manifest
(`extra.server`), with the k, the logprobs mode, and the requests each case took (`extra.server_requests`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from logitsdump.errors import ConfigError
from logitsdump.logs import get_logger
from logitsdump.runner.backends.base import CaseUnavailable, Decoded, Provenance, StopRule
from logitsdump.runner.backends.hf_tokenizer import TokenizerMethods, eos_ids, load_tokenizer
from logitsdump.runner.backends.http_client import JsonClient, RequestFailed, RetryPolicy
from logitsdump.runner.backends.server_api import (
    API_KINDS,
    DOCUMENTED_MAX_K,
    REPLAY_METHODS,
    Answer,
    AnswerError,
    Position,
    WrongAnswer,
    make_api,
)
from logitsdump.runner.config import ModelConfig, resolve_model_path
from logitsdump.runner.device import Device
from logitsdump.topkfile import LOGPROB_MODES, TopkStep

log = get_logger("server")

#: A JSON object of `server:` settings that replace the model YAML's.
SERVER_ENV = "LOGITSDUMP_SERVER"
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs", "raw_logits", "processed_logits")
#: The output folders' {dev} labels a server run may take.
DEVICE_LABELS = ("GPU", "NPU", "CPU")
#: Identity answers are kept up to this many characters each in the manifest.
IDENTITY_CHARS = 4000

T = TypeVar("T")


@dataclass(frozen=True)
class ServerSettings:
    """The model YAML's `server:` mapping (see the module docstring for each key)."""

    base_url: str
    api: str = "vllm"
    model: str = ""
    top_k: int = 20
    logprobs_mode: str = "raw_logprobs"
    api_key_env: str = ""
    concurrency: int = 4
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    replay: str = "auto"
    device_label: str = ""

    @property
    def replay_method(self) -> str:
        """How golden's tokens are scored in a replay (the API's own way unless `replay` says otherwise)."""
        from logitsdump.runner.backends.server_api import SCORING

        return SCORING[self.api] if self.replay == "auto" else self.replay


def server_settings(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServerSettings:
    """The settings of a model YAML's `server:` mapping with SERVER_ENV on top; every problem in one ConfigError."""
    data = dict(raw)
    override = (environ if environ is not None else os.environ).get(SERVER_ENV, "").strip()
    if override:
        try:
            extra = json.loads(override)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{SERVER_ENV} is not valid JSON: {err}") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"{SERVER_ENV} must be a JSON object of server settings")
        data.update(extra)
    fields = {f.name: f for f in dataclasses.fields(ServerSettings)}
    problems = [f"unknown key {key!r}" for key in data if key not in fields]
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in data or data[name] is None:
            continue
        value, kind = data[name], spec.type
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = {"str": str, "int": int, "float": float}[str(kind)]
        if isinstance(value, bool) or not isinstance(value, expected):
            problems.append(f"{name!r} must be {kind}, found {value!r}")
            continue
        values[name] = value
    if not values.get("base_url"):
        problems.append(f"'base_url' is required (e.g. http://127.0.0.1:8000), in the model YAML's server: "
                        f"mapping or {SERVER_ENV}")
    settings = ServerSettings(**{"base_url": "", **values})
    problems += _check(settings)
    if problems:
        raise ConfigError("server settings: " + "; ".join(problems))
    return settings


def _check(s: ServerSettings) -> list[str]:
    problems = []
    if s.base_url and not s.base_url.startswith(("http://", "https://")):
        problems.append(f"'base_url' must start with http:// or https://, found {s.base_url!r}")
    if s.api not in API_KINDS:
        problems.append(f"'api' must be one of {', '.join(API_KINDS)}, found {s.api!r}")
    if s.top_k == 0 or s.top_k < -1:
        problems.append(f"'top_k' must be >= 1, or -1 for the whole vocabulary, found {s.top_k}")
    if s.logprobs_mode not in LOGPROBS_MODES:
        problems.append(f"'logprobs_mode' must be one of {', '.join(LOGPROBS_MODES)}, found {s.logprobs_mode!r}")
    elif s.top_k != -1 and s.logprobs_mode not in LOGPROB_MODES:
        problems.append(f"'logprobs_mode' {s.logprobs_mode} with top_k {s.top_k}: the top k of unnormalised logits "
                        "cannot be compared across devices; serve raw_logprobs, or ask for the whole vocabulary "
                        "(top_k: -1, vLLM --max-logprobs -1)")
    limit = DOCUMENTED_MAX_K.get(s.api)
    if limit is not None and (s.top_k > limit or s.top_k == -1):
        problems.append(f"'top_k' {s.top_k}: the {s.api} API returns at most {limit} logprobs per step")
    if s.api in ("mindie", "openai") and s.replay in ("prompt_logprobs", "logprob_start_len"):
        problems.append(f"'replay' {s.replay}: the {s.api} API has no prompt logprobs; use per_position")
    if (s.api == "vllm" and s.replay == "logprob_start_len") or (s.api == "sglang" and s.replay == "prompt_logprobs"):
        problems.append(f"'replay' {s.replay} is not an {s.api} API feature")
    if s.replay not in ("auto", *REPLAY_METHODS):
        problems.append(f"'replay' must be auto or one of {', '.join(REPLAY_METHODS)}, found {s.replay!r}")
    if s.concurrency < 1 or s.retries < 0 or not s.timeout > 0 or s.backoff < 0:
        problems.append("'concurrency' must be >= 1, 'retries' >= 0, 'timeout' > 0 and 'backoff' >= 0")
    if s.device_label and s.device_label not in DEVICE_LABELS:
        problems.append(f"'device_label' must be one of {', '.join(DEVICE_LABELS)}, found {s.device_label!r}")
    if s.api_key_env and s.api_key_env not in os.environ:
        problems.append(f"'api_key_env' names {s.api_key_env}, which is not set")
    return problems


class ServerBackend(TokenizerMethods):
    """A model behind an HTTP server; tokenization, EOS and stopping are ours (the local tokenizer)."""

    def __init__(self, config: ModelConfig, device: Device, *, tensor_parallel: bool = False) -> None:
        if tensor_parallel:
            raise ConfigError("the server backend runs no model here: start one process (no torchrun)")
        self.settings = server_settings(config.server)
        self.config = config
        self.model_path = resolve_model_path(config)
        label = self.settings.device_label or device.label
        self.device = Device(f"server:{self.settings.base_url}", label)
        try:
            self.tokenizer = load_tokenizer(self.model_path, config)
            import transformers

            model_config = transformers.AutoConfig.from_pretrained(
                self.model_path, trust_remote_code=config.trust_remote_code, local_files_only=True)
            try:
                generation = transformers.GenerationConfig.from_pretrained(self.model_path, local_files_only=True)
            except OSError:
                generation = None
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot load the tokenizer from {self.model_path}: {first}") from err
        self.eos_ids = eos_ids((generation, model_config), self.tokenizer)
        size = getattr(model_config, "vocab_size", None) or getattr(
            getattr(model_config, "text_config", None), "vocab_size", None)
        if not isinstance(size, int) or size <= 0:
            raise ConfigError(f"{self.model_path}/config.json has no vocab_size")
        self._vocab_size = size
        key = os.environ.get(self.settings.api_key_env) if self.settings.api_key_env else None
        policy = RetryPolicy(self.settings.timeout, self.settings.retries, self.settings.backoff)
        self.client = JsonClient(self.settings.base_url, policy, key)
        self._lock = threading.Lock()
        self._warned_short = False
        self._method_used: str | None = None
        model = self.settings.model or ("" if self.settings.api == "sglang" else self._served_model())
        texts = self.token_texts(range(size)) if self.settings.api in ("mindie", "openai") else []
        self.api = make_api(self.settings.api, model, self._decode_all, texts)
        self.identity = self._identity(model)
        log.info("server %s (%s, model %r): top-%s %s", self.settings.base_url, self.settings.api, model,
                 "all" if self.settings.top_k == -1 else self.settings.top_k, self.settings.logprobs_mode)

    # ---- the Backend protocol -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def greedy(self, batch: Sequence[Sequence[int]], max_new_tokens: int, keep_steps: int = 0,
               forced: Sequence[Sequence[int]] | None = None, limits: Sequence[int] | None = None,
               stops: Sequence[StopRule | None] | None = None) -> list[Decoded]:
        """Greedy decoding, one request per row (`concurrency` in flight); `forced`: a replay (see `prefill_logits`)."""
        if forced is not None:
            results = []
            for prompt, tokens in zip(batch, forced, strict=True):
                steps = self._score(prompt, tokens) if tokens else []
                own = [_argmax(s) for s in steps]
                results.append(Decoded(list(tokens), steps[:keep_steps], self.dense_first(steps), own))
            return results
        want = keep_steps > 0

        def one(row: int) -> Decoded:
            limit = min(limits[row], max_new_tokens) if limits is not None else max_new_tokens
            answer = self._generate(batch[row], limit, want)
            ids, steps = _cut(answer, self.eos_ids, stops[row] if stops is not None else None)
            converted = [self._step(p) for p in steps[:keep_steps]] if want else []
            return Decoded(ids, converted, self.dense_first(converted))

        return self._map(one, range(len(batch)))

    def last_logits(self, batch: Sequence[Sequence[int]]) -> list[Any]:
        """One generated step per sequence: its top-k (or whole-vocabulary) log probabilities."""
        return self._map(lambda ids: self._step(self._generate(ids, 1, True).positions[0]), batch)

    def prefill_logits(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[Any]:
        """A replay: the log probabilities predicting each golden token, by `settings.replay_method`."""
        return self._score(prompt, continuation)

    def token_logprobs(self, ids: Sequence[int], start: int) -> list[float]:
        """log P(ids[j] | ids[:j]) for j = start ... len(ids)-1 (for tasks that score their query)."""
        steps = self._score(ids[:start], ids[start:])
        out = []
        for step, token in zip(steps, ids[start:], strict=True):
            value = step.logprob_of(int(token)) if isinstance(step, TopkStep) else float(step[int(token)])
            if value is None:
                raise CaseUnavailable(f"the server did not report the logprob of query token {token}")
            out.append(float(value))
        return out

    def provenance(self) -> Provenance:
        from logitsdump import __version__

        version = self.identity.get("version")
        versions = {"logitsdump": __version__, f"server_{self.settings.api}": str(version or "unknown")}
        extra = {"server": self.identity,
                 "topk": {"k": self.settings.top_k, "logprobs_mode": self.settings.logprobs_mode}}
        return Provenance(str(self.model_path), self.device.torch_device, versions, extra=extra)

    def take_notes(self) -> dict[str, Any]:
        """What the last case cost (requests, retries, seconds) and how a replay was scored; then reset."""
        notes: dict[str, Any] = {"server_requests": self.client.counters.take()}
        if self._method_used is not None:
            notes["replay_method"] = self._method_used
            self._method_used = None
        return notes

    def dense_first(self, steps: Sequence[Any]) -> Any:
        """Step 0 as a float32 [vocab] tensor (-inf where the server reported nothing), for judges of logits."""
        if not steps:
            return None
        first = steps[0]
        if not isinstance(first, TopkStep):
            return first.float().clone()
        import torch

        row = torch.full((self._vocab_size,), float("-inf"), dtype=torch.float32)
        for token, value in first.known().items():
            if 0 <= token < self._vocab_size:
                row[token] = value
        return row

    # ---- requests -----------------------------------------------------------------------------

    def _k(self) -> int:
        return self.settings.top_k

    def _generate(self, prompt: Sequence[int], max_tokens: int, logprobs: bool) -> Answer:
        request = self.api.generate(prompt, max(int(max_tokens), 1), self._k() if logprobs else None,
                                    sorted(self.eos_ids))
        data = self._post(request.path, request.body)
        try:
            answer = self.api.parse_generate(data, self._k() if logprobs else None)
        except AnswerError as err:
            raise self._answer_problem(err) from None
        if not self.api.token_prompts and answer.prompt_tokens is not None and answer.prompt_tokens != len(prompt):
            raise CaseUnavailable(f"the server tokenised the prompt into {answer.prompt_tokens} tokens, ours has "
                                  f"{len(prompt)}: its tokenizer or special-token handling differs")
        if logprobs and not answer.positions and answer.token_ids:
            raise ConfigError(f"server {self.settings.base_url} returned no logprobs: it refuses them (MindIE: "
                              "with Prefix Cache, SplitFuse or parallel decoding on)")
        if answer.dropped_entries:
            log.debug("%d top-logprob entries had a token text shared by several ids and were dropped",
                      answer.dropped_entries)
        return answer

    def _score(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[Any]:
        """The logprobs predicting each continuation token (teacher forcing), by the replay method."""
        method = self.settings.replay_method
        self._method_used = method
        if not continuation:
            return []
        if method == "per_position":
            return self._map(lambda t: self._position(prompt, continuation, t), range(len(continuation)))
        request = self.api.score(prompt, continuation, self._k())  # type: ignore[union-attr]
        data = self._post(request.path, request.body)
        try:
            positions = self.api.parse_score(data, prompt, continuation)  # type: ignore[union-attr]
        except AnswerError as err:
            raise self._answer_problem(err) from None
        return [self._step(p) for p in positions]

    def _position(self, prompt: Sequence[int], continuation: Sequence[int], t: int) -> Any:
        """One request for position t: prompt + golden's first t tokens, one generated step."""
        answer = self._generate([*prompt, *continuation[:t]], 1, True)
        position = answer.positions[0]
        forced = int(continuation[t])
        return self._step(Position(position.entries, forced, position.entries.get(forced)))

    def _step(self, position: Position) -> Any:
        """A TopkStep (top_k >= 1), or a float32 [vocab] tensor (top_k -1); checks what the values are."""
        entries = dict(position.entries)
        if position.chosen_logprob is not None:
            entries.setdefault(position.chosen, position.chosen_logprob)
        if self.settings.logprobs_mode in LOGPROB_MODES and any(v > 1e-4 for v in entries.values()):
            raise ConfigError(f"server {self.settings.base_url} returned logprobs above 0: its values are logits "
                              f"(vLLM --logprobs-mode raw_logits?), not the {self.settings.logprobs_mode} this "
                              "model YAML declares")
        if self._k() == -1:
            return self._dense(entries)
        step = TopkStep.build(list(position.entries.items()), self._k(), position.chosen, position.chosen_logprob,
                              self.settings.logprobs_mode, self._vocab_size)
        if len(step.ids) < min(self._k(), self._vocab_size) and not self._warned_short:
            self._warned_short = True
            log.warning("server %s returned %d logprobs where %d were asked (it caps k): the dump records the %d it "
                        "gave", self.settings.base_url, len(step.ids), self._k(), len(step.ids))
        return step

    def _dense(self, entries: Mapping[int, float]) -> Any:
        import torch

        row = torch.full((self._vocab_size,), float("nan"), dtype=torch.float32)
        ids = torch.tensor([t for t in entries if 0 <= t < self._vocab_size], dtype=torch.long)
        row[ids] = torch.tensor([entries[int(t)] for t in ids.tolist()], dtype=torch.float32)
        if int(ids.numel()) != self._vocab_size:
            raise ConfigError(f"server {self.settings.base_url} returned {ids.numel()} of {self._vocab_size} logprobs "
                              "with top_k -1: start it with --max-logprobs -1")
        return row

    def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        try:
            return self.client.post(path, body)
        except RequestFailed as err:
            raise self._request_problem(err) from None

    def _request_problem(self, err: RequestFailed) -> Exception:
        where = f"server {self.settings.base_url}"
        if err.status in (401, 403):
            return ConfigError(f"{where} refused the request ({err}): check api_key_env")
        if err.status == 404:
            return ConfigError(f"{where}: {err}: are base_url, api ({self.settings.api}) and model right?")
        if err.status in (400, 422) and "logprob" in err.body.lower():
            return ConfigError(f"{where} refuses top_k {self.settings.top_k}: {err} (vLLM: start it with "
                               f"--max-logprobs {self.settings.top_k}; or lower top_k)")
        return CaseUnavailable(f"{where}: {err}")

    def _answer_problem(self, err: AnswerError) -> Exception:
        """A refusal or another API's shape fails the run (every case would fail alike); anything else, the case."""
        where = f"server {self.settings.base_url} ({self.settings.api} API)"
        return ConfigError(f"{where}: {err}") if isinstance(err, WrongAnswer) else CaseUnavailable(f"{where}: {err}")

    def _map(self, work: Callable[[Any], T], items: Sequence[Any] | range) -> list[T]:
        """`work` over `items` with at most `concurrency` in flight, results in order; the first failure raises."""
        items = list(items)
        if len(items) <= 1 or self.settings.concurrency == 1:
            return [work(item) for item in items]
        pool = ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(items)),
                                  thread_name_prefix="server")
        try:
            futures = [pool.submit(work, item) for item in items]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _decode_all(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ---- what the server says about itself ----------------------------------------------------

    def _served_model(self) -> str:
        try:
            data = self.client.get("/v1/models")
        except RequestFailed as err:
            raise ConfigError(f"server {self.settings.base_url}: cannot list its models ({err}); is it running, "
                              "and is base_url right?") from None
        listed = data.get("data") if isinstance(data, Mapping) else None
        names = [m.get("id") for m in listed if isinstance(m, Mapping)] if isinstance(listed, list) else []
        names = [n for n in names if isinstance(n, str)]
        if len(names) != 1:
            raise ConfigError(f"server {self.settings.base_url} serves {len(names)} models ({', '.join(names)}): "
                              "name one with server.model")
        return names[0]

    def _identity(self, model: str) -> dict[str, Any]:
        """What the server reports about itself (each endpoint, or why it has none); checked against the settings."""
        found: dict[str, Any] = {"base_url": self.settings.base_url, "api": self.settings.api, "model": model,
                                 "top_k": self.settings.top_k, "logprobs_mode": self.settings.logprobs_mode,
                                 "replay_method": self.settings.replay_method, "endpoints": {}}
        for path in self.api.identity_paths:
            try:
                answer = self.client.get(path, retries=False)
            except RequestFailed as err:
                found["endpoints"][path] = f"unavailable: {str(err)[:200]}"
                continue
            found["endpoints"][path] = _compact(path, answer)
        self.client.counters.take()  # identity requests are not a case's
        _check_identity(found, self.settings)
        version = _version_of(found["endpoints"])
        if version is not None:
            found["version"] = version
        if found["endpoints"] and all(str(v).startswith("unavailable") for v in found["endpoints"].values()):
            raise ConfigError(f"server {self.settings.base_url} answers none of {', '.join(self.api.identity_paths)}: "
                              f"is it running, and is it a {self.settings.api} server?")
        return found


def _compact(path: str, answer: Any) -> Any:
    """The parts of an identity answer worth keeping (vLLM's /server_info is large): known keys, else truncated."""
    if path.startswith("/server_info") and isinstance(answer, Mapping):
        config = answer.get("vllm_config")
        if isinstance(config, Mapping):
            model = config.get("model_config") or {}
            cache = config.get("cache_config") or {}
            keep = {"model": model.get("model"), "dtype": model.get("dtype"),
                    "max_logprobs": model.get("max_logprobs"), "logprobs_mode": model.get("logprobs_mode"),
                    "generation_config": model.get("generation_config"), "seed": model.get("seed"),
                    "enable_prefix_caching": cache.get("enable_prefix_caching")}
            return {k: v for k, v in keep.items() if v is not None}
    if path.endswith("server_info") and isinstance(answer, Mapping):  # SGLang: its server args
        keys = ("version", "model_path", "dtype", "disable_radix_cache", "sampling_defaults",
                "enable_deterministic_inference", "chunked_prefill_size", "tp_size", "quantization", "kv_cache_dtype")
        return {k: answer.get(k) for k in keys if k in answer}
    text = json.dumps(answer, ensure_ascii=False, default=str)
    return answer if len(text) <= IDENTITY_CHARS else text[:IDENTITY_CHARS] + "..."


def _version_of(endpoints: Mapping[str, Any]) -> str | None:
    for answer in endpoints.values():
        if isinstance(answer, Mapping) and isinstance(answer.get("version"), str):
            return answer["version"]
    return None


def _check_identity(found: Mapping[str, Any], settings: ServerSettings) -> None:
    """Refuse a server that says it is set up otherwise than the settings declare (vLLM's /server_info)."""
    info = found["endpoints"].get("/server_info?config_format=json")
    if not isinstance(info, Mapping):
        return
    mode = info.get("logprobs_mode")
    if isinstance(mode, str) and mode != settings.logprobs_mode:
        raise ConfigError(f"server {settings.base_url} runs --logprobs-mode {mode}, the model YAML declares "
                          f"{settings.logprobs_mode}")
    cap = info.get("max_logprobs")
    if isinstance(cap, int) and cap != -1 and (settings.top_k == -1 or settings.top_k > cap):
        raise ConfigError(f"server {settings.base_url} allows {cap} logprobs per step (--max-logprobs), "
                          f"top_k is {settings.top_k}")


def _argmax(step: Any) -> int:
    return step.top_id if isinstance(step, TopkStep) else int(step.argmax())


def _cut(answer: Answer, eos: set[int], stop: StopRule | None) -> tuple[list[int], list[Position]]:
    """The generated ids up to and including the first EOS or the first token after which `stop` holds."""
    ids = answer.token_ids
    end = len(ids)
    for index, token in enumerate(ids):
        if token in eos or (stop is not None and stop(ids[: index + 1])):
            end = index + 1
            break
    return ids[:end], answer.positions[:end]
