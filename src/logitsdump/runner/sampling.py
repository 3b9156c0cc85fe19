"""How the runner chooses each generated token: greedy (modeltest's way, the default) or sampled.

Our extension of the model YAML (modeltest ignores the key), for the set-ups real stacks run:

    generation:
      use_generation_config: true   # apply the model folder's generation_config.json, as transformers'
                                    # generate() does (do_sample, temperature, top_k, top_p, repetition_penalty)
      do_sample: true               # each key given here wins over the file
      temperature: 0.7
      top_k: 50
      top_p: 0.9
      repetition_penalty: 1.1
      seed: 0

Without the key every token is the argmax of the raw logits (and the dumped logits are those raw
logits whatever is chosen). Missing values take transformers' `GenerationConfig` defaults
(temperature 1, top_k 50, top_p 1, repetition_penalty 1). The order is transformers': repetition
penalty, temperature, top-k, top-p, then a draw from a generator seeded with `seed`.
torch is imported only when a token is chosen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitsdump.errors import ConfigError

#: The model YAML's `generation` keys and their types.
GENERATION_KEYS: dict[str, type] = {
    "use_generation_config": bool, "do_sample": bool, "temperature": float, "top_k": int, "top_p": float,
    "repetition_penalty": float, "seed": int,
}
#: The generation_config.json fields `use_generation_config` applies.
FILE_FIELDS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")
#: transformers' GenerationConfig defaults of those fields.
DEFAULTS: dict[str, Any] = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
                            "repetition_penalty": 1.0}
GENERATION_CONFIG_FILE = "generation_config.json"
#: Where a setting came from (`GenerationSettings.sources`).
FROM_FILE = GENERATION_CONFIG_FILE
FROM_YAML = "model YAML"


def check_generation(data: Mapping[str, Any], fail: Callable[[str], None]) -> dict[str, Any]:
    """The model YAML's `generation` mapping, checked (each problem reported through `fail`)."""
    checked: dict[str, Any] = {}
    for key, value in data.items():
        kind = GENERATION_KEYS.get(str(key))
        if kind is None:
            fail(f"'generation.{key}' is not a known key (known: {', '.join(GENERATION_KEYS)})")
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            fail(f"'generation.{key}' must be {kind.__name__}, found {value!r}")
            continue
        problem = _range_problem(str(key), value)
        if problem:
            fail(f"'generation.{key}' {problem}, found {value!r}")
            continue
        checked[str(key)] = value
    return checked


def _range_problem(key: str, value: Any) -> str:
    if key == "temperature" and not value > 0:
        return "must be > 0"
    if key == "top_k" and value < 0:
        return "must be >= 0 (0: off)"
    if key == "top_p" and not 0 < value <= 1:
        return "must be in (0, 1]"
    if key == "repetition_penalty" and not value > 0:
        return "must be > 0"
    return ""


def read_generation_config(model_path: str | Path) -> dict[str, Any] | None:
    """The model folder's generation_config.json as a mapping; None when the folder has none."""
    path = Path(model_path) / GENERATION_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


@dataclass(frozen=True)
class GenerationSettings:
    """How tokens are chosen, as in effect for a run."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    #: The model folder's generation_config.json was applied (`use_generation_config`).
    generation_config_applied: bool = False
    #: setting -> FROM_FILE or FROM_YAML, for each one not left at its default.
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def argmax(self) -> bool:
        """Every token is the argmax of the raw logits (no sampling, no penalty)."""
        return not self.do_sample and self.repetition_penalty == 1.0

    def effective(self) -> dict[str, Any]:
        """The settings that change a choice (temperature, top-k/p and seed only when sampling), for the
        run's provenance."""
        return {
            "do_sample": self.do_sample,
            "temperature": self.temperature if self.do_sample else None,
            "top_k": self.top_k if self.do_sample else None,
            "top_p": self.top_p if self.do_sample else None,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed if self.do_sample else None,
            "generation_config_applied": self.generation_config_applied,
            "sources": dict(self.sources),
        }


def resolve_settings(yaml: Mapping[str, Any], file: Mapping[str, Any] | None) -> GenerationSettings:
    """The settings in effect: the model YAML's `generation` keys over generation_config.json's fields
    (when `use_generation_config`) over transformers' defaults."""
    values = dict(DEFAULTS)
    sources: dict[str, str] = {}
    applied = bool(yaml.get("use_generation_config")) and file is not None
    if applied:
        assert file is not None
        for name in FILE_FIELDS:
            value = file.get(name)
            if value is not None and value != DEFAULTS[name]:
                values[name] = value
                sources[name] = FROM_FILE
    for name in FILE_FIELDS:
        if name in yaml:
            values[name] = yaml[name]
            if yaml[name] != DEFAULTS[name]:
                sources[name] = FROM_YAML
            else:
                sources.pop(name, None)
    try:
        return GenerationSettings(
            do_sample=bool(values["do_sample"]), temperature=float(values["temperature"]),
            top_k=int(values["top_k"]), top_p=float(values["top_p"]),
            repetition_penalty=float(values["repetition_penalty"]), seed=int(yaml.get("seed", 0)),
            generation_config_applied=applied, sources=sources,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{GENERATION_CONFIG_FILE}: a sampling field has the wrong type ({err})") from None


class TokenChooser:
    """Chooses the next token of each row from its raw logits, under `settings`."""

    def __init__(self, settings: GenerationSettings) -> None:
        import torch

        self.settings = settings
        self.generator = torch.Generator().manual_seed(settings.seed)

    def choose(self, logits: Any, histories: Sequence[Sequence[int]]) -> list[int]:
        """One token id per row of `logits` [rows, vocab]; `histories[r]`: row r's prompt and generated ids."""
        import torch

        s = self.settings
        scores = logits.detach().to("cpu", torch.float32).clone()
        if s.repetition_penalty != 1.0:
            for row, history in enumerate(histories):
                ids = torch.tensor(sorted(set(int(i) for i in history)), dtype=torch.long)
                if ids.numel():
                    seen = scores[row, ids]
                    scores[row, ids] = torch.where(seen < 0, seen * s.repetition_penalty, seen / s.repetition_penalty)
        if not s.do_sample:
            return [int(i) for i in scores.argmax(dim=-1).tolist()]
        scores = scores / s.temperature
        if 0 < s.top_k < scores.shape[-1]:
            kth = torch.topk(scores, s.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if s.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True, dim=-1)
            before = ordered.softmax(dim=-1).cumsum(dim=-1) - ordered.softmax(dim=-1)
            drop = before >= s.top_p  # keep the smallest set whose mass reaches top_p (the first always kept)
            scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        probabilities = scores.softmax(dim=-1)
        return [int(i) for i in torch.multinomial(probabilities, 1, generator=self.generator)[:, 0].tolist()]
