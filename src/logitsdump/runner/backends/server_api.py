"""What each kind of server is sent and what its answer means: request bodies and answer parsing, pure.

Three API kinds (`API_KINDS`), each a class with the same methods:
- `vllm`: vLLM's OpenAI-compatible `/v1/completions` (vllm-project/vllm 0.32,
  `entrypoints/openai/completion/protocol.py`): `prompt` as token ids; `logprobs` = k (the server's
  `--max-logprobs` caps it, default 20; -1 asks for the whole vocabulary and needs `--max-logprobs -1`);
  `return_tokens_as_token_ids` (top-logprob keys `token_id:N`, so no text is mapped back) and
  `return_token_ids`; `prompt_logprobs` = k scores every prompt token in one request (teacher forcing:
  golden's continuation is sent as part of the prompt). Values are what `--logprobs-mode` says
  (default `raw_logprobs`: log-softmax of the logits before any processor); -inf is clamped to -9999.
- `sglang`: SGLang's native `/generate` (sgl-project/sglang `io_struct.py::GenerateReqInput`):
  `input_ids`, `return_logprob`, `top_logprobs_num` = k, `logprob_start_len` (-1: output tokens only;
  s: also the prompt from position s, where `input_token_logprobs[0]` is always None, so s = len(prompt)
  - 1 scores the first continuation token); answers in `meta_info` as `[logprob, token_id, text]`.
  Greedy logprobs are log-softmax of the raw logits (`SGLANG_RETURN_ORIGINAL_LOGPROB=1` forces raw
  logprobs under sampling too). `ignore_eos` also disables `stop_token_ids` there, so generation runs to
  the limit and the ids are cut at our EOS.
- `mindie` and `openai`: an OpenAI-style `/v1/completions` that takes text only (MindIE-Service's
  vLLM-compatible interface: `prompt` is a string, `logprobs` in [0, 5], refused with Prefix Cache,
  SplitFuse, parallel decoding or PD separation; no prompt logprobs). The prompt is our token ids decoded
  to text, re-tokenised by the server (checked against `usage.prompt_tokens` where it answers one); the
  top-logprob keys are token texts, mapped back to ids through our tokenizer (a text shared by several
  ids cannot be mapped: that entry is dropped). Teacher forcing is one request per position.

Every sampling field is sent explicitly (temperature 0, top-p 1, no top-k/min-p, no penalties, a seed,
max tokens) so that server defaults (vLLM `--generation-config auto`, its `max_tokens` 16; SGLang
`--sampling-defaults model`) change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

API_KINDS = ("vllm", "sglang", "mindie", "openai")
#: The largest k an API kind documents (None: the server's own setting decides).
DOCUMENTED_MAX_K: dict[str, int | None] = {"vllm": None, "sglang": None, "mindie": 5, "openai": 5}
#: How a replay scores golden's tokens with each kind, when nothing else is asked for.
SCORING: dict[str, str] = {"vllm": "prompt_logprobs", "sglang": "logprob_start_len", "mindie": "per_position",
                           "openai": "per_position"}
REPLAY_METHODS = ("prompt_logprobs", "logprob_start_len", "per_position")
SEED = 0


class AnswerError(ValueError):
    """A server's answer that does not have the shape its API documents."""


class WrongAnswer(AnswerError):
    """An answer that every request would get alike: no logprobs (refused or ignored), or another API's shape."""


@dataclass(frozen=True)
class Position:
    """One position's log probabilities as the server reported them."""

    entries: Mapping[int, float]  # token id -> logprob: the top entries (and the chosen token)
    chosen: int  # the token taken here (generated, or the prompt token scored)
    chosen_logprob: float | None  # None: not reported


@dataclass(frozen=True)
class Answer:
    """One generation: the ids the server produced and, per generated token, its position's logprobs."""

    token_ids: list[int]
    positions: list[Position]
    prompt_tokens: int | None = None  # how many prompt tokens the server saw (usage), when it says
    finish_reason: str | None = None
    dropped_entries: int = 0  # text-mode entries that could not be mapped to one id


@dataclass(frozen=True)
class Request:
    path: str
    body: dict[str, Any]


@dataclass
class TextVocab:
    """Token text <-> ids for the text-mode APIs: each id's text, and the texts shared by several ids."""

    texts: Sequence[str]
    _ids: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _shared: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        for token, text in enumerate(self.texts):
            if text in self._ids:
                self._shared.add(text)
            else:
                self._ids[text] = token

    def id_of(self, text: str) -> int | None:
        """The one id whose text is `text`; None when no id or several ids have it."""
        return None if text in self._shared else self._ids.get(text)


