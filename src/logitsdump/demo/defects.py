"""Models with a planted precision bug, to show that the diagnosis finds real bugs.

A "device with a defect" is simulated by a copy of a model whose weights carry the
defect, e.g. one layer's output scaled by a few percent (a wrong scale factor in a
fused kernel) or one attention head zeroed (a kernel that drops a head).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from logitsdump.errors import ConfigError


@dataclass(frozen=True)
class Defect:
    """What is planted: `scale-layer` (layer `layer`'s attention and MLP outputs times `factor`)
    or `zero-head` (head `head` of layer `layer` contributes nothing)."""

    kind: str
    layer: int = 1
    factor: float = 1.05
    head: int = 0


def write_defective_model(source: Path, target: Path, defect: Defect) -> Path:
    """Copy the model folder `source` to `target` with `defect` planted in its safetensors weights."""
    from safetensors.numpy import load_file, save_file

    if defect.kind not in ("scale-layer", "zero-head"):
        raise ConfigError(f"unknown defect {defect.kind!r}: use scale-layer or zero-head")
    shutil.copytree(source, target)
    config = json.loads((source / "config.json").read_text())
    weights = load_file(str(source / "model.safetensors"))
    prefix = f"model.layers.{defect.layer}."
    if defect.kind == "scale-layer":
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            weights[prefix + name] = weights[prefix + name] * defect.factor
    else:
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        o_proj = weights[prefix + "self_attn.o_proj.weight"].copy()
        o_proj[:, defect.head * head_dim : (defect.head + 1) * head_dim] = 0
        weights[prefix + "self_attn.o_proj.weight"] = o_proj
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def write_model_yaml(path: Path, model_dir: Path, model_name: str, data_type: str) -> Path:
    """A model YAML for `model_dir` (absolute path)."""
    path.write_text(
        f"model_name: {model_name}\nmodel_path: {model_dir.resolve()}\nmodel_type: pa\ndata_type: {data_type}\n",
        encoding="utf-8",
    )
    return path
