"""What one case fed the model and how its generation ended, for the run's provenance (`store.CaseInputs`).

The parity preflight (`triage/preflight.py`) compares these per case between the two sides: the
token ids (hash, length, BOS and EOS counts), the rendered prompt (after the chat template), the
prompt's length before the context limit cut it, the few-shot examples, the generation limit and
why the generation stopped.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from logitsdump.store import CaseInputs, text_sha256, token_ids_sha256

#: How a case was decoded (`CaseInputs.mode`).
GENERATE = "generate"
FORWARD = "forward"
#: Why a generation ended (`CaseInputs.stop_reason`).
STOP_EOS = "eos"
STOP_LIMIT = "limit"
STOP_RULE = "stop-rule"
STOP_FORCED = "forced"


def count_ids(ids: Sequence[int], wanted: Collection[int]) -> int:
    """How many of `ids` are in `wanted`."""
    return sum(1 for i in ids if i in wanted)


def bos_id(backend: Any) -> int | None:
    """The tokenizer's BOS id, None when it has none."""
    value = getattr(getattr(backend, "tokenizer", None), "bos_token_id", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def rendered_prompt(backend: Any, query: str) -> str | None:
    """The text the backend tokenizes for `query` (after the chat template); None when it cannot tell."""
    render = getattr(backend, "render", None)
    if render is None:
        return None
    try:
        return str(render(query))
    except Exception:
        return None


def stop_reason(output_ids: Sequence[int], limit: int, eos_ids: Collection[int], *, forced: bool) -> str:
    """eos, limit, forced (a replay), or stop-rule (the task's rule ended it before either)."""
    if forced:
        return STOP_FORCED
    if output_ids and output_ids[-1] in eos_ids:
        return STOP_EOS
    if len(output_ids) >= limit:
        return STOP_LIMIT
    return STOP_RULE


def case_inputs(
    backend: Any,
    query: str,
    ids: Sequence[int],
    original_length: int,
    output_ids: Sequence[int],
    *,
    max_new_tokens: int,
    mode: str,
    shots: Sequence[str] | None = None,
    forced: bool = False,
) -> CaseInputs:
    """The `CaseInputs` of one decoded case."""
    eos = frozenset(int(i) for i in getattr(backend, "eos_ids", ()) or ())
    bos = bos_id(backend)
    rendered = rendered_prompt(backend, query)
    generated = mode == GENERATE
    return CaseInputs(
        input_sha256=token_ids_sha256(ids),
        input_length=len(ids),
        original_length=int(original_length),
        bos_count=count_ids(ids, {bos}) if bos is not None else None,
        eos_count=count_ids(ids, eos) if eos else None,
        rendered_prompt=rendered,
        rendered_sha256=text_sha256(rendered) if rendered is not None else None,
        max_new_tokens=int(max_new_tokens) if generated else None,
        output_length=len(output_ids),
        stop_reason=stop_reason(output_ids, max_new_tokens, eos, forced=forced) if generated else None,
        mode=mode,
        shots=tuple(str(s) for s in shots) if shots is not None else None,
    )
