"""The modeling file of a model folder with a planted `fp16-norm` defect (`defects.py` copies it there).

transformers loads it through the config's `auto_map` (trust_remote_code): a Llama whose layer
`config.planted_fp16_norm_layer` squares the input of its input RMSNorm in fp16 instead of fp32.
Where |x| > 255.9 the square overflows to inf, the variance is inf, and the norm's output there is 0.
Self-contained on purpose: transformers copies this one file into its modules cache.
"""

from __future__ import annotations

import types

import torch
from transformers import LlamaForCausalLM


def _fp16_rms_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
    dtype = hidden_states.dtype
    x = hidden_states.to(torch.float16)
    variance = x.pow(2).mean(-1, keepdim=True)  # the defect: no fp32 upcast, so x^2 overflows
    x = x * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * x.to(dtype)


class PlantedLlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM with the fp16 RMSNorm in one layer."""

    def __init__(self, config) -> None:
        super().__init__(config)
        norm = self.model.layers[int(config.planted_fp16_norm_layer)].input_layernorm
        norm.forward = types.MethodType(_fp16_rms_norm, norm)
