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
    "LOGITSDUMP_LOGITS_FP32",
)


@pytest.fixture(autouse=True)
def _clean_protocol_env(monkeypatch):
    """No test inherits the dump protocol from the environment it runs in."""
    for name in PROTOCOL_VARS:
        monkeypatch.delenv(name, raising=False)


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
