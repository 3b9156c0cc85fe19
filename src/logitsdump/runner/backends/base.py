"""What the runner asks of a model backend, whatever the framework behind it.

`runner/evaluate.py` and `runner/replay.py` talk only to `Backend`; a framework
(HF transformers, vLLM) is one module with one class satisfying it, plus one
line in the registry (`backends/__init__.py`). Logits are torch tensors of
shape [vocab], **raw**: what the model computed, before any logits processor,
on the CPU. A server backend (`openai.py`), which sees only what the server reports,
hands back a step as a `topkfile.TopkStep` (its top-k log probabilities) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from logitsdump.runner.config import ModelConfig
    from logitsdump.runner.device import Device
    from logitsdump.runner.tasks.base import Tokenizer

#: A task's stopping rule: does it hold for the ids generated so far?
StopRule = Callable[[Sequence[int]], bool]


class CaseUnavailable(Exception):
    """A case the backend could not decode (a server request that failed after its retries): recorded as
    missing by the evaluation, which fails at the end (never dropped silently)."""


@dataclass
class Decoded:
    """One sequence's greedy decoding."""

    output_ids: list[int]
    step_logits: list[Any]  # raw logits [vocab] of the first kept steps, model dtype, on CPU (or TopkSteps)
    #: raw logits [vocab] of step 0 as float32, on CPU; a backend that fetches logits only on demand (vLLM)
    #: leaves it None when no step is kept (generated cases are judged from their text)
    first_logits: Any
    own_ids: list[int] = field(default_factory=list)  # replay: the argmax at each forced step


@dataclass(frozen=True)
class Provenance:
    """Where a dump's logits came from, as its manifest records it."""

    model_path: str
    device: str  # e.g. cpu, cuda:0, npu:1
    versions: Mapping[str, str]  # package -> version, logitsdump included
    #: What else the backend knows, as sections of the run's provenance (`describe.describe_model`: the
    #: backend's name, the model folder's numerics fields and tokenizer files, the chat template, the
    #: generation settings in effect, engine settings); empty for a backend that tells nothing more.
    details: Mapping[str, Any] = field(default_factory=dict)
    #: more for every case's manifest `extra` (a server: what it reports about itself, k, logprobs mode)
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A loaded model that decodes greedily and hands back raw logits.

    Inputs come already fitted to the task's `requested_max_input_length` (decoding.fit_input).
    To stop promptly on SIGINT/SIGTERM, a backend runs each model call inside
    `interrupt.forward_pass()` and calls `interrupt.check()` between layers (HF: `watch_layers`).
    Optional members (read with getattr, for the run's provenance): `render(query) -> str`, the text
    `encode` tokenizes (after the chat template), and `eos_ids`, the ids that end a generation.
    """

    @property
    def config(self) -> ModelConfig:
        """The model YAML it was loaded from."""
        ...

    @property
    def device(self) -> Device:
        """Where it runs (its `label` is the {dev} of the output layout)."""
        ...

    @property
    def vocab_size(self) -> int:
        """Rows of the output embedding: the length of every logits vector."""
        ...

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer tasks receive (to build cases, and to judge)."""
        ...

    def encode(self, query: str) -> list[int]:
        """Token ids of a query (through the chat template when the model YAML asks for it)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of generated ids, special tokens left out."""
        ...

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """The text of each token on its own (special tokens included)."""
        ...

    def greedy(
        self,
        batch: Sequence[Sequence[int]],
        max_new_tokens: int,
        keep_steps: int = 0,
        forced: Sequence[Sequence[int]] | None = None,
        limits: Sequence[int] | None = None,
        stops: Sequence[StopRule | None] | None = None,
    ) -> list[Decoded]:
        """Greedy decoding of a batch, stopping each row at EOS or `max_new_tokens`.

        Keeps the raw logits of each row's first `keep_steps` steps and step 0's as float32.
        `forced` (replay): row r feeds `forced[r][t]` at step t through the same decode path and
        records its own argmax in `own_ids`. Otherwise row r also stops after `limits[r]` tokens
        or once `stops[r]` holds (the stopping token kept).
        """
        ...

    def last_logits(self, batch: Sequence[Sequence[int]]) -> list[Any]:
        """One forward pass; the raw last-position logits of each sequence (model dtype)."""
        ...

    def prefill_logits(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[Any]:
        """Score a forced continuation in one pass: the raw logits predicting each of its tokens."""
        ...

    def provenance(self) -> Provenance:
        """Model path, device, package versions and the details of the run's provenance."""
        ...


class BackendClass(Protocol):
    """What the registry hands back: called with the model YAML and the device, it loads the model."""

    def __call__(self, config: ModelConfig, device: Device, *, tensor_parallel: bool = False) -> Backend: ...


def first_logits(backend: Backend, steps: Sequence[Any]) -> Any:
    """Step 0 of `steps` as float32 logits [vocab] for a task's judge; None when there are no steps.

    A backend whose steps are not tensors (a server's top-k) converts them (`dense_first`).
    """
    if not steps:
        return None
    dense = getattr(backend, "dense_first", None)
    return dense(steps) if dense is not None else steps[0].float().clone()