def _greedy_fields() -> dict[str, Any]:
    return {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "repetition_penalty": 1.0, "seed": SEED, "n": 1}


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise AnswerError(f"{what}: expected a number, found {value!r}")
    return float(value)


def _token_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AnswerError(f"{what}: expected a token id, found {value!r}")
    return value


def _choice(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping) or not isinstance(data.get("choices"), list) or not data["choices"]:
        raise WrongAnswer("expected an OpenAI completion with a non-empty 'choices' list")
    choice = data["choices"][0]
    if not isinstance(choice, Mapping):
        raise AnswerError("choices[0] is not an object")
    return choice


def _usage_prompt_tokens(data: Mapping[str, Any]) -> int | None:
    usage = data.get("usage")
    value = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class VllmApi:
    """vLLM's `/v1/completions` with token-id prompts (see the module docstring)."""

    kind = "vllm"
    token_prompts = True
    scoring = "prompt_logprobs"
    identity_paths = ("/version", "/v1/models", "/server_info?config_format=json")

    def __init__(self, model: str) -> None:
        self.model = model

    def _body(self, prompt: Sequence[int], max_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "prompt": [int(t) for t in prompt], "max_tokens": int(max_tokens),
                **_greedy_fields(), "min_tokens": 0, "stop": [], "echo": False, "stream": False,
                "skip_special_tokens": False, "return_tokens_as_token_ids": True, "return_token_ids": True}

    def generate(self, prompt: Sequence[int], max_tokens: int, k: int | None, stop_ids: Sequence[int]) -> Request:
        body = self._body(prompt, max_tokens)
        body.update(ignore_eos=True, stop_token_ids=sorted(int(t) for t in stop_ids), logprobs=k)
        return Request("/v1/completions", body)

    def parse_generate(self, data: Any, k: int | None) -> Answer:
        choice = _choice(data)
        logprobs = choice.get("logprobs")
        ids = choice.get("token_ids")
        if k is not None and not isinstance(logprobs, Mapping):
            raise WrongAnswer("the answer has no logprobs (the server refuses them, or ignored 'logprobs')")
        tokens = logprobs.get("tokens") if isinstance(logprobs, Mapping) else None
        if not isinstance(ids, list):
            if not isinstance(tokens, list):
                raise AnswerError("the answer has neither token_ids nor logprobs.tokens")
            ids = [_placeholder_id(t) for t in tokens]
        token_ids = [_token_id(t, "token_ids") for t in ids]
        positions: list[Position] = []
        if k is not None:
            assert isinstance(logprobs, Mapping)
            chosen_values, tops = logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
            if not (isinstance(chosen_values, list) and isinstance(tops, list)
                    and len(chosen_values) == len(tops) == len(token_ids)):
                raise AnswerError("logprobs.token_logprobs / top_logprobs do not match the generated tokens")
            for t, (token, value, top) in enumerate(zip(token_ids, chosen_values, tops, strict=True)):
                if not isinstance(top, Mapping):
                    raise AnswerError(f"top_logprobs[{t}] is not an object")
                entries = {_placeholder_id(key): _finite(v, f"top_logprobs[{t}]") for key, v in top.items()}
                chosen = None if value is None else _finite(value, f"token_logprobs[{t}]")
                positions.append(Position(entries, token, chosen))
        reason = choice.get("finish_reason")
        return Answer(token_ids, positions, _usage_prompt_tokens(data), reason if isinstance(reason, str) else None)

    def score(self, prompt: Sequence[int], continuation: Sequence[int], k: int) -> Request:
        body = self._body([*prompt, *continuation], 1)
        body.update(ignore_eos=True, stop_token_ids=[], logprobs=None, prompt_logprobs=k)
        return Request("/v1/completions", body)

    def parse_score(self, data: Any, prompt: Sequence[int], continuation: Sequence[int]) -> list[Position]:
        rows = _choice(data).get("prompt_logprobs")
        total = len(prompt) + len(continuation)
        if not isinstance(rows, list) or len(rows) != total:
            raise WrongAnswer(f"expected prompt_logprobs for {total} prompt tokens, found "
                              f"{len(rows) if isinstance(rows, list) else type(rows).__name__}")
        out = []
        for t, token in enumerate(continuation):
            row = rows[len(prompt) + t]
            if not isinstance(row, Mapping):
                raise AnswerError(f"prompt_logprobs[{len(prompt) + t}] is not an object")
            entries: dict[int, float] = {}
            for key, item in row.items():
                value = item.get("logprob") if isinstance(item, Mapping) else item
                entries[_int_key(key)] = _finite(value, f"prompt_logprobs[{len(prompt) + t}]")
            out.append(Position(entries, int(token), entries.get(int(token))))
        return out


