"""A small model server for the server backend's tests: vLLM-, SGLang- and MindIE-shaped answers, with faults.

It answers from a "model" that gives the next-token log probabilities of a sequence of ids: a fixed
synthetic one (`SyntheticModel`, no weights: fault tests), or the real tiny model (`HFModel`, the slow
tests that check the backend against HF). `faults` is a list of actions taken by the next POST requests,
one each, then normal answers: "500" (HTTP 500), "429", "drop" (the connection closes without an answer),
"slow" (answers after `slow_seconds`), "garbage" (not JSON), "nologprobs" (vLLM: logprobs null),
"400logprobs" (vLLM's refusal of a k above --max-logprobs). `cap` returns at most that many top
logprobs, silently. Every POST body is kept in `requests`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

VOCAB = 259
EOS = 2


class SyntheticModel:
    """A deterministic next-token distribution over VOCAB tokens from the ids so far (no weights)."""

    vocab = VOCAB

    def __init__(self, ascii_only: bool = False) -> None:
        self.ascii_only = ascii_only  # the tiny tokenizer's ids 35..130 are printable ASCII bytes

    def logprobs(self, ids: Sequence[int]) -> np.ndarray:
        v = np.arange(self.vocab, dtype=np.float64)
        seed = (sum((i + 1) * (t + 3) for i, t in enumerate(ids)) % 997) / 997.0
        logits = 4.0 * np.cos(v * 0.37 + seed * 6.1) + 0.5 * np.sin(v * 1.3 + len(ids))
        logits[EOS] = -30.0  # never ends by itself: cases run to their limit
        if self.ascii_only:
            logits[(v < 35) | (v > 130)] -= 40.0
        return logits - np.logaddexp.reduce(logits)


class HFModel:
    """The real tiny model (HF transformers), its raw logits as log probabilities."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.vocab = backend.vocab_size

    def logprobs(self, ids: Sequence[int]) -> np.ndarray:
        logits = self.backend.last_logits([list(ids)])[0].double().numpy()
        return logits - np.logaddexp.reduce(logits)


@dataclass
class State:
    model: Any
    faults: list[str] = field(default_factory=list)
    cap: int | None = None
    slow_seconds: float = 2.0
    requests: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    tokenizer: Any = None  # text-mode APIs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None


def _top(logprobs: np.ndarray, k: int) -> list[int]:
    k = logprobs.size if k == -1 else k
    order = np.lexsort((np.arange(logprobs.size), -logprobs))
    return [int(t) for t in order[:k]]


