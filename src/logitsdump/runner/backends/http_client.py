"""JSON over HTTP for the server backend: one request, its retries with backoff, and what each failure means.

Standard library only (`urllib.request`). A request is retried when trying again can help: a timeout,
a refused, reset or dropped connection, an answer cut short or not JSON, HTTP 408, 429 and 5xx. It is
not retried when the same request would fail again: any other 4xx. After the last retry the failure is
a `RequestFailed` carrying every attempt's reason; the caller records the case as missing (never drops
it silently). Backoff: `backoff * 2**attempt` seconds (capped at `MAX_BACKOFF`), deterministic, so runs
repeat; a server's `Retry-After` (seconds) is honoured within the same cap.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from logitsdump.logs import get_logger

log = get_logger("server")

#: The longest wait between two attempts, in seconds.
MAX_BACKOFF = 30.0
#: HTTP statuses worth another try.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: The most bytes of an error body quoted in a message.
QUOTE = 300


class RequestFailed(Exception):
    """A request that failed for good: after its retries, or at once when retrying cannot help."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "", retryable: bool = True,
                 attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retryable = retryable
        self.attempts = attempts


@dataclass
class Counters:
    """Requests sent, retries and failures (thread-safe): what a case cost, for the manifest and the docs."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, requests: int = 0, retries: int = 0, failures: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.failures += failures
            self.seconds += seconds

    def take(self) -> dict[str, Any]:
        """The counts so far, then zero (per case)."""
        with self._lock:
            out = {"requests": self.requests, "retries": self.retries, "failures": self.failures,
                   "seconds": round(self.seconds, 4)}
            self.requests = self.retries = self.failures = 0
            self.seconds = 0.0
        return out


@dataclass(frozen=True)
class RetryPolicy:
    """How a request is tried: `retries` more times after the first, waiting `backoff * 2**n` seconds."""

    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        base = self.backoff * (2**attempt)
        return min(MAX_BACKOFF, max(base, retry_after or 0.0))


class JsonClient:
    """POST/GET JSON to one server, with the retry policy, an optional bearer key, and the counters."""

    def __init__(self, base_url: str, policy: RetryPolicy, api_key: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.api_key = api_key
        self.counters = Counters()
        self._sleep = sleep

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST `body` as JSON to `path`; the decoded answer (retried per the policy)."""
        return self._with_retries("POST", path, json.dumps(body).encode("utf-8"))

    def get(self, path: str, *, retries: bool = True) -> Any:
        """GET `path`; the decoded answer. `retries=False`: one try (probing optional endpoints)."""
        return self._with_retries("GET", path, None, retry=retries)

    def _with_retries(self, method: str, path: str, data: bytes | None, retry: bool = True) -> Any:
        reasons: list[str] = []
        attempts = self.policy.retries + 1 if retry else 1
        for attempt in range(attempts):
            started = time.monotonic()
            try:
                answer = self._once(method, path, data)
            except RequestFailed as err:
                self.counters.add(requests=1, seconds=time.monotonic() - started)
                reasons.append(str(err))
                if not err.retryable or attempt + 1 >= attempts:
                    self.counters.add(failures=1)
                    distinct = list(dict.fromkeys(reasons))
                    summary = str(err) if len(reasons) == 1 else f"{len(reasons)} attempts: " + "; ".join(distinct)
                    raise RequestFailed(summary, status=err.status, body=err.body, retryable=err.retryable,
                                        attempts=len(reasons)) from None
                wait = self.policy.wait(attempt, _retry_after(err))
                log.warning("%s %s: %s; retrying in %.3g s (%d of %d)", method, path, err, wait, attempt + 1,
                            self.policy.retries)
                self.counters.add(retries=1)
                self._sleep(wait)
                continue
            self.counters.add(requests=1, seconds=time.monotonic() - started)
            return answer
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, data: bytes | None) -> Any:
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=self.policy.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            body = _read_quietly(err)
            retry_after = err.headers.get("Retry-After") if err.headers else None
            failure = RequestFailed(f"HTTP {err.code} {err.reason}: {body[:QUOTE]}".rstrip(": "), status=err.code,
                                    body=body, retryable=err.code in RETRY_STATUSES)
            failure.retry_after = retry_after  # type: ignore[attr-defined]
            raise failure from None
        except TimeoutError as err:
            raise RequestFailed(f"no answer within {self.policy.timeout:g} s ({err or 'timed out'})") from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise RequestFailed(f"no answer within {self.policy.timeout:g} s") from None
            raise RequestFailed(f"cannot reach {self.base_url}: {reason}") from None
        except (http.client.HTTPException, ConnectionError, OSError) as err:  # dropped or cut-short answers
            raise RequestFailed(f"connection dropped: {type(err).__name__}: {err}".rstrip(": ")) from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise RequestFailed(f"the answer is not JSON ({len(raw)} bytes: {raw[:80]!r})") from None


def _read_quietly(err: urllib.error.HTTPError) -> str:
    try:
        return err.read().decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""


def _retry_after(err: RequestFailed) -> float | None:
    value = getattr(err, "retry_after", None)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
