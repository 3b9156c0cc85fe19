"""Golden's recorded tensors, each stored once: most of a decoder's inputs and outputs are other ones.

An attention's input is its norm's output (the same tensor); the post-attention norm's input is the layer's
input plus the attention's output; the LM head's input is the last rows of the final norm's output. So a
tensor is recorded as one of:
- `{"alias": ref}`: equal to an earlier one (the same tensor, or the same values);
- `{"tail": [ref, n]}`: the last `n` rows (tokens) of an earlier one;
- `{"sum": [a, b]}`: exactly `a + b` in golden's dtype (the residual stream; verified bit for bit when
  recorded, so rebuilding it with the same addition gives golden's values);
- `{"stored": key}`: its own tensor in the case's safetensors file.
In the Llama family that leaves four tensors per decoder layer (the two norms' outputs, the attention's and
the MLP's outputs), whatever the model's names; a family whose residual differs stores more, still exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: How many earlier tensors a new one is compared with (as an alias, a tail, or a term of a sum).
LOOKBACK = 8
#: A sum's second term is one of this many most recent tensors (a residual adds the latest output).
LATEST = 3


@dataclass(frozen=True)
class Compacted:
    """The tensors to store and how every recorded name is rebuilt from them."""

    stored: dict[str, Any]
    refs: dict[str, dict[str, Any]]
    #: ref -> float64 sum of a rebuilt (derived) tensor, checked when it is rebuilt.
    checksums: dict[str, float]

    @property
    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored.values())


def compact(events: Sequence[tuple[str, Any]]) -> Compacted:
    """Store each distinct tensor of `events` (name, tensor, in forward order) once."""
    import torch

    refs: dict[str, dict[str, Any]] = {}
    stored: dict[str, Any] = {}
    checksums: dict[str, float] = {}
    seen: list[tuple[str, Any]] = []  # (ref, tensor) of the distinct tensors so far
    by_pointer: dict[tuple, str] = {}
    for name, tensor in events:
        if name in refs:
            continue
        pointer = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if pointer in by_pointer:
            refs[name] = {"alias": by_pointer[pointer]}
            continue
        spec = _derive(tensor, seen, torch)
        if spec is None:
            stored[name] = tensor.detach().to("cpu").contiguous().clone()
            spec = {"stored": name}
        elif "alias" not in spec:
            checksums[name] = checksum(tensor)
        refs[name] = spec
        by_pointer[pointer] = name
        if "alias" not in spec:
            seen.append((name, tensor))
    return Compacted(stored, refs, checksums)


def rebuild(refs: Mapping[str, Mapping[str, Any]], stored: Mapping[str, Any],
            checksums: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Every recorded tensor, rebuilt from the stored ones (each derived one checked against its checksum);
    ValueError when a reference is broken or a checksum differs."""
    built: dict[str, Any] = {}

    def get(name: str, depth: int = 0) -> Any:
        if name in built:
            return built[name]
        if depth > len(refs) or name not in refs:
            raise ValueError(f"the record's tensor {name!r} cannot be rebuilt (missing or circular reference)")
        spec = refs[name]
        if "stored" in spec:
            if spec["stored"] not in stored:
                raise ValueError(f"the record's file lacks tensor {spec['stored']!r}")
            value = stored[spec["stored"]]
        elif "alias" in spec:
            value = get(spec["alias"], depth + 1)
        elif "tail" in spec:
            source, rows = spec["tail"]
            value = get(source, depth + 1)[..., -int(rows):, :]
        elif "sum" in spec:
            first, second = spec["sum"]
            value = get(first, depth + 1) + get(second, depth + 1)
        else:
            raise ValueError(f"the record's tensor {name!r} has an unknown kind {sorted(spec)}")
        expected = (checksums or {}).get(name)
        if expected is not None and not _close(checksum(value), expected, value):
            raise ValueError(f"the record's tensor {name!r} does not rebuild to golden's values (checksum differs)")
        built[name] = value
        return value

    for name in refs:
        get(name)
    return built


def checksum(tensor: Any) -> float:
    """The float64 sum of a tensor (on the CPU)."""
    import torch

    return float(tensor.detach().to("cpu", torch.float64).sum())


def _close(found: float, expected: float, tensor: Any) -> bool:
    import torch

    scale = float(tensor.detach().to("cpu", torch.float64).abs().sum()) or 1.0
    return abs(found - expected) <= 1e-9 * scale


def _derive(tensor: Any, seen: list[tuple[str, Any]], torch: Any) -> dict[str, Any] | None:
    recent = seen[-LOOKBACK:]
    same = [(n, t) for n, t in recent if t.shape == tensor.shape and t.dtype == tensor.dtype]
    for name, other in reversed(same):
        if torch.equal(other, tensor):
            return {"alias": name}
    if tensor.dim() >= 2:
        for name, other in reversed(recent):
            if (other.dim() == tensor.dim() and other.dtype == tensor.dtype and other.shape[-1] == tensor.shape[-1]
                    and other.shape[-2] > tensor.shape[-2] and other.shape[:-2] == tensor.shape[:-2]
                    and torch.equal(other[..., -tensor.shape[-2]:, :], tensor)):
                return {"tail": [name, int(tensor.shape[-2])]}
    latest = same[-LATEST:]
    for second_name, second in reversed(latest):
        for first_name, first in reversed(same):
            if first_name != second_name and torch.equal(first + second, tensor):
                return {"sum": [first_name, second_name]}
    return None