def _greedy(state: State, prompt: list[int], max_tokens: int, stop: set[int], ignore_eos: bool):
    ids, steps = list(prompt), []
    for _ in range(max_tokens):
        lp = state.model.logprobs(ids)
        token = _top(lp, 1)[0]
        steps.append((token, lp))
        ids.append(token)
        if token in stop or (not ignore_eos and token == EOS):
            break
    return steps


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.state.paths.append(self.path)
        if self.path == "/version":
            self._send(200, {"version": "0.32.0-fake"})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fake-model", "max_model_len": 4096}]})
        elif self.path.startswith("/get_server_info"):
            self._send(200, {"version": "0.5-fake", "disable_radix_cache": True, "sampling_defaults": "openai"})
        elif self.path.startswith("/get_model_info"):
            self._send(200, {"model_path": "fake-model", "is_generation": True})
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        state = self.state
        with state.lock:
            state.requests.append(body)
            state.paths.append(self.path)
        fault = state.next_fault()
        if fault == "drop":
            self.connection.shutdown(2)  # no answer at all
            return
        if fault in ("500", "429"):
            self._send(int(fault), {"error": "injected"})
            return
        if fault == "garbage":
            self._send(200, b"<html>proxy error</html>")
            return
        if fault == "slow":
            time.sleep(state.slow_seconds)
        if fault == "400logprobs":
            self._send(400, {"error": {"message": "Requested sample logprobs of 20, which is greater than max "
                                                  "allowed: 5", "param": "logprobs"}})
            return
        if self.path == "/v1/completions":
            prompt = body["prompt"]
            if isinstance(prompt, str):
                self._send(200, self._text_completion(body))
            else:
                self._send(200, self._vllm(body, fault == "nologprobs"))
        elif self.path == "/generate":
            self._send(200, self._sglang(body))
        else:
            self._send(404, {"detail": "Not Found"})

    def _k(self, k: int) -> int:
        return k if self.state.cap is None else min(k, self.state.cap)

    def _vllm(self, body: dict, no_logprobs: bool) -> dict:
        prompt = [int(t) for t in body["prompt"]]
        k = body.get("logprobs")
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if body.get("prompt_logprobs") is not None:
            pk = body["prompt_logprobs"]
            rows: list[Any] = [None]
            for j in range(1, len(prompt)):
                lp = self.state.model.logprobs(prompt[:j])
                entries = {str(t): {"logprob": float(lp[t]), "rank": 1} for t in _top(lp, self._k(pk))}
                entries.setdefault(str(prompt[j]), {"logprob": float(lp[prompt[j]]), "rank": 99})
                rows.append(entries)
            choice["prompt_logprobs"] = rows
        steps = _greedy(self.state, prompt, int(body.get("max_tokens", 16)), set(body.get("stop_token_ids") or []),
                        bool(body.get("ignore_eos")))
        choice["token_ids"] = [t for t, _ in steps]
        choice["text"] = ""
        if k is not None and not no_logprobs:
            tops, tokens, values = [], [], []
            for token, lp in steps:
                top = {f"token_id:{t}": float(lp[t]) for t in _top(lp, self._k(k))}
                top.setdefault(f"token_id:{token}", float(lp[token]))
                tops.append(top)
                tokens.append(f"token_id:{token}")
                values.append(float(lp[token]))
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": []}
        else:
            choice["logprobs"] = None
        return {"id": "cmpl-fake", "object": "text_completion", "model": body.get("model"), "choices": [choice],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(steps)}}

    def _sglang(self, body: dict) -> dict:
        prompt = [int(t) for t in body["input_ids"]]
        sampling = body["sampling_params"]
        steps = _greedy(self.state, prompt, int(sampling["max_new_tokens"]), set(), bool(sampling.get("ignore_eos")))
        meta: dict[str, Any] = {"prompt_tokens": len(prompt), "completion_tokens": len(steps),
                                "finish_reason": {"type": "length"}}
        if body.get("return_logprob"):
            k = self._k(int(body.get("top_logprobs_num", 0)))
            meta["output_token_logprobs"] = [[float(lp[t]), t, None] for t, lp in steps]
            meta["output_top_logprobs"] = [[[float(lp[t]), t, None] for t in _top(lp, k)] for _, lp in steps]
            start = int(body.get("logprob_start_len", -1))
            if start >= 0:  # SGLang pads the first position with None
                chosen: list[Any] = [[None, prompt[start], None]]
                tops: list[Any] = [None]
                for j in range(start + 1, len(prompt)):
                    lp = self.state.model.logprobs(prompt[:j])
                    chosen.append([float(lp[prompt[j]]), prompt[j], None])
                    tops.append([[float(lp[t]), t, None] for t in _top(lp, k)])
                meta["input_token_logprobs"] = chosen
                meta["input_top_logprobs"] = tops
        return {"text": "", "output_ids": [t for t, _ in steps], "meta_info": meta}

    def _text_completion(self, body: dict) -> dict:
        tokenizer = self.state.tokenizer
        prompt = tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
        steps = _greedy(self.state, prompt, int(body.get("max_tokens", 16)), set(), True)
        k = body.get("logprobs")
        text = [tokenizer.decode([t]) for t, _ in steps]
        tops = [{tokenizer.decode([t]): float(lp[t]) for t in _top(lp, self._k(k))} for _, lp in steps] if k else None
        logprobs = {"tokens": text, "token_logprobs": [float(lp[t]) for t, lp in steps], "top_logprobs": tops}
        return {"choices": [{"index": 0, "text": "".join(text), "logprobs": logprobs, "finish_reason": "length"}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(steps)}}


class FakeServer:
    """`with FakeServer(model) as server: server.url ...` — a ThreadingHTTPServer on a free port."""

    def __init__(self, model: Any, **state: Any) -> None:
        self.state = State(model, **state)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def posts(self) -> int:
        return sum(1 for p in self.state.paths if p in ("/v1/completions", "/generate"))


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
