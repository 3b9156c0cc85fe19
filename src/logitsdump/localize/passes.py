"""The hooked forward passes of localize, each one prefill of a case's tokens (batch 1, no cache):

- `capture`: golden's input and output of every candidate, and each layer's attention heads (the input of
  its output projection), on the golden side;
- `isolated`: every candidate of one level (layers, modules, ops) fed golden's input (cast to the model's
  dtype) by a pre-hook, its output's per-token relative error against golden's measured by a forward hook; side inputs
  (position embeddings, attention mask, position ids) are the run's own and reach the module untouched;
- `plain`: no feeding: the accumulated error of every candidate's output (and input), the flat cosine
  (msprobe's and tt-metal's measure), and the logits;
- `patched`: one candidate's output changed by the test's own error there (taken out of the test run:
  necessity; added to a healthy run: sufficiency), the logits at the focus position;
- `averaged_logits`: the logits at the focus position averaged over a few realizations of the roundoff (the plain
  run, then runs with the embedding's output dithered by one rounding of the dtype), patched or not;
- `alignment`, `removal`: how a patched run's change of those logits goes along the test's.

A module's input is its first positional tensor, or its `hidden_states` keyword (transformers 5 calls
attention with keywords). Its output is a tensor, or the first element of a tuple with the elements of
the same shape beside it (the rotary embedding's cos and sin); outputs are compared joined on the last axis.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from logitsdump.localize.candidates import Structure, modules_by_name, output_projection

#: Smallest norm a reference row is divided by (a zero row of golden gives an absolute error).
TINY = 1e-30
#: A relative error is capped here (a non-finite output counts as this).
ERROR_CAP = 1e6
#: The logits of this many last positions are kept (the LM head's own error is measured on them).
LOGIT_POSITIONS = 4


@dataclass
class Capture:
    """Golden's tensors of one prefill, in the order the forward pass produced them."""

    #: (reference name, tensor): `<candidate>:in` / `<candidate>:out`, in forward order.
    events: list[tuple[str, Any]] = field(default_factory=list)
    #: layer -> the input of its attention's output projection [tokens, heads x head_dim].
    heads_in: dict[int, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, Any]:
        return dict(self.events)


@dataclass
class PassResult:
    """What one measured pass found, per candidate name."""

    #: Per-token relative error of the candidate's output against golden's.
    errors: dict[str, list[float]] = field(default_factory=dict)
    #: plain: per-token relative error of its input (what reached it).
    input_errors: dict[str, list[float]] = field(default_factory=dict)
    #: plain: cosine of the whole output tensor, flattened, against golden's.
    cosines: dict[str, float] = field(default_factory=dict)
    #: Outputs kept (isolated, when asked): name -> tensor on the CPU, in the model's dtype.
    outputs: dict[str, Any] = field(default_factory=dict)
    #: layer -> attention heads' input of the output projection (isolated module level).
    heads_in: dict[int, Any] = field(default_factory=dict)
    #: The logits [positions, vocab] float32 of the last positions.
    logits: Any = None
    seconds: float = 0.0


def prefill(model: Any, ids: Sequence[int]) -> Any:
    """One forward pass over `ids` (batch 1, no cache), the last `LOGIT_POSITIONS` logits kept; the output."""
    import torch

    device = model.get_input_embeddings().weight.device
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
    keep = _keep_kwarg(model)
    with torch.inference_mode():
        return model(input_ids=input_ids, use_cache=False, **({keep: LOGIT_POSITIONS} if keep else {}))


def capture(model: Any, ids: Sequence[int], structure: Structure) -> Capture:
    """Golden's pass: every candidate's input (where it is fed) and output, and the heads' inputs."""
    result = Capture()
    modules = modules_by_name(model, [c.name for c in structure.candidates])
    with _hooks() as add:
        _watch_heads(model, structure, add, result.heads_in)
        for candidate in structure.candidates:
            module = modules[candidate.name]
            if candidate.feeds:
                add(module.register_forward_pre_hook(_capture_input(candidate.name, result.events), with_kwargs=True))
            add(module.register_forward_hook(_capture_output(candidate.name, result.events), with_kwargs=True))
        prefill(model, ids)
    return result