def _placeholder_id(text: Any) -> int:
    """The id of vLLM's `token_id:N` placeholder (return_tokens_as_token_ids)."""
    if isinstance(text, str) and text.startswith("token_id:") and text[9:].isdigit():
        return int(text[9:])
    raise WrongAnswer(f"expected a 'token_id:N' token (return_tokens_as_token_ids), found {text!r}: is this vLLM?")


def _int_key(key: Any) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isascii() and key.isdigit():
        return int(key)
    raise AnswerError(f"expected a token id key, found {key!r}")


class SglangApi:
    """SGLang's native `/generate` (see the module docstring)."""

    kind = "sglang"
    token_prompts = True
    scoring = "logprob_start_len"
    identity_paths = ("/get_model_info", "/get_server_info", "/model_info", "/server_info")

    def __init__(self, model: str) -> None:
        self.model = model

    def _body(self, prompt: Sequence[int], max_tokens: int, k: int | None, start: int) -> dict[str, Any]:
        sampling = {**_greedy_fields(), "max_new_tokens": int(max_tokens), "min_new_tokens": 0, "stop": [],
                    "ignore_eos": True, "skip_special_tokens": False, "no_stop_trim": True}
        sampling.pop("seed")  # SGLang's sampling seed is `sampling_seed`; greedy needs none
        body: dict[str, Any] = {"input_ids": [int(t) for t in prompt], "sampling_params": sampling,
                                "stream": False, "return_text_in_logprobs": False}
        if k is not None:
            body.update(return_logprob=True, top_logprobs_num=int(k), logprob_start_len=int(start))
        return body

    def generate(self, prompt: Sequence[int], max_tokens: int, k: int | None, stop_ids: Sequence[int]) -> Request:
        return Request("/generate", self._body(prompt, max_tokens, k, -1))

    def parse_generate(self, data: Any, k: int | None) -> Answer:
        meta = _meta(data)
        chosen = meta.get("output_token_logprobs")
        ids = data.get("output_ids") if isinstance(data, Mapping) else None
        if k is not None and not isinstance(chosen, list):
            raise WrongAnswer("meta_info has no output_token_logprobs (return_logprob refused or ignored)")
        if isinstance(chosen, list):
            token_ids = [_token_id(_triple(item, f"output_token_logprobs[{t}]")[1], "output_token_logprobs")
                         for t, item in enumerate(chosen)]
        elif isinstance(ids, list):
            token_ids = [_token_id(t, "output_ids") for t in ids]
        else:
            raise AnswerError("the answer has neither output_ids nor meta_info.output_token_logprobs")
        positions: list[Position] = []
        if k is not None:
            tops = meta.get("output_top_logprobs")
            if not isinstance(tops, list) or len(tops) != len(token_ids):
                raise AnswerError("meta_info.output_top_logprobs does not match the generated tokens")
            for t, (item, top) in enumerate(zip(chosen, tops, strict=True)):  # type: ignore[arg-type]
                value, token = _triple(item, f"output_token_logprobs[{t}]")
                positions.append(Position(_entries(top, f"output_top_logprobs[{t}]"), token,
                                          None if value is None else _finite(value, "output_token_logprobs")))
        prompt_tokens = meta.get("prompt_tokens")
        reason = meta.get("finish_reason")
        reason_type = reason.get("type") if isinstance(reason, Mapping) else reason
        return Answer(token_ids, positions, prompt_tokens if isinstance(prompt_tokens, int) else None,
                      reason_type if isinstance(reason_type, str) else None)

    def score(self, prompt: Sequence[int], continuation: Sequence[int], k: int) -> Request:
        # input_token_logprobs[0] is always None: start one before the continuation to score its first token
        return Request("/generate", self._body([*prompt, *continuation], 1, k, len(prompt) - 1))

    def parse_score(self, data: Any, prompt: Sequence[int], continuation: Sequence[int]) -> list[Position]:
        meta = _meta(data)
        chosen, tops = meta.get("input_token_logprobs"), meta.get("input_top_logprobs")
        wanted = len(continuation) + 1
        if not (isinstance(chosen, list) and isinstance(tops, list) and len(chosen) == len(tops) == wanted):
            raise WrongAnswer(f"expected input_token_logprobs and input_top_logprobs for {wanted} positions "
                              f"(logprob_start_len {len(prompt) - 1})")
        out = []
        for t, token in enumerate(continuation):
            value, reported = _triple(chosen[t + 1], f"input_token_logprobs[{t + 1}]")
            if reported != int(token):
                raise AnswerError(f"input_token_logprobs[{t + 1}] is for token {reported}, expected {token}")
            out.append(Position(_entries(tops[t + 1], f"input_top_logprobs[{t + 1}]"), int(token),
                                None if value is None else _finite(value, "input_token_logprobs")))
        return out


