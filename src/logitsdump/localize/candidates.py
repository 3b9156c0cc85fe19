"""Which modules of a HF causal LM are candidates, found by the model's structure rather than by a list of names.

- every decoder layer (`kind="layer"`), and each of its direct children that holds parameters (`kind="module"`):
  in the Llama family `input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp`; Qwen2/3, Mistral,
  Phi-3 and Gemma use the same names, Gemma 2/3 add `pre_`/`post_feedforward_layernorm`, and all of them
  are found the same way, whatever their names;
- the model-level modules (`kind="model"`): the input embedding, the rotary embedding where the model has
  one at its base, the final norm, the LM head;
- with `ops_at` (the `tensors` mode's top sites), the `nn.Linear` modules inside those layers' children
  (`kind="op"`: q/k/v/o projections, MLP projections).

A candidate is named by its module path (`model.layers.3.self_attn`) and labelled by the attribute name
in its parent (`self_attn`), so the same code serves every family; the families whose decoder layers are
not one ModuleList of `num_hidden_layers` entries (GPT-2's `transformer.h` is found too; encoder-decoder
models are not) are refused with a message. torch is needed only through the model object itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from logitsdump.errors import ConfigError

#: Where a base model keeps its decoder layers, tried in order before a search.
LAYER_LISTS = ("layers", "h", "blocks", "decoder.layers")
#: Names of the final norm at the base model.
FINAL_NORMS = ("norm", "final_layernorm", "ln_f", "final_norm", "norm_f")
#: Names of an attention module's output projection (whose input holds one slice per head).
OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "dense", "c_proj", "wo")
#: Labels of the model-level candidates.
EMBEDDING, ROTARY, FINAL_NORM, LM_HEAD = "embed_tokens", "rotary_emb", "norm", "lm_head"
LAYER = "layer"


@dataclass(frozen=True)
class Candidate:
    """One module whose own error is measured."""

    #: The module's path in the model (`named_modules()`), e.g. `model.layers.3.self_attn`.
    name: str
    #: The decoder layer it belongs to; None for a model-level module.
    layer: int | None
    #: Its label: the attribute name in its parent (`self_attn`), `layer` for a whole decoder layer, or one of
    #: the model-level labels; `self_attn.q_proj` for an op.
    module: str
    #: "layer", "module", "model" or "op".
    kind: str
    #: The module's class name (msprobe names modules with it).
    cls: str
    #: The isolated replay feeds it golden's input (False: its input is token or position ids).
    feeds: bool = True

    @property
    def label(self) -> str:
        """`L3.self_attn`, `L3` for a whole layer, or the model-level label."""
        if self.layer is None:
            return self.module
        return f"L{self.layer}" if self.kind == "layer" else f"L{self.layer}.{self.module}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(name=str(data["name"]), layer=data.get("layer"), module=str(data["module"]),
                   kind=str(data["kind"]), cls=str(data.get("cls", "")), feeds=bool(data.get("feeds", True)))


@dataclass(frozen=True)
class Structure:
    """The candidates of a model, in the order its forward pass reaches them, and its shape."""

    candidates: tuple[Candidate, ...]
    layers: int
    hidden_size: int
    heads: int
    head_dim: int
    model_class: str

    def by_name(self) -> dict[str, Candidate]:
        return {c.name: c for c in self.candidates}

    def of_kind(self, *kinds: str) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.kind in kinds)

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": [c.to_dict() for c in self.candidates], "layers": self.layers,
                "hidden_size": self.hidden_size, "heads": self.heads, "head_dim": self.head_dim,
                "model_class": self.model_class}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Structure:
        return cls(tuple(Candidate.from_dict(c) for c in data["candidates"]), int(data["layers"]),
                   int(data["hidden_size"]), int(data["heads"]), int(data["head_dim"]), str(data["model_class"]))


def find_structure(model: Any, ops_at: Iterable[int] = ()) -> Structure:
    """The candidates of a loaded HF causal LM (see the module docstring); ConfigError when its decoder
    layers cannot be found."""
    config = model.config
    depth = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
    base = getattr(model, "base_model", model)
    names = {id(module): name for name, module in model.named_modules()}
    layer_list = _layer_list(base, depth)
    if layer_list is None:
        raise ConfigError(f"localize: cannot find the {depth} decoder layers of {type(model).__name__} (expected "
                          f"a ModuleList named {' or '.join(LAYER_LISTS)} at its base model)")
    ops = set(ops_at)
    candidates: list[Candidate] = []
    embedding = model.get_input_embeddings()
    candidates.append(Candidate(names[id(embedding)], None, EMBEDDING, "model", type(embedding).__name__, feeds=False))
    rotary = getattr(base, "rotary_emb", None)
    if rotary is not None and id(rotary) in names:
        candidates.append(Candidate(names[id(rotary)], None, ROTARY, "model", type(rotary).__name__, feeds=False))
    for index, layer in enumerate(layer_list):
        candidates.append(Candidate(names[id(layer)], index, LAYER, "layer", type(layer).__name__))
        for child_name, child in layer.named_children():
            if not _has_parameters(child):
                continue
            candidates.append(Candidate(names[id(child)], index, child_name, "module", type(child).__name__))
            if index in ops:
                for op_name, op in child.named_modules():
                    if op_name and type(op).__name__ == "Linear":
                        candidates.append(Candidate(names[id(op)], index, f"{child_name}.{op_name}", "op",
                                                    type(op).__name__))
    final = next((getattr(base, n) for n in FINAL_NORMS if _is_module(getattr(base, n, None))), None)
    if final is not None:
        candidates.append(Candidate(names[id(final)], None, FINAL_NORM, "model", type(final).__name__))
    head = model.get_output_embeddings()
    if head is not None:
        candidates.append(Candidate(names[id(head)], None, LM_HEAD, "model", type(head).__name__))
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))
    head_dim = int(getattr(config, "head_dim", 0) or (hidden // heads if heads else 0))
    return Structure(tuple(candidates), depth, hidden, heads, head_dim, type(model).__name__)


def output_projection(attention: Any) -> tuple[str, Any] | None:
    """The output projection of an attention module (name, module), the Linear whose input is the heads'
    outputs side by side; None when it has none of the usual names."""
    for name in OUTPUT_PROJECTIONS:
        module = getattr(attention, name, None)
        if module is not None and type(module).__name__ == "Linear":
            return name, module
    return None


def attention_label(structure: Structure) -> str | None:
    """The label of the attention module in this model's layers (the child with an output projection)."""
    return next((c.module for c in structure.of_kind("module") if c.module in ("self_attn", "attn", "attention",
                                                                                "self_attention")), None)


def modules_by_name(model: Any, names: Sequence[str]) -> dict[str, Any]:
    """name -> module for the candidates' names; ConfigError naming the first one the model lacks."""
    found = dict(model.named_modules())
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"localize: the model has no module {missing[0]!r} (the record was made on another "
                          f"architecture, or another transformers version names it differently; {len(missing)} "
                          "candidate(s) missing)")
    return {n: found[n] for n in names}


def _layer_list(base: Any, depth: int) -> Any:
    for path in LAYER_LISTS:
        module = base
        for part in path.split("."):
            module = getattr(module, part, None)
        if module is not None and type(module).__name__ == "ModuleList" and len(module) == depth:
            return module
    for _name, module in base.named_modules():
        if type(module).__name__ == "ModuleList" and len(module) == depth and depth > 0:
            return module
    return None


def _has_parameters(module: Any) -> bool:
    return next(module.parameters(), None) is not None


def _is_module(value: Any) -> bool:
    return value is not None and hasattr(value, "named_modules") and _has_parameters(value)
