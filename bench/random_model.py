"""A random Llama of a chosen size, with the embedded byte-level tokenizer, for benchmarks.

    python bench/random_model.py OUT_DIR [--hidden 512 --layers 8 --vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from logitsdump.demo import examples

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def write_random_llama(folder: Path, hidden: int = 512, layers: int = 8, vocab: int = 32000, seed: int = 0) -> Path:
    """Write config, seeded random safetensors weights and the tiny model's tokenizer to `folder`."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((examples.TINY_MODEL / "config.json").read_text())
    heads = max(hidden // 64, 1)
    config.update(
        hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64 or hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads, vocab_size=vocab,
    )
    generator = torch.Generator().manual_seed(seed)
    inter = config["intermediate_size"]

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    weights = {"model.embed_tokens.weight": normal(vocab, hidden), "lm_head.weight": normal(vocab, hidden),
               "model.norm.weight": torch.ones(hidden)}
    for layer in range(layers):
        p = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            weights[p + f"self_attn.{name}.weight"] = normal(hidden, hidden)
        weights[p + "mlp.gate_proj.weight"] = normal(inter, hidden)
        weights[p + "mlp.up_proj.weight"] = normal(inter, hidden)
        weights[p + "mlp.down_proj.weight"] = normal(hidden, inter)
        weights[p + "input_layernorm.weight"] = torch.ones(hidden)
        weights[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(examples.TINY_MODEL / name, folder / name)
    return folder


def write_model_yaml(path: Path, model_dir: Path, name: str, data_type: str, framework: str = "Huggingface") -> Path:
    """A modeltest model YAML for `model_dir`, loaded by `framework` (requested_gpu_framework)."""
    path.write_text(
        f"model_name: {name}\nmodel_path: {model_dir}\nmodel_type: pa\ndata_type: {data_type}\n"
        f"requested_gpu_framework: {framework}\n",
        encoding="utf-8",
    )
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    print(write_random_llama(args.out, args.hidden, args.layers, args.vocab))