def isolated(model: Any, ids: Sequence[int], structure: Structure, golden: Mapping[str, Any], level: str,
             *, keep: bool = False) -> PassResult:
    """Every candidate of `level` fed golden's input ("layer": the decoder layers; "module": their children and the
    model-level modules; "op": the projections inside the top sites, in a pass of their own so that feeding an op
    never hides its parent module's own error); per-token errors of their outputs (and their outputs, `keep`)."""
    kinds = {"layer": ("layer",), "module": ("module", "model"), "op": ("op",)}[level]
    chosen = [c for c in structure.candidates if c.kind in kinds]
    result = PassResult()
    modules = modules_by_name(model, [c.name for c in chosen])
    started = time.perf_counter()
    with _hooks() as add:
        if level == "module":
            _watch_heads(model, structure, add, result.heads_in)  # before the feeding: the test's own heads
        for candidate in chosen:
            module = modules[candidate.name]
            if candidate.feeds:
                add(module.register_forward_pre_hook(_feed(golden[f"{candidate.name}:in"]), with_kwargs=True))
            add(module.register_forward_hook(
                _measure(candidate.name, golden[f"{candidate.name}:out"], result, keep=keep), with_kwargs=True))
        out = prefill(model, ids)
    result.seconds = time.perf_counter() - started
    result.logits = out.logits[0].float().cpu()
    return result


def plain(model: Any, ids: Sequence[int], structure: Structure, golden: Mapping[str, Any]) -> PassResult:
    """No feeding: the accumulated error of every candidate's output and input, the flat cosines, the logits."""
    result = PassResult()
    modules = modules_by_name(model, [c.name for c in structure.candidates])
    started = time.perf_counter()
    with _hooks() as add:
        for candidate in structure.candidates:
            module = modules[candidate.name]
            if candidate.feeds:
                add(module.register_forward_pre_hook(
                    _measure_input(candidate.name, golden[f"{candidate.name}:in"], result), with_kwargs=True))
            add(module.register_forward_hook(
                _measure(candidate.name, golden[f"{candidate.name}:out"], result, cosine=True), with_kwargs=True))
        out = prefill(model, ids)
    result.seconds = time.perf_counter() - started
    result.logits = out.logits[0].float().cpu()
    return result


def timed_prefill(model: Any, ids: Sequence[int]) -> tuple[Any, float]:
    """A plain prefill without any hook (the cost baseline); its last logits [positions, vocab] and seconds."""
    started = time.perf_counter()
    out = prefill(model, ids)
    return out.logits[0].float().cpu(), time.perf_counter() - started


def patched(model: Any, ids: Sequence[int], name: str, change: Any, *, how: str = "replace",
            heads_at: int | None = None, structure: Structure | None = None) -> tuple[Any, Any]:
    """The logits [positions, vocab] float32 with candidate `name`'s output replaced by `change` (`how="replace"`),
    or with `change` subtracted from it or added to it ("subtract", "add": in float32, then cast back); with
    `heads_at`, that layer's heads' input (captured in the same pass)."""
    heads: dict[int, Any] = {}
    module = modules_by_name(model, [name])[name]
    with _hooks() as add:
        if heads_at is not None and structure is not None:
            _watch_heads(model, structure, add, heads, only=heads_at)
        add(module.register_forward_hook(_change(change, how), with_kwargs=True))
        out = prefill(model, ids)
    return out.logits[0].float().cpu(), heads.get(heads_at) if heads_at is not None else None


def averaged_logits(model: Any, ids: Sequence[int], seed: str, runs: int, *, name: str | None = None,
                    change: Any = None, how: str = "replace", first: Any = None) -> tuple[Any, Any]:
    """The last position's logits [vocab] float32 averaged over `runs` realizations of the roundoff, and the first
    realization's: run 0 is the plain prefill (or `patched` at `name` with `change`, `how`), runs 1.. the same with
    the input embedding's output multiplied by 1 + eps * u (eps: the model dtype's machine epsilon; u uniform in
    [-1, 1], drawn on the CPU from `seed` and the run, so that two machines running the same case dither alike).
    A change of one rounding at the input leaves the defect's effect as it is and draws the bf16 roundoff after it
    afresh: the average keeps the effect and shrinks the roundoff's part by sqrt(runs). `first`: run 0's logits,
    already computed (not run again)."""
    import torch

    def run_once() -> Any:
        if name is None:
            return prefill(model, ids).logits[0, -1].float().cpu()
        return patched(model, ids, name, change, how=how)[0][-1]

    plain_logits = first.float().cpu() if first is not None else run_once()
    total = plain_logits.double().clone()
    embedding = model.get_input_embeddings()
    eps = torch.finfo(embedding.weight.dtype).eps
    for run in range(1, runs):
        with _hooks() as add:
            add(embedding.register_forward_hook(_dither(eps, f"{seed}/dither{run}")))
            total += run_once().double()
    return (total / runs).float(), plain_logits


