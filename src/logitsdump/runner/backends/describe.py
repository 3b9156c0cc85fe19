"""What a backend tells the run's provenance: its model folder's files and numerics fields, its
tokenizer, chat template and generation settings, and the library versions (the parity preflight
compares them between the two sides; `triage/fields.py` says what each difference means).

Reads files and attributes only: no torch here (a backend passes its loaded tokenizer).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from logitsdump.runner.sampling import GENERATION_CONFIG_FILE, GenerationSettings

#: Files of a model folder that decide how text becomes token ids (hashed; a change is a finding).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.txt", "spiece.model",
)
#: config.json fields that change what the model computes (its storage dtype is not one: the run's
#: dtype comes from the model YAML).
NUMERICS_FIELDS = (
    "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "rms_norm_eps", "layer_norm_eps",
    "layer_norm_epsilon", "norm_eps", "max_position_embeddings", "sliding_window", "hidden_act",
    "tie_word_embeddings", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "attention_bias", "final_logit_softcapping",
    "attn_logit_softcapping", "logit_scale", "quantization_config",
)
#: Environment variables that switch deterministic or batch-invariant kernels (recorded when set).
DETERMINISM_VARIABLES = (
    "VLLM_BATCH_INVARIANT", "LCCL_DETERMINISTIC", "HCCL_DETERMINISTIC", "ATB_MATMUL_SHUFFLE_K_ENABLE",
    "ATB_LLM_LCOC_ENABLE", "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE", "OMP_NUM_THREADS",
    "ASCEND_LAUNCH_BLOCKING", "CLOSE_MATMUL_K_SHIFT", "HCCL_OP_EXPANSION_MODE",
)
#: Python distributions whose version is recorded when installed.
LIBRARIES = ("torch", "transformers", "tokenizers", "vllm", "vllm-ascend", "torch-npu", "safetensors")
#: Where a CANN toolkit keeps its version (under ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH).
CANN_VERSION_FILES = ("version.cfg", "ascend_toolkit_install.info")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_model(model_path: str | Path, tokenizer: Any, *, use_chat_template: bool,
                   settings: GenerationSettings, eos_ids: Iterable[int]) -> dict[str, Any]:
    """The provenance sections a backend knows: model, tokenizer, chat_template, generation, environment."""
    folder = Path(model_path)
    config = _read_json(folder / "config.json") or {}
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):
        template = json.dumps(template, sort_keys=True)
    generation_file = folder / GENERATION_CONFIG_FILE
    generation_config = _read_json(generation_file)
    return {
        "model": {
            "config": {name: config[name] for name in NUMERICS_FIELDS if name in config},
            "architectures": config.get("architectures"),
            "remote_code": "auto_map" in config,
        },
        "tokenizer": {
            "files": {name: file_sha256(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()},
            "class": type(tokenizer).__name__,
            "bos_token_id": _int_or_none(getattr(tokenizer, "bos_token_id", None)),
            "eos_token_ids": sorted(int(i) for i in eos_ids),
        },
        "chat_template": {
            "applied": use_chat_template,
            "sha256": hashlib.sha256(template.encode("utf-8")).hexdigest() if isinstance(template, str) else None,
        },
        "generation": {
            **settings.effective(),
            "stop_token_ids": sorted(int(i) for i in eos_ids),
            "generation_config_file": file_sha256(generation_file) if generation_file.is_file() else None,
            "generation_config": generation_config,
        },
        "environment": {name: os.environ[name] for name in DETERMINISM_VARIABLES if name in os.environ},
    }


def library_versions() -> dict[str, str]:
    """logitsdump's and each installed library's version; CANN's where torch_npu is installed."""
    from logitsdump import __version__

    found = {"logitsdump": __version__}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name.replace("-", "_")] = importlib.metadata.version(name)
    if "torch_npu" in found:
        cann = cann_version()
        if cann:
            found["cann"] = cann
    return found


def cann_version(environ: Mapping[str, str] | None = None) -> str | None:
    """The CANN toolkit's version from its install folder (ASCEND_TOOLKIT_HOME or ASCEND_HOME_PATH)."""
    env = os.environ if environ is None else environ
    for variable in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        base = env.get(variable)
        if not base:
            continue
        for path in [Path(base) / name for name in CANN_VERSION_FILES] + sorted(Path(base).glob(
                f"*/{CANN_VERSION_FILES[1]}")):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                for line in path.read_text(encoding="utf-8").splitlines():
                    key, _, value = line.partition("=")
                    if key.strip().lower() in ("version", "toolkit_version") and value.strip():
                        return value.strip()
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
