"""The data types a model runs in and logits are compared in: one home for their names and spacings."""

from __future__ import annotations

#: modeltest's `data_type` values (model YAML) and compare's `-d/--dtype` choices.
DATA_TYPES = ("fp16", "bf16", "fp32")
#: data_type -> the torch dtype's name.
TORCH_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
#: Relative spacing (2**-mantissa_bits) of each dtype, as msit.
DTYPE_EPS = {"bf16": 2.0**-7, "fp16": 2.0**-10, "fp32": 2.0**-23}
#: The smallest positive (subnormal) value of each dtype: its spacing at 0.
DTYPE_TINY = {"bf16": 2.0**-133, "fp16": 2.0**-24, "fp32": 2.0**-149}