def kl_divergence(golden_logits: Any, test_logits: Any) -> float:
    """KL(golden || test) of the softmax of two logits vectors, in float64."""
    import torch

    p = torch.log_softmax(golden_logits.double().reshape(-1), dim=-1)
    q = torch.log_softmax(test_logits.double().reshape(-1), dim=-1)
    value = float((p.exp() * (p - q)).sum())
    return max(value, 0.0) if value == value else float("inf")


def alignment(base_logits: Any, target_logits: Any, moved_logits: Any) -> tuple[float, float]:
    """How far a change of the logits (`moved - base`) goes the way of another (`target - base`), over the whole
    vocabulary, each change centred (a shift of every logit is no change): (cosine, projection), in float64. The
    projection is the part of the target's change the moved one reproduces along its direction (1: all of it);
    a zero change gives (0, 0). Unweighted on purpose: weighted by golden's probabilities, a peaked distribution
    leaves one or two directions, and a random change aligns with the target by chance."""
    base = base_logits.double().reshape(-1)

    def centred(logits: Any) -> Any:
        change = logits.double().reshape(-1) - base
        return change - change.mean()

    target, moved = centred(target_logits), centred(moved_logits)
    dot = float((target * moved).sum())
    target_sq, moved_sq = float((target * target).sum()), float((moved * moved).sum())
    if not (target_sq > 0 and moved_sq > 0) or dot != dot:
        return 0.0, 0.0
    return dot / (target_sq * moved_sq) ** 0.5, dot / target_sq


def removal(base_logits: Any, target_logits: Any, patched_logits: Any) -> tuple[float, float]:
    """What a patched run took away of a change of the logits (`target - base`): the removed change
    `target - patched`, measured against the change as in `alignment`: (cosine, projection). The projection is
    the part of the change removed along it, 1 - <patched - base, target - base> / |target - base|^2 (1: all of
    it; 0: none, the patched run's change is the target's, or only orthogonal to it)."""
    base, target = base_logits.double().reshape(-1), target_logits.double().reshape(-1)
    return alignment(base, target, base + target - patched_logits.double().reshape(-1))


def token_errors(output: Any, reference: Any) -> list[float]:
    """Per-token relative L2 error of `output` against `reference` (rows: the last axis but one)."""
    import torch

    out = output.detach().to(device=reference.device, dtype=torch.float32).reshape(-1, output.shape[-1])
    ref = reference.detach().to(torch.float32).reshape(-1, reference.shape[-1])
    if out.shape != ref.shape:
        raise ValueError(f"shape {tuple(output.shape)} against golden's {tuple(reference.shape)}")
    errors = (out - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(TINY)
    errors = torch.nan_to_num(errors, nan=ERROR_CAP, posinf=ERROR_CAP).clamp_max(ERROR_CAP)
    return [float(e) for e in errors]


def flat_cosine(output: Any, reference: Any) -> float:
    """Cosine of two tensors flattened (msprobe's and tt-metal's whole-tensor measure), in float64."""
    import torch

    a = output.detach().to(device=reference.device, dtype=torch.float64).reshape(-1)
    b = reference.detach().to(torch.float64).reshape(-1)
    value = float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=TINY))
    return value if value == value else -1.0


# ---- hooks ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _hooks() -> Iterator[Any]:
    """`add(handle)` collects hook handles; all are removed on the way out, whatever happens."""
    handles: list[Any] = []
    try:
        yield handles.append
    finally:
        for handle in handles:
            handle.remove()


def primary_input(args: tuple, kwargs: dict) -> Any:
    """The tensor a module works on: its first positional tensor, else `hidden_states` (or the first tensor
    keyword)."""
    if args and _is_tensor(args[0]):
        return args[0]
    if _is_tensor(kwargs.get("hidden_states")):
        return kwargs["hidden_states"]
    return next((v for v in kwargs.values() if _is_tensor(v)), None)


def output_parts(output: Any) -> list[int]:
    """Which elements of a module's output are compared: [0] for a tensor; for a tuple, the first and the
    tensors of its shape (cos and sin); [] when there is no tensor."""
    if _is_tensor(output):
        return [0]
    if isinstance(output, tuple) and output and _is_tensor(output[0]):
        return [i for i, part in enumerate(output) if _is_tensor(part) and part.shape == output[0].shape]
    return []


