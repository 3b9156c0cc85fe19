"""Helpers for tests that run the installed `logitsdump` command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import PROTOCOL_VARS


def cli_env(**extra: str) -> dict[str, str]:
    """A clean environment for a `logitsdump` subprocess (offline, one thread, no protocol vars)."""
    env = {k: v for k, v in os.environ.items() if k not in PROTOCOL_VARS}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    # the venv's console scripts (logitsdump, torchrun) first, whether or not the venv is activated
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m logitsdump ARGS`; capture text output."""
    return subprocess.run(
        [sys.executable, "-m", "logitsdump", *args],
        cwd=cwd, env=env if env is not None else cli_env(), capture_output=True, text=True, timeout=timeout,
    )