def _meta(data: Any) -> Mapping[str, Any]:
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    meta = data.get("meta_info") if isinstance(data, Mapping) else None
    if not isinstance(meta, Mapping):
        raise WrongAnswer("expected SGLang's answer with a 'meta_info' object")
    return meta


def _triple(item: Any, what: str) -> tuple[float | None, int]:
    """(logprob, token id) of SGLang's `[logprob, token_id, text]`."""
    if not isinstance(item, (list, tuple)) or len(item) < 2:
        raise AnswerError(f"{what}: expected [logprob, token_id, text], found {item!r}")
    value = None if item[0] is None else _finite(item[0], what)
    return value, _token_id(item[1], what)


def _entries(top: Any, what: str) -> dict[int, float]:
    if not isinstance(top, list):
        raise AnswerError(f"{what}: expected a list of [logprob, token_id, text]")
    out: dict[int, float] = {}
    for item in top:
        value, token = _triple(item, what)
        if value is not None:
            out.setdefault(token, value)
    return out


class TextCompletionsApi:
    """An OpenAI-style `/v1/completions` that takes text (MindIE-Service; any OpenAI-compatible server)."""

    token_prompts = False
    scoring = "per_position"
    identity_paths = ("/v1/models",)

    def __init__(self, model: str, kind: str, decode: Callable[[Sequence[int]], str], vocab: TextVocab) -> None:
        self.model = model
        self.kind = kind
        self._decode = decode
        self.vocab = vocab

    def generate(self, prompt: Sequence[int], max_tokens: int, k: int | None, stop_ids: Sequence[int]) -> Request:
        body = {"model": self.model, "prompt": self._decode(prompt), "max_tokens": int(max_tokens),
                **_greedy_fields(), "stop": [], "echo": False, "stream": False, "logprobs": k,
                "ignore_eos": True, "skip_special_tokens": False}
        if self.kind == "mindie":
            body.pop("min_p")  # not in MindIE's documented fields
        return Request("/v1/completions", body)

    def parse_generate(self, data: Any, k: int | None) -> Answer:
        choice = _choice(data)
        logprobs = choice.get("logprobs")
        if not isinstance(logprobs, Mapping) or not isinstance(logprobs.get("tokens"), list):
            raise WrongAnswer("the answer has no logprobs.tokens (text-mode servers report generated tokens "
                              "only there; the server refuses logprobs, or ignored them)")
        token_ids, positions, dropped = [], [], 0
        tops = logprobs.get("top_logprobs") or []
        values = logprobs.get("token_logprobs") or []
        for t, text in enumerate(logprobs["tokens"]):
            token = self.vocab.id_of(text) if isinstance(text, str) else None
            if token is None:
                raise AnswerError(f"generated token {t} {text!r} maps to no single token id of our tokenizer")
            token_ids.append(token)
            if k is None:
                continue
            top = tops[t] if t < len(tops) else None
            if not isinstance(top, Mapping):
                raise AnswerError(f"top_logprobs[{t}] is missing")
            entries: dict[int, float] = {}
            for key, value in top.items():
                mapped = self.vocab.id_of(key)
                if mapped is None:
                    dropped += 1
                    continue
                entries.setdefault(mapped, _finite(value, f"top_logprobs[{t}]"))
            chosen = values[t] if t < len(values) else None
            positions.append(Position(entries, token, None if chosen is None else _finite(chosen, "token_logprobs")))
        reason = choice.get("finish_reason")
        return Answer(token_ids, positions, _usage_prompt_tokens(data), reason if isinstance(reason, str) else None,
                      dropped)


def make_api(kind: str, model: str, decode: Callable[[Sequence[int]], str], token_texts: Sequence[str]
             ) -> VllmApi | SglangApi | TextCompletionsApi:
    """The API of `kind` (one of API_KINDS)."""
    if kind == "vllm":
        return VllmApi(model)
    if kind == "sglang":
        return SglangApi(model)
    return TextCompletionsApi(model, kind, decode, TextVocab(token_texts))
