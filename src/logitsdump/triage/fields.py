"""What a difference of each provenance field means: its class, its cause, and whom it touches.

Three classes, read in this order (docs/triage.md):
- `SETUP`: the two sides did not compute the same thing (the prompt's tokens, the chat template, the
  few-shot examples, the generation settings, the tokenizer files, the model's config fields). A case
  it touches gets a set-up verdict instead of a numerics one.
- `CONFIGURATION`: how the same thing was computed (batch size, parallel layout, engine settings,
  determinism switches): a lead for the repeat and batch probe and the configuration ablation, not
  a verdict.
- `CONTEXT`: what differs between two devices by design (device, backend, dtype, library versions, the
  modeling code a device runs): shown side by side, never a finding.

A set-up cause either touches every case of the run (`EVERY_CASE`: the model computes differently or
generates under other settings) or only the cases whose recorded inputs differ (the prompt causes:
a tokenizer file that changed nothing in the ids of a case leaves that case to its numerics verdict).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SETUP = "set-up"
CONFIGURATION = "configuration"
CONTEXT = "context"
CLASSES = (SETUP, CONFIGURATION, CONTEXT)

#: Cause code -> the few words that name it (finding sentences start with them).
CAUSES: Mapping[str, str] = {
    "chat-template": "chat template",
    "bos": "BOS tokens",
    "eos-in-prompt": "EOS tokens in the prompt",
    "few-shot": "few-shot examples",
    "truncation": "prompt cut to the context limit",
    "context-limit": "context limit",
    "max-new-tokens": "max new tokens",
    "sampling": "sampling settings",
    "stop-tokens": "stop token ids",
    "generation-config": "generation_config.json",
    "tokenizer-file": "tokenizer files",
    "special-tokens": "special token ids",
    "model-config": "model config.json",
    "task": "task settings",
    "query": "query text",
    "rendered-prompt": "rendered prompt",
    "prompt-tokens": "prompt token ids",
    "batch-size": "batch size",
    "parallel-layout": "parallel layout",
    "engine": "engine settings",
    "determinism-switch": "determinism switches",
    "backend": "backend",
    "device": "device",
    "dtype": "data type",
    "versions": "library versions",
    "model-code": "modeling code",
    "mode": "run mode",
}

#: Set-up causes that touch every case of the run (the others: the cases whose inputs differ).
EVERY_CASE = frozenset({"max-new-tokens", "sampling", "stop-tokens", "generation-config", "model-config",
                        "task", "special-tokens"})

#: generation_config.json keys that change nothing in what is generated (compared without them).
INERT_GENERATION_KEYS = frozenset({"transformers_version", "_from_model_config", "output_attentions",
                                   "output_hidden_states", "use_cache", "return_dict_in_generate", "bos_token_id",
                                   "pad_token_id", "output_scores", "output_logits"})


@dataclass(frozen=True)
class FieldRule:
    """What a difference of a field means."""

    klass: str
    cause: str


#: (section, field or "*") -> rule; the first match wins (a field, then its section's "*").
RULES: Mapping[tuple[str, str], FieldRule] = {
    ("chat_template", "*"): FieldRule(SETUP, "chat-template"),
    ("task", "shots"): FieldRule(SETUP, "few-shot"),
    ("task", "max_input_length"): FieldRule(SETUP, "context-limit"),
    ("task", "truncation_side"): FieldRule(SETUP, "context-limit"),
    ("task", "max_new_tokens"): FieldRule(SETUP, "max-new-tokens"),
    ("task", "*"): FieldRule(SETUP, "task"),
    ("generation", "generation_config"): FieldRule(SETUP, "generation-config"),
    ("generation", "generation_config_applied"): FieldRule(SETUP, "generation-config"),
    ("generation", "stop_token_ids"): FieldRule(SETUP, "stop-tokens"),
    ("generation", "*"): FieldRule(SETUP, "sampling"),
    ("tokenizer", "bos_token_id"): FieldRule(SETUP, "special-tokens"),
    ("tokenizer", "eos_token_ids"): FieldRule(SETUP, "special-tokens"),
    ("tokenizer", "*"): FieldRule(SETUP, "tokenizer-file"),
    ("model", "architectures"): FieldRule(CONTEXT, "model-code"),
    ("model", "remote_code"): FieldRule(CONTEXT, "model-code"),
    ("model", "*"): FieldRule(SETUP, "model-config"),
    ("runner", "batch_size"): FieldRule(CONFIGURATION, "batch-size"),
    ("runner", "tp"): FieldRule(CONFIGURATION, "parallel-layout"),
    ("runner", "world_size"): FieldRule(CONFIGURATION, "parallel-layout"),
    ("runner", "data_parallel"): FieldRule(CONFIGURATION, "parallel-layout"),
    ("runner", "tensor_parallel"): FieldRule(CONFIGURATION, "parallel-layout"),
    ("runner", "backend"): FieldRule(CONTEXT, "backend"),
    ("runner", "device"): FieldRule(CONTEXT, "device"),
    ("runner", "dtype"): FieldRule(CONTEXT, "dtype"),
    ("runner", "mode"): FieldRule(CONTEXT, "mode"),
    ("engine", "*"): FieldRule(CONFIGURATION, "engine"),
    ("environment", "*"): FieldRule(CONFIGURATION, "determinism-switch"),
    ("versions", "*"): FieldRule(CONTEXT, "versions"),
}
#: Fields never compared: names and paths differ between two set-ups by design, hashes whose content is
#: compared itself, where a setting came from.
IGNORED: frozenset[tuple[str, str]] = frozenset({
    ("runner", "model_name"), ("runner", "model_path"), ("generation", "generation_config_file"),
    ("generation", "sources"),
})


def rule(section: str, name: str) -> FieldRule | None:
    """The rule of `section.name`; None for an ignored field. Unknown fields are context."""
    if (section, name) in IGNORED:
        return None
    return RULES.get((section, name)) or RULES.get((section, "*")) or FieldRule(CONTEXT, section)


def flatten(run: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    """(section, field) -> value of a run's provenance; nested fields are joined with dots
    (`model.config.rope_theta` is ("model", "config.rope_theta")), a generation_config.json is compared
    as its active keys (`effective_generation_config`)."""
    flat: dict[tuple[str, str], Any] = {}
    for section, values in run.items():
        if not isinstance(values, Mapping):
            flat[(str(section), "")] = values
            continue
        for name, value in values.items():
            if (section, name) == ("generation", "generation_config"):
                value = effective_generation_config(value)
            _flatten_into(flat, str(section), str(name), value)
    return flat


def _flatten_into(flat: dict[tuple[str, str], Any], section: str, name: str, value: Any) -> None:
    if isinstance(value, Mapping) and value and name in ("config", "files"):
        for key, inner in value.items():
            flat[(section, f"{name}.{key}")] = inner
    else:
        flat[(section, name)] = value


def effective_generation_config(value: Any) -> Any:
    """A generation_config.json's keys that change what is generated (INERT_GENERATION_KEYS left out)."""
    if not isinstance(value, Mapping):
        return value
    return {k: v for k, v in sorted(value.items()) if k not in INERT_GENERATION_KEYS}


def cause_words(cause: str) -> str:
    return CAUSES.get(cause, cause)
