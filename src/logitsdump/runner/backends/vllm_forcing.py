"""The vLLM logits processor of a replay: each step of a request chooses the golden token it was given.

Loaded by the engine from its qualified name (`vllm.FORCED_PROCESSOR`); importing this module
imports vLLM. vLLM copies the raw logits for `logprobs` before any logits processor runs, so the
logits a replay records are the model's own; this processor only decides the token fed next.
A request without forced tokens (`SamplingParams.extra_args`) is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from logitsdump.runner.backends.vllm import FORCED_KEY


class ForcedTokens(AdapterLogitsProcessor):
    """Greedy sampling picks `extra_args[FORCED_KEY][t]` at step t of a request that carries them."""

    def is_argmax_invariant(self) -> bool:
        return False  # it changes the greedy choice, so vLLM must run it under temperature 0

    def new_req_logits_processor(self, params: Any) -> Callable[[list[int], torch.Tensor], torch.Tensor] | None:
        tokens = (params.extra_args or {}).get(FORCED_KEY)
        return None if tokens is None else _forcer([int(t) for t in tokens])


def _forcer(tokens: Sequence[int]) -> Callable[[list[int], torch.Tensor], torch.Tensor]:
    def force(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        step = len(output_ids)
        if step >= len(tokens):
            return logits
        forced = torch.full_like(logits, float("-inf"))
        forced[tokens[step]] = 0.0
        return forced

    return force
