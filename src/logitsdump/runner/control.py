"""The control arm on the runner side: the golden model in a second known-healthy configuration.

`dump --control KIND` runs the bad cases once more on the golden side, replayed on the golden dump's
tokens, with one thing changed, and writes them beside the golden dump (`outputs.control_dir_of`):
- `dtype`: the golden model in another data type (golden fp32 -> bf16; golden bf16 or fp16 -> fp32):
  the rounding noise of one low-precision run;
- `impl`: the same model through the other attention implementation (transformers' `sdpa` <-> `eager`),
  in the dtype under test (golden bf16/fp16: the same; golden fp32: bf16): the noise between two healthy
  low-precision implementations. On this project's CPU it changes the bf16 logits at nearly every step,
  while the thread count does not (docs/compare.md, "The control arm").
compare judges the test side against it (`compare/control.py`); how the control was made is recorded in
each manifest line's `extra.control` and nowhere else matters to compare.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from logitsdump.dtypes import DATA_TYPES
from logitsdump.errors import ConfigError
from logitsdump.protocol import CONTROL_KINDS
from logitsdump.runner.config import ModelConfig

#: transformers' default attention implementation where torch has scaled_dot_product_attention.
DEFAULT_ATTENTION = "sdpa"
#: The attention implementation an `impl` control switches to, from each golden one.
OTHER_ATTENTION = {"sdpa": "eager", "eager": "sdpa"}


@dataclass(frozen=True)
class ControlSpec:
    """What the control run changes of the golden model YAML."""

    kind: str
    dtype: str
    attention: str
    golden_dtype: str
    golden_attention: str

    def apply(self, config: ModelConfig) -> ModelConfig:
        """The golden model YAML as the control loads it."""
        attention = config.attn_implementation if self.attention == self.golden_attention else self.attention
        return dataclasses.replace(config, data_type=self.dtype, attn_implementation=attention)

    @property
    def description(self) -> str:
        """A few words: what differs from golden."""
        changes = []
        if self.dtype != self.golden_dtype:
            changes.append(f"{self.dtype} instead of {self.golden_dtype}")
        if self.attention != self.golden_attention:
            changes.append(f"attention {self.attention} instead of {self.golden_attention}")
        return f"{self.kind} control: " + ", ".join(changes)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "description": self.description}


def check_golden_side(golden_dir: str | None, golden: ModelConfig) -> None:
    """ConfigError when the runner's model YAML is not the golden dump's (its dtype differs from the one the
    golden manifest records): the control is derived from the golden side's YAML."""
    from logitsdump.store import read_manifest

    dumped = next((r.dtype for r in read_manifest(golden_dir) if r.dtype), None) if golden_dir else None
    if dumped is not None and dumped != golden.data_type:
        raise ConfigError(f"--control: the runner's model YAML is {golden.data_type} but the golden dump {golden_dir} "
                          f"is {dumped}: give the golden side's model YAML, the control is derived from it")


def resolve_control(kind: str, golden: ModelConfig, dtype: str | None = None) -> ControlSpec:
    """The control of `kind` for the golden model YAML `golden` (`dtype`: the control's data type, None:
    the rule of the module docstring). Raises ConfigError for a control that would change nothing."""
    if kind not in CONTROL_KINDS:
        raise ConfigError(f"--control must be one of {', '.join(CONTROL_KINDS)}, found {kind!r}")
    if dtype is not None and dtype not in DATA_TYPES:
        raise ConfigError(f"--control-dtype must be one of {', '.join(DATA_TYPES)}, found {dtype!r}")
    golden_dtype = golden.data_type
    golden_attention = golden.attn_implementation or DEFAULT_ATTENTION
    if kind == "dtype":
        chosen = dtype or ("bf16" if golden_dtype == "fp32" else "fp32")
        if chosen == golden_dtype:
            raise ConfigError(f"a dtype control needs another dtype than golden's {golden_dtype}")
        return ControlSpec(kind, chosen, golden_attention, golden_dtype, golden_attention)
    if golden.requested_gpu_framework.lower() != "huggingface":
        raise ConfigError("an impl control switches transformers' attention implementation: it needs the "
                          f"Huggingface backend (this model YAML asks for {golden.requested_gpu_framework}); "
                          "use --control dtype")
    chosen = dtype or (golden_dtype if golden_dtype != "fp32" else "bf16")
    attention = OTHER_ATTENTION.get(golden_attention, DEFAULT_ATTENTION)
    return ControlSpec(kind, chosen, attention, golden_dtype, golden_attention)
