"""Models with a planted precision bug, to show that the diagnosis finds real bugs.

A "device with a defect" is simulated by a copy of a model folder that carries the defect:
- in its weights: `scale-layer` (layer `layer`'s attention and MLP outputs times `factor`, a wrong
  scale factor in a fused kernel), `scale-o-proj` (only its attention output projection),
  `scale-weight` (one linear module of layer `layer`, `module` e.g. `self_attn.v_proj` or `mlp.up_proj`,
  times `factor`), `scale-final-norm` (the final RMSNorm's weight times `factor`: every logit scaled),
  `round-weights` (every linear weight of layer `layer` rounded to `bits` mantissa bits, a too coarse
  weight format), `zero-head` (head `head` of layer `layer` contributes nothing: a kernel that drops a head);
- in its config: `rms-eps` (every RMSNorm's epsilon set to `value`), `rope-base` (RoPE's base
  theta set to `value`);
- in its code: `fp16-norm` (layer `layer`'s input RMSNorm squares its input in fp16 instead of
  fp32, so it overflows to inf where |x| > 255.9 and the norm's output there becomes 0: the classic
  fp16 overflow of a kernel that skips the fp32 upcast). The folder gets a small modeling file
  (`planted_modeling.py`) and needs `trust_remote_code: true` in its model YAML
  (`write_model_yaml(..., trust_remote_code=defect.needs_code)`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from logitsdump.errors import ConfigError

KINDS = ("scale-layer", "scale-o-proj", "scale-weight", "scale-final-norm", "round-weights", "zero-head", "rms-eps",
         "rope-base", "fp16-norm")
#: The kinds planted in the weights file.
WEIGHT_KINDS = ("scale-layer", "scale-o-proj", "scale-weight", "scale-final-norm", "round-weights", "zero-head")
#: The linear modules of a Llama layer (`scale-weight`'s `module`, `round-weights`' targets).
LINEAR_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                  "mlp.up_proj", "mlp.down_proj")
#: The modeling file a `fp16-norm` folder carries, and the class its config's auto_map names.
CODE_FILE = Path(__file__).resolve().parent / "planted_modeling.py"
CODE_CLASS = "PlantedLlamaForCausalLM"


@dataclass(frozen=True)
class Defect:
    """What is planted (see the module's docstring for each `kind`)."""

    kind: str
    layer: int = 1
    factor: float = 1.05
    head: int = 0
    #: The new epsilon (`rms-eps`) or RoPE theta (`rope-base`).
    value: float | None = None
    #: `scale-weight`: the linear module of the layer (one of `LINEAR_MODULES`).
    module: str = ""
    #: `round-weights`: the mantissa bits kept.
    bits: int = 3

    @property
    def needs_code(self) -> bool:
        """The folder carries a modeling file (its model YAML needs trust_remote_code)."""
        return self.kind == "fp16-norm"


def write_defective_model(source: Path, target: Path, defect: Defect) -> Path:
    """Copy the model folder `source` to `target` with `defect` planted in its weights, config or code."""
    from safetensors.numpy import load_file, save_file

    if defect.kind not in KINDS:
        raise ConfigError(f"unknown defect {defect.kind!r}: use one of {', '.join(KINDS)}")
    if defect.kind in ("rms-eps", "rope-base") and (defect.value is None or not defect.value > 0):
        raise ConfigError(f"defect {defect.kind} needs a value > 0")
    if defect.kind == "scale-weight" and defect.module not in LINEAR_MODULES:
        raise ConfigError(f"defect scale-weight: module must be one of {', '.join(LINEAR_MODULES)}, "
                          f"found {defect.module!r}")
    if defect.kind == "round-weights" and not 0 <= defect.bits <= 22:
        raise ConfigError(f"defect round-weights: bits must be in 0..22, found {defect.bits}")
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    layers = int(config["num_hidden_layers"])
    if not 0 <= defect.layer < layers:
        raise ConfigError(f"defect {defect.kind}: layer {defect.layer} is not in 0..{layers - 1}")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    prefix = f"model.layers.{defect.layer}."
    if defect.kind in WEIGHT_KINDS:
        weights = load_file(str(source / "model.safetensors"))
        if defect.kind == "scale-final-norm":
            weights["model.norm.weight"] = weights["model.norm.weight"] * defect.factor
        elif defect.kind == "round-weights":
            for name in LINEAR_MODULES:
                weights[f"{prefix}{name}.weight"] = _round_mantissa(weights[f"{prefix}{name}.weight"], defect.bits)
        elif defect.kind == "scale-weight":
            weights[f"{prefix}{defect.module}.weight"] = weights[f"{prefix}{defect.module}.weight"] * defect.factor
        elif defect.kind == "zero-head":
            head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
            o_proj = weights[prefix + "self_attn.o_proj.weight"].copy()
            o_proj[:, defect.head * head_dim : (defect.head + 1) * head_dim] = 0
            weights[prefix + "self_attn.o_proj.weight"] = o_proj
        else:
            names = ("self_attn.o_proj.weight",) + (("mlp.down_proj.weight",) if defect.kind == "scale-layer" else ())
            for name in names:
                weights[prefix + name] = weights[prefix + name] * defect.factor
        save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
        return target
    _link_or_copy(source / "model.safetensors", target / "model.safetensors")  # the weights are unchanged
    if defect.kind == "rms-eps":
        config["rms_norm_eps"] = defect.value
    elif defect.kind == "rope-base":
        config["rope_theta"] = defect.value
        if isinstance(config.get("rope_parameters"), dict):  # transformers 5 reads it from here
            config["rope_parameters"]["rope_theta"] = defect.value
    else:
        shutil.copyfile(CODE_FILE, target / CODE_FILE.name)
        config["auto_map"] = {"AutoModelForCausalLM": f"{CODE_FILE.stem}.{CODE_CLASS}"}
        config["planted_fp16_norm_layer"] = defect.layer
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return target


def _round_mantissa(values, bits: int):
    """float32 `values` rounded to `bits` mantissa bits (to nearest, ties away from zero)."""
    import numpy as np

    array = np.asarray(values, dtype=np.float32)
    mantissa, exponent = np.frexp(array)  # array = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
    scale = float(2 ** (bits + 1))
    rounded = np.sign(mantissa) * np.floor(np.abs(mantissa) * scale + 0.5) / scale
    return np.ldexp(rounded, exponent).astype(np.float32)


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
