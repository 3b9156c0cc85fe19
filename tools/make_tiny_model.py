"""Build the embedded tiny Llama (weights, config, byte-level tokenizer) from a seed.

    python tools/make_tiny_model.py [--out src/logitsdump/demo/assets/model/tiny_llama]
    python tools/make_tiny_model.py --head-dim 32 --out DIR   # a variant vLLM can load

vLLM's attention kernels take head sizes 32, 64, 80, 96, 112, 128, ... only, not the shipped
model's 16: `--head-dim 32` builds the same architecture with wider heads (other weights, since
the seeded draws change shape), for the vLLM backend's tests and benchmarks.

The weights come from numpy's seeded generator, not from transformers' init
code, so they are the same whatever the library versions. The init std (0.3)
is large on purpose: fp32 and bf16 runs of this model then pick different
greedy tokens on a good share of cases, as two real devices do.

The lm_head rows of three groups of answer tokens (the letters A-D; 's' and 'o',
the last bytes of "yes" and "no" that BoolQ compares; the digits) are one shared,
scaled-up vector each plus a small individual part. The group is then often
chosen, and the choice inside it is a near-tie that the rounding of the weights
to bf16 can flip, like the near-ties that separate two real devices.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SEED = 20261128
INIT_STD = 0.3
ANSWER_GROUPS = (b"ABCD", b"so", b"0123456789")
ANSWER_SCALE = 3.0  # the group vector's std, in units of INIT_STD
ANSWER_SPREAD = 0.01  # the individual part's std, in units of INIT_STD
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2; bytes follow at 3..258
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": len(SPECIAL_TOKENS) + 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (ByteLevel pre-tokenizer)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def build_weights(rng: np.random.Generator, config: dict = CONFIG) -> dict[str, np.ndarray]:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    vocab = config["vocab_size"]

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * INIT_STD).astype(np.float32)

    weights = {"model.embed_tokens.weight": normal(vocab, hidden)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        weights[prefix + "self_attn.q_proj.weight"] = normal(heads * head_dim, hidden)
        weights[prefix + "self_attn.k_proj.weight"] = normal(kv_heads * head_dim, hidden)
        weights[prefix + "self_attn.v_proj.weight"] = normal(kv_heads * head_dim, hidden)
        weights[prefix + "self_attn.o_proj.weight"] = normal(hidden, heads * head_dim)
        weights[prefix + "mlp.gate_proj.weight"] = normal(inter, hidden)
        weights[prefix + "mlp.up_proj.weight"] = normal(inter, hidden)
        weights[prefix + "mlp.down_proj.weight"] = normal(hidden, inter)
        weights[prefix + "input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        weights[prefix + "post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    weights["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    lm_head = normal(vocab, hidden)
    for group in ANSWER_GROUPS:
        shared = normal(hidden) * ANSWER_SCALE
        for byte in group:
            lm_head[len(SPECIAL_TOKENS) + byte] = shared + normal(hidden) * ANSWER_SPREAD
    weights["lm_head.weight"] = lm_head
    return weights


def build_tokenizer_json() -> dict:
    table = byte_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for byte in range(256):
        vocab[table[byte]] = len(SPECIAL_TOKENS) + byte
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, tok in enumerate(SPECIAL_TOKENS)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                          "use_regex": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }


def main() -> None:
    from safetensors.numpy import save_file

    default_out = Path(__file__).resolve().parents[1] / "src/logitsdump/demo/assets/model/tiny_llama"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--head-dim", type=int, default=CONFIG["head_dim"],
                        help=f"width of each attention head (default {CONFIG['head_dim']}; vLLM needs 32 or more)")
    args = parser.parse_args()
    out = args.out
    config = {**CONFIG, "head_dim": args.head_dim}
    out.mkdir(parents=True, exist_ok=True)
    weights = build_weights(np.random.default_rng(SEED), config)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": False}, indent=2) + "\n"
    )
    (out / "tokenizer.json").write_text(json.dumps(build_tokenizer_json(), ensure_ascii=False) + "\n")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "model_max_length": CONFIG["max_position_embeddings"],
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, indent=2) + "\n"
    )
    size = sum(w.nbytes for w in weights.values())
    print(f"wrote {out} ({size / 1024:.0f} KiB of weights, {len(weights)} tensors)")


if __name__ == "__main__":
    main()
