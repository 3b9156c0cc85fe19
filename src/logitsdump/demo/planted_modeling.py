"""The modeling file of a model folder with a planted `fp16-norm` defect (`defects.py` copies it there).

transformers loads it through the config's `auto_map` (trust_remote_code): a Llama whose layer
`config.planted_fp16_norm_layer` squares the input of its input RMSNorm in fp16 instead of fp32
(where |x| > 255.9 the square overflows to inf, the variance is inf, and the norm's output there is 0),
or whose norm `config.planted_norm_eps` (`{"layer", "module", "value"}`) has another epsilon.
The layer's norm is replaced by a module of its own class (not a patched `forward` attribute, which
transformers 5.25 drops while loading). Self-contained on purpose: transformers copies this one file
into its modules cache.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaForCausalLM


class FP16RMSNorm(nn.Module):
    """RMSNorm that squares its input in fp16 (the defect: no fp32 upcast, so x^2 overflows)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float16)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * x.to(dtype)


class PlantedLlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM with the fp16 RMSNorm in one layer, or one norm's epsilon changed."""

    def __init__(self, config) -> None:
        super().__init__(config)
        if getattr(config, "planted_fp16_norm_layer", None) is not None:
            layer = self.model.layers[int(config.planted_fp16_norm_layer)]
            layer.input_layernorm = FP16RMSNorm(config.hidden_size, config.rms_norm_eps)
        eps = getattr(config, "planted_norm_eps", None)
        if eps:
            norm = getattr(self.model.layers[int(eps["layer"])], str(eps["module"]))
            norm.variance_epsilon = float(eps["value"])
