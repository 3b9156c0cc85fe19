"""Models with a planted precision bug, to show that the diagnosis finds real bugs.

A "device with a defect" is simulated by a copy of a model folder that carries the defect:
- in its weights: `scale-layer` (layer `layer`'s attention and MLP outputs times `factor`, a wrong
  scale factor in a fused kernel), `scale-o-proj` (only its attention output projection), `scale-mlp`
  (only its MLP's down projection), `scale-q` (its query projection: the attention's softmax temperature
  off, as with a wrong scale in a fused attention kernel), `scale-norm` (the weight of its norm `module`,
  e.g. `input_layernorm`: a wrong gain), `scale-weight` (one linear module of layer `layer`, `module` e.g.
  `self_attn.v_proj` or `mlp.up_proj`, times `factor`), `scale-final-norm` (the final RMSNorm's weight times
  `factor`: every logit scaled), `zero-head` (head `head` of layer `layer` contributes nothing: a kernel
  that drops a head), `round-weights` (the weight of projection `module` of layer `layer`, e.g.
  `mlp.up_proj`, or without a `module` every linear weight of the layer, rounded to `bits` mantissa bits:
  a kernel or weight format that keeps too few bits);
- in its kernels' constants: `rms-eps` (every RMSNorm's epsilon set to `value`), `rope-base` (RoPE's
  base theta set to `value`); config.json keeps the right values (a device whose kernel is wrong; a
  changed config.json is a set-up difference the preflight names, `setup_plants`), the folder's modeling
  file sets them;
- in its code: `fp16-norm` (layer `layer`'s input RMSNorm squares its input in fp16 instead of
  fp32, so it overflows to inf where |x| > 255.9 and the norm's output there becomes 0: the classic
  fp16 overflow of a kernel that skips the fp32 upcast). The folder gets a small modeling file
  (`planted_modeling.py`) and needs `trust_remote_code: true` in its model YAML
  (`write_model_yaml(..., trust_remote_code=defect.needs_code)`); `norm-eps` (the epsilon of layer
  `layer`'s norm `module`, e.g. `post_attention_layernorm`, set to `value`: one kernel's wrong constant),
  through the same modeling file;
- in its code, triggered by the configuration: `batch-mask` (a batched forward pass drops the padding
  mask: healthy at batch size 1, wrong for the padded rows of a batch; the configuration ablation's
  planted defect).
`plant` puts the same defect into a model already loaded (in memory, undone by the function it returns),
so a benchmark plants many defects in one process.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from logitsdump.errors import ConfigError

KINDS = ("scale-layer", "scale-o-proj", "scale-mlp", "scale-q", "scale-norm", "scale-weight", "scale-final-norm",
         "zero-head", "round-weights", "rms-eps", "rope-base", "fp16-norm", "norm-eps", "batch-mask")
#: The kinds planted in the weights.
WEIGHT_KINDS = ("scale-layer", "scale-o-proj", "scale-mlp", "scale-q", "scale-norm", "scale-weight", "scale-final-norm",
                "zero-head", "round-weights")
#: The kinds that change every layer (global defects), and those the configuration triggers.
GLOBAL_KINDS = ("rms-eps", "rope-base")
CONFIGURATION_KINDS = ("batch-mask",)
#: The linear modules of a Llama layer (`scale-weight`'s and `round-weights`' `module`).
LINEAR_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                  "mlp.up_proj", "mlp.down_proj")
PROJECTIONS = LINEAR_MODULES
#: The norms `norm-eps` and `scale-norm` may change.
NORMS = ("input_layernorm", "post_attention_layernorm")
#: The modeling file a code defect's folder carries, and the class its config's auto_map names.
CODE_FILE = Path(__file__).resolve().parent / "planted_modeling.py"
CODE_CLASS = "PlantedLlamaForCausalLM"
BATCH_MASK_CLASS = "BatchMaskLlamaForCausalLM"
#: The kinds planted in the folder's modeling file (the model YAML needs trust_remote_code).
CODE_KINDS = ("rms-eps", "rope-base", "fp16-norm", "norm-eps", "batch-mask")


@dataclass(frozen=True)
class Defect:
    """What is planted (see the module's docstring for each `kind`)."""

    kind: str
    layer: int = 1
    factor: float = 1.05
    head: int = 0
    #: The new epsilon (`rms-eps`, `norm-eps`) or RoPE theta (`rope-base`).
    value: float | None = None
    #: The linear module (`scale-weight`, `round-weights`: one of `LINEAR_MODULES`; `round-weights` without
    #: one: every linear module of the layer) or the norm (`norm-eps`, `scale-norm`) of the layer.
    module: str | None = None
    #: Mantissa bits kept (`round-weights`).
    bits: int = 3

    @property
    def needs_code(self) -> bool:
        """The folder carries a modeling file (its model YAML needs trust_remote_code)."""
        return self.kind in CODE_KINDS

    @property
    def site(self) -> tuple[int | None, str | None]:
        """(layer, module label) where the defect is, as localize names it; (None, None) for a global one."""
        if self.kind in GLOBAL_KINDS or self.kind in CONFIGURATION_KINDS:
            return None, None
        module = {"scale-layer": "self_attn+mlp", "scale-o-proj": "self_attn", "scale-mlp": "mlp",
                  "scale-q": "self_attn", "zero-head": "self_attn", "fp16-norm": "input_layernorm"}.get(self.kind)
        if self.kind == "scale-final-norm":
            return None, "norm"
        if self.kind in ("round-weights", "scale-weight"):
            module = str(self.module).split(".")[0] if self.module else "self_attn+mlp"
        if self.kind in ("norm-eps", "scale-norm"):
            module = self.module
        return self.layer, module


def check(defect: Defect, layers: int) -> None:
    """ConfigError unless `defect` can be planted in a model of `layers` decoder layers."""
    if defect.kind not in KINDS:
        raise ConfigError(f"unknown defect {defect.kind!r}: use one of {', '.join(KINDS)}")
    if defect.kind in ("rms-eps", "rope-base", "norm-eps") and (defect.value is None or not defect.value > 0):
        raise ConfigError(f"defect {defect.kind} needs a value > 0")
    if not 0 <= defect.layer < layers:
        raise ConfigError(f"defect {defect.kind}: layer {defect.layer} is not in 0..{layers - 1}")
    if defect.kind == "round-weights" and defect.module and defect.module not in LINEAR_MODULES:
        raise ConfigError(f"defect round-weights: module {defect.module!r}: use one of {', '.join(LINEAR_MODULES)}")
    if defect.kind == "scale-weight" and defect.module not in LINEAR_MODULES:
        raise ConfigError(f"defect scale-weight: module must be one of {', '.join(LINEAR_MODULES)}, "
                          f"found {defect.module!r}")
    if defect.kind in ("norm-eps", "scale-norm") and defect.module not in NORMS:
        raise ConfigError(f"defect {defect.kind}: module {defect.module!r}: use one of {', '.join(NORMS)}")
    if defect.kind == "round-weights" and not 0 <= defect.bits <= 23:
        raise ConfigError(f"defect round-weights: bits {defect.bits} is not in 0..23")


def round_mantissa(values, bits: int):
    """`values` (a float32 numpy array) rounded to `bits` mantissa bits (round half to even)."""
    import numpy as np

    mantissa, exponent = np.frexp(values.astype(np.float32))
    scale = np.float32(2.0 ** (bits + 1))
    return np.ldexp(np.round(mantissa * scale) / scale, exponent).astype(np.float32)


def write_defective_model(source: Path, target: Path, defect: Defect) -> Path:
    """Copy the model folder `source` to `target` with `defect` planted in its weights, config or code."""
    from safetensors.numpy import load_file, save_file

    if defect.kind not in KINDS:
        raise ConfigError(f"unknown defect {defect.kind!r}: use one of {', '.join(KINDS)}")
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    check(defect, int(config["num_hidden_layers"]))
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    prefix = f"model.layers.{defect.layer}."
    if defect.kind in WEIGHT_KINDS:
        weights = load_file(str(source / "model.safetensors"))
        if defect.kind == "scale-final-norm":
            weights["model.norm.weight"] = weights["model.norm.weight"] * defect.factor
        elif defect.kind == "round-weights":
            for name in (defect.module,) if defect.module else LINEAR_MODULES:
                weights[f"{prefix}{name}.weight"] = round_mantissa(weights[f"{prefix}{name}.weight"], defect.bits)
        elif defect.kind == "scale-weight":
            weights[f"{prefix}{defect.module}.weight"] = weights[f"{prefix}{defect.module}.weight"] * defect.factor
        elif defect.kind == "zero-head":
            head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
            o_proj = weights[prefix + "self_attn.o_proj.weight"].copy()
            o_proj[:, defect.head * head_dim : (defect.head + 1) * head_dim] = 0
            weights[prefix + "self_attn.o_proj.weight"] = o_proj
        else:
            names = {"scale-layer": ("self_attn.o_proj.weight", "mlp.down_proj.weight"),
                     "scale-o-proj": ("self_attn.o_proj.weight",), "scale-mlp": ("mlp.down_proj.weight",),
                     "scale-q": ("self_attn.q_proj.weight",), "scale-norm": (f"{defect.module}.weight",)}[defect.kind]
            for name in names:
                weights[prefix + name] = weights[prefix + name] * defect.factor
        save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
        return target
    _link_or_copy(source / "model.safetensors", target / "model.safetensors")  # the weights are unchanged
    shutil.copyfile(CODE_FILE, target / CODE_FILE.name)
    code_class = BATCH_MASK_CLASS if defect.kind == "batch-mask" else CODE_CLASS
    config["auto_map"] = {"AutoModelForCausalLM": f"{CODE_FILE.stem}.{code_class}"}
    if defect.kind == "rms-eps":
        config["planted_constants"] = {"rms_norm_eps": defect.value}
    elif defect.kind == "rope-base":
        config["planted_constants"] = {"rope_theta": defect.value}
    elif defect.kind == "fp16-norm":
        config["planted_fp16_norm_layer"] = defect.layer
    elif defect.kind == "norm-eps":
        config["planted_norm_eps"] = {"layer": defect.layer, "module": defect.module, "value": defect.value}
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return target


def plant(model, defect: Defect):
    """Plant `defect` into a loaded HF Llama-family model, in place; return the function that undoes it."""
    import copy

    import torch

    layers = model.model.layers
    check(defect, len(layers))
    layer = layers[defect.layer]
    saved: list[tuple[object, str, object]] = []

    def keep(owner: object, name: str) -> None:
        value = getattr(owner, name)
        saved.append((owner, name, value.detach().clone() if isinstance(value, torch.Tensor) else value))

    def set_weight(linear, new) -> None:
        keep(linear, "weight")
        linear.weight.data = new.to(linear.weight.dtype)

    with torch.no_grad():
        if defect.kind in ("scale-layer", "scale-o-proj", "scale-mlp", "scale-q", "scale-norm"):
            names = {"scale-layer": ("self_attn.o_proj", "mlp.down_proj"), "scale-o-proj": ("self_attn.o_proj",),
                     "scale-mlp": ("mlp.down_proj",), "scale-q": ("self_attn.q_proj",),
                     "scale-norm": (str(defect.module),)}[defect.kind]
            targets = [layer.get_submodule(name) for name in names]
            for linear in targets:
                set_weight(linear, linear.weight.float() * defect.factor)
        elif defect.kind == "zero-head":
            head_dim = layer.self_attn.head_dim
            weight = layer.self_attn.o_proj.weight.detach().clone()
            weight[:, defect.head * head_dim:(defect.head + 1) * head_dim] = 0
            set_weight(layer.self_attn.o_proj, weight)
        elif defect.kind == "scale-weight":
            linear = layer.get_submodule(str(defect.module))
            set_weight(linear, linear.weight.float() * defect.factor)
        elif defect.kind == "scale-final-norm":
            set_weight(model.model.norm, model.model.norm.weight.float() * defect.factor)
        elif defect.kind == "round-weights":
            for name in (defect.module,) if defect.module else LINEAR_MODULES:
                linear = layer.get_submodule(str(name))
                set_weight(linear, torch.from_numpy(round_mantissa(linear.weight.detach().float().cpu().numpy(),
                                                                   defect.bits)).to(linear.weight.device))
        elif defect.kind in ("rms-eps", "norm-eps"):
            norms = ([m for m in model.modules() if hasattr(m, "variance_epsilon")] if defect.kind == "rms-eps"
                     else [layer.get_submodule(str(defect.module))])
            for norm in norms:
                keep(norm, "variance_epsilon")
                norm.variance_epsilon = defect.value
        elif defect.kind == "rope-base":
            rotary = model.model.rotary_emb
            config = copy.deepcopy(model.config)
            config.rope_parameters["rope_theta"] = defect.value
            inv_freq, _ = rotary.compute_default_rope_parameters(config)
            for name in ("inv_freq", "original_inv_freq"):
                keep(rotary, name)
                setattr(rotary, name, inv_freq.to(getattr(rotary, name).device))
        elif defect.kind == "fp16-norm":
            from logitsdump.demo.planted_modeling import FP16RMSNorm

            norm = layer.input_layernorm
            planted = FP16RMSNorm(norm.weight.shape[0], norm.variance_epsilon).to(norm.weight.device,
                                                                                  norm.weight.dtype)
            planted.weight.data = norm.weight.detach().clone()
            keep(layer, "input_layernorm")
            layer.input_layernorm = planted

    def undo() -> None:
        with torch.no_grad():
            for owner, name, value in reversed(saved):
                if name == "weight":
                    owner.weight.data = value
                else:
                    setattr(owner, name, value)

    return undo


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no second copy of a large file), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_model_yaml(path: Path, model_dir: Path, model_name: str, data_type: str, *,
                     trust_remote_code: bool = False, use_chat_template: bool = False) -> Path:
    """A model YAML for `model_dir` (absolute path)."""
    def flag(value: bool) -> str:
        return "true" if value else "false"

    path.write_text(
        f"model_name: {model_name}\nmodel_path: {model_dir.resolve()}\nmodel_type: pa\ndata_type: {data_type}\n"
        f"trust_remote_code: {flag(trust_remote_code)}\nuse_chat_template: {flag(use_chat_template)}\n",
        encoding="utf-8",
    )
    return path
