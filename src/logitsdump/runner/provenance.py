"""The run's provenance: what every case of one evaluation or dump shared (`store.RunProvenance.run`).

Sections: `runner` (backend, device, dtype, batch size, parallel layout, mode), `task` (name,
few-shot count, context limit and truncation side, max new tokens), and what the backend tells
(`Provenance.details`: model config fields, tokenizer files, chat template, generation settings,
library versions, determinism switches, engine settings). `triage/fields.py` says what a
difference of each means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from logitsdump.runner.backends.describe import library_versions

if TYPE_CHECKING:
    from logitsdump.protocol import DumpRequest
    from logitsdump.runner.backends.base import Backend
    from logitsdump.runner.config import TaskConfig
    from logitsdump.runner.distributed import World

#: `runner.mode` of a plain evaluation, a dump, and a dump that replays golden's tokens.
EVALUATION = "eval"
DUMP = "dump"
REPLAY = "replay"


def truncation_side(task_config: TaskConfig) -> str:
    """Which part of a too-long prompt is kept (`decoding.fit_input`): its end, or its two halves."""
    return "middle" if task_config.need_truncate_input else "left"


def task_section(task_config: TaskConfig) -> dict[str, Any]:
    return {
        "name": task_config.task_name,
        "shots": task_config.shots,
        "max_input_length": task_config.requested_max_input_length,
        "truncation_side": truncation_side(task_config),
        "max_new_tokens": task_config.requested_max_output_length,
        "need_logits": task_config.need_logits,
        "prompt_sha256": _sha(task_config.prompt) if task_config.prompt else None,
    }


def run_provenance(backend: Backend, task_config: TaskConfig, *, batch_size: int, tp: int, world: World,
                   request: DumpRequest | None) -> dict[str, Any]:
    """The `run` mapping of a RunProvenance for this run."""
    provenance = backend.provenance()
    details = dict(provenance.details)
    mode = EVALUATION if request is None else (REPLAY if request.replay_dir is not None else DUMP)
    runner = {
        "backend": backend.config.requested_gpu_framework,
        **(details.pop("runner", None) or {}),
        "device": provenance.device,
        "dtype": backend.config.data_type,
        "model_name": backend.config.model_name,
        "model_path": provenance.model_path,
        "batch_size": batch_size,
        "tp": tp,
        "world_size": world.world_size,
        "data_parallel": world.data_parallel,
        "tensor_parallel": world.tensor_parallel,
        "mode": mode,
    }
    versions = {**library_versions(), **dict(provenance.versions), **(details.pop("versions", None) or {})}
    return {"runner": runner, "task": task_section(task_config), "versions": versions, **details}


def _sha(text: str) -> str:
    from logitsdump.store import text_sha256

    return text_sha256(text)
