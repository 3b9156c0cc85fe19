"""The modeling file of a model folder with a planted code defect (`defects.py` copies it there).

transformers loads it through the config's `auto_map` (trust_remote_code): a Llama with one of
- `fp16-norm`: layer `config.planted_fp16_norm_layer` squares the input of its input RMSNorm in fp16
  instead of fp32. Where |x| > 255.9 the square overflows to inf, the variance is inf, and the norm's
  output there is 0;
- `norm-eps` (`config.planted_norm_eps`, `{"layer", "module", "value"}`): one norm has another epsilon;
- `rms-eps`, `rope-base` (`config.planted_constants`): the kernels use another RMSNorm epsilon or RoPE
  base than config.json says (the config file stays right, as on a device whose kernel is wrong);
- `batch-mask` (`BatchMaskLlamaForCausalLM`): a batched forward pass (more than one row) drops the
  padding mask, so left-padded rows attend to their padding: a defect only batch size > 1 triggers.
The layer's norm is replaced by a module of its own class (not a patched `forward` attribute, which
transformers 5.25 drops while loading). Self-contained on purpose: transformers copies this one file
into its modules cache.
"""

from __future__ import annotations

import inspect

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
    """LlamaForCausalLM with the fp16 RMSNorm in one layer, one norm's epsilon changed, or a wrong constant
    in its kernels."""

    def __init__(self, config) -> None:
        for name, value in (getattr(config, "planted_constants", None) or {}).items():
            setattr(config, name, value)  # the kernels' constants; config.json keeps the right ones
            if name == "rope_theta" and isinstance(getattr(config, "rope_parameters", None), dict):
                config.rope_parameters["rope_theta"] = value  # transformers 5 reads it from here
        super().__init__(config)
        if getattr(config, "planted_fp16_norm_layer", None) is not None:
            layer = self.model.layers[int(config.planted_fp16_norm_layer)]
            layer.input_layernorm = FP16RMSNorm(config.hidden_size, config.rms_norm_eps)
        eps = getattr(config, "planted_norm_eps", None)
        if eps:
            norm = getattr(self.model.layers[int(eps["layer"])], str(eps["module"]))
            norm.variance_epsilon = float(eps["value"])


class BatchMaskLlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM whose batched forward pass (more than one row) drops the padding mask."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if input_ids is not None and input_ids.shape[0] > 1:
            attention_mask = None  # the defect: the batched path forgets the padding mask
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # the runner reads forward()'s argument names (cache, logits_to_keep): keep Llama's
    forward.__signature__ = inspect.signature(LlamaForCausalLM.forward)
