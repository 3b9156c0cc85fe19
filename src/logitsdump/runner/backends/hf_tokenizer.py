"""The HF tokenizer side every backend shares: loading it, encoding queries, decoding ids, EOS ids.

HF transformers and vLLM backends tokenize through the same code, so the same query gives
the same token ids whichever framework runs the model. transformers is imported when a
tokenizer loads, not with this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from logitsdump.runner.config import ModelConfig
from logitsdump.token_bytes import token_text


def load_tokenizer(model_path: str | Path, config: ModelConfig) -> Any:
    """The model folder's tokenizer, from local files only."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(
        model_path, trust_remote_code=config.trust_remote_code, local_files_only=True
    )


class TokenizerMethods:
    """encode / decode / token_texts of the `Backend` protocol over `self.tokenizer` and `self.config`."""

    tokenizer: Any
    config: ModelConfig

    def encode(self, query: str) -> list[int]:
        """Token ids of a query (through the chat template when the model YAML asks for it)."""
        if self.config.use_chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": query}], tokenize=True, add_generation_prompt=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        # verbose=False: no "longer than the maximum" warning, decoding.fit_input applies the task's limit
        return [int(i) for i in self.tokenizer(query, verbose=False)["input_ids"]]

    def render(self, query: str) -> str:
        """The text `encode` tokenizes: the query, or the chat template applied to it."""
        if self.config.use_chat_template:
            return str(self.tokenizer.apply_chat_template(
                [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
            ))
        return query

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """The text of each token on its own (special tokens included); a piece of a multi-byte character
        as its bytes, `<0xE2>` (`token_bytes`), not as U+FFFD."""
        return [token_text(self.tokenizer, i) for i in ids]


def eos_ids(configs: Iterable[Any], tokenizer: Any) -> set[int]:
    """The ids that end a generation: `eos_token_id` of each config (generation, model) and the tokenizer's."""
    ids: set[int] = set()
    for source in configs:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
