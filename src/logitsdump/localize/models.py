"""Loading the model a side runs, through the HF backend (the same loading as `eval`), and refusing the runtimes
localize cannot hook (vLLM, a real modeltest run through `-e`): their model runs in another process or
engine, where a forward hook of ours never runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from logitsdump.errors import ConfigError

#: Attention implementations a control arm may switch between.
ATTENTIONS = ("sdpa", "eager")
#: The msprobe config a refusal writes in the output folder.
HANDOFF_NAME = "msprobe_config.json"
#: What a user of an unhookable runtime can do (the refusal's sentence, and docs/localize.md's).
ELSEWHERE = ("run localize on the same weights with the HF backend (requested_gpu_framework: Huggingface), or "
             "hand off to msprobe inside that runtime with {handoff}")


def refusal(what: str, handoff: str) -> str:
    """The one line that refuses an unhookable runtime."""
    return (f"localize cannot hook {what}: its model runs in another process or engine, where localize's "
            f"module hooks never run; " + ELSEWHERE.format(handoff=handoff))


def refuse_unhookable(model_config_path: str, output_dir: str, steps: list[int]) -> None:
    """Raise the refusal (ConfigError) when the model YAML asks for a framework localize cannot hook, after
    writing the msprobe hand-off (`msprobe.whole_model_config` at the cases' steps) in `output_dir`."""
    from pathlib import Path

    from logitsdump.localize.files import write_json
    from logitsdump.localize.msprobe import whole_model_config
    from logitsdump.runner.config import load_model_config

    framework = load_model_config(model_config_path).requested_gpu_framework
    if framework.strip().lower() == "huggingface":
        return
    handoff = Path(output_dir) / HANDOFF_NAME
    write_json(handoff, whole_model_config(steps))
    raise ConfigError(f"{model_config_path}: requested_gpu_framework {framework}: "
                      + refusal(f"the {framework} backend", str(handoff)))


def load(model_config_path: str, *, device: str = "auto", data_type: str | None = None,
         attn: str | None = None) -> Any:
    """The `HFBackend` of the model YAML, in `data_type` (default: the YAML's) and with attention `attn`
    (default: transformers' choice); ConfigError for another framework."""
    from logitsdump.runner.backends.huggingface import HFBackend
    from logitsdump.runner.config import load_model_config
    from logitsdump.runner.device import choose_device

    config = load_model_config(model_config_path)
    if config.requested_gpu_framework.strip().lower() != "huggingface":
        raise ConfigError(f"{model_config_path}: requested_gpu_framework {config.requested_gpu_framework}: "
                          + refusal(f"the {config.requested_gpu_framework} backend", "msprobe's config.json"))
    if data_type is not None:
        config = dataclasses.replace(config, data_type=data_type)
    backend = HFBackend(config, choose_device(device))
    if attn is not None:
        set_attention(backend.model, attn)
    return backend


def attention_of(model: Any) -> str:
    """The attention implementation a loaded model runs."""
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


def set_attention(model: Any, name: str) -> None:
    """Switch a loaded model's attention implementation (transformers 5: `set_attn_implementation`)."""
    if name not in ATTENTIONS:
        raise ConfigError(f"attention implementation {name!r}: use one of {', '.join(ATTENTIONS)}")
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(name)
    else:
        model.config._attn_implementation = name


def other_attention(name: str) -> str:
    """The other implementation (a control arm in golden's own dtype runs it, so it is not golden itself)."""
    return "eager" if name != "eager" else "sdpa"