def joined_output(output: Any) -> Any:
    """The compared output as one tensor (tuple parts joined on the last axis)."""
    import torch

    parts = output_parts(output)
    if not parts:
        return None
    if _is_tensor(output):
        return output
    return output[0] if len(parts) == 1 else torch.cat([output[i] for i in parts], dim=-1)


def _capture_input(name: str, events: list) -> Any:
    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        tensor = primary_input(args, kwargs)
        if tensor is not None:
            events.append((f"{name}:in", tensor.detach()))
    return hook


def _capture_output(name: str, events: list) -> Any:
    def hook(_module: Any, _args: tuple, _kwargs: dict, output: Any) -> None:
        tensor = joined_output(output)
        if tensor is not None:
            events.append((f"{name}:out", tensor.detach()))
    return hook


def _feed(golden_input: Any) -> Any:
    """A pre-hook replacing the module's input by golden's, in the dtype and on the device of its own."""
    def hook(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        own = primary_input(args, kwargs)
        value = golden_input.to(device=own.device, dtype=own.dtype)
        if args and args[0] is own:
            return (value, *args[1:]), kwargs
        key = "hidden_states" if kwargs.get("hidden_states") is own else next(k for k, v in kwargs.items() if v is own)
        return args, {**kwargs, key: value}
    return hook


def _measure(name: str, golden_output: Any, result: PassResult, *, keep: bool = False, cosine: bool = False) -> Any:
    def hook(_module: Any, _args: tuple, _kwargs: dict, output: Any) -> None:
        tensor = joined_output(output)
        result.errors[name] = token_errors(tensor, golden_output)
        if cosine:
            result.cosines[name] = flat_cosine(tensor, golden_output)
        if keep:
            result.outputs[name] = tensor.detach().to("cpu").clone()
    return hook


def _measure_input(name: str, golden_input: Any, result: PassResult) -> Any:
    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        tensor = primary_input(args, kwargs)
        if tensor is not None:
            result.input_errors[name] = token_errors(tensor, golden_input)
    return hook


def _change(change: Any, how: str) -> Any:
    """A forward hook returning the module's output with its compared parts replaced by `change`, or minus it, or
    plus it (`how`)."""
    import torch

    sign = {"replace": 0.0, "subtract": -1.0, "add": 1.0}[how]

    def new_part(old: Any, piece: Any) -> Any:
        piece = piece.to(device=old.device).reshape(old.shape)
        value = piece if how == "replace" else old.to(torch.float32) + sign * piece.to(torch.float32)
        return value.to(old.dtype)

    def hook(_module: Any, _args: tuple, _kwargs: dict, output: Any) -> Any:
        parts = output_parts(output)
        if _is_tensor(output):
            return new_part(output, change)
        pieces = change.split([output[i].shape[-1] for i in parts], dim=-1)
        new = list(output)
        for index, piece in zip(parts, pieces, strict=True):
            new[index] = new_part(output[index], piece)
        return tuple(new)
    return hook


def seeded_generator(seed: str) -> Any:
    """A CPU random generator seeded by a string (a case id, a site): the same draws on every machine."""
    import zlib

    import torch

    return torch.Generator().manual_seed(zlib.crc32(seed.encode()))


def _dither(eps: float, seed: str) -> Any:
    """A forward hook multiplying a module's output by 1 + eps * u, u uniform in [-1, 1] seeded by `seed`."""
    import torch

    def hook(_module: Any, _args: tuple, output: Any) -> Any:
        u = torch.rand(output.shape, generator=seeded_generator(seed), dtype=torch.float32) * 2 - 1
        factor = 1 + eps * u.to(output.device)
        return (output.float() * factor).to(output.dtype)
    return hook


def _watch_heads(model: Any, structure: Structure, add: Any, into: dict[int, Any], only: int | None = None) -> None:
    """Pre-hooks keeping the input of each layer's attention output projection (the heads side by side)."""
    modules = dict(model.named_modules())
    for candidate in structure.candidates:
        if candidate.kind != "module" or (only is not None and candidate.layer != only):
            continue
        found = output_projection(modules[candidate.name])
        if found is None:
            continue
        layer = candidate.layer

        def hook(_module: Any, args: tuple, kwargs: dict, layer: int = layer) -> None:
            tensor = primary_input(args, kwargs)
            if tensor is not None:
                into[layer] = tensor.detach().to("cpu").clone()
        add(found[1].register_forward_pre_hook(hook, with_kwargs=True))


def _keep_kwarg(model: Any) -> str | None:
    params = inspect.signature(model.forward).parameters
    return next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
