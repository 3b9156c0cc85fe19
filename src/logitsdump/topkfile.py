"""The top-k file: one generated step's top-k logprobs, as a server reports them. Torch-free.

A server (vLLM, SGLang, MindIE-Service) gives, per step, the k most probable tokens and their log
probabilities, plus the log probability of the token the sequence took there (generated, or forced in a
replay). `write_topk` stores one step as a safetensors file (`store.topk_file_name`) holding:
- `ids` (I64 [n]) and `logprobs` (F64 [n]): the top entries, most probable first (ties: lower id first),
  n <= k (a server may return fewer: a small vocabulary, or a cap it applies);
- `chosen_id` (I64 [1]) and `chosen_logprob` (F64 [1]): the token taken at this step and its log
  probability (NaN when the server did not report it: a per-position replay through an API that only
  reports its own choice, and the forced token outside its top-k);
- metadata: `format` (`FORMAT`), `version`, `k` (what was asked), `mode` (the server's logprobs mode,
  e.g. `raw_logprobs`), `vocab_size`.
`read_topk` parses it without unpickling anything (`tensorio.read_safetensors`) and checks every part.
Values are log probabilities (normalised over the whole vocabulary by the server), so any subset of
them is comparable across devices; servers clamp -inf to -9999.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from logitsdump.errors import FileFormatError
from logitsdump.fsutil import atomic_open

FORMAT = "logitsdump-topk"
VERSION = 1
#: Logprobs modes whose values are normalised log probabilities (the only ones a top-k file holds).
LOGPROB_MODES = ("raw_logprobs", "processed_logprobs")
#: The lowest value a server reports for a -inf logprob (vLLM, SGLang and OpenAI clamp to it).
CLAMPED = -9999.0


@dataclass(frozen=True)
class TopkStep:
    """One step's top-k log probabilities (see the module docstring)."""

    ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    k: int
    chosen_id: int
    chosen_logprob: float  # NaN: not reported
    mode: str = "raw_logprobs"
    vocab_size: int = 0  # 0: unknown

    @classmethod
    def build(cls, entries: Sequence[tuple[int, float]], k: int, chosen_id: int, chosen_logprob: float | None,
              mode: str, vocab_size: int = 0) -> TopkStep:
        """From (id, logprob) pairs in any order (duplicates keep the first): the `k` most probable, sorted."""
        seen: dict[int, float] = {}
        for token, value in entries:
            seen.setdefault(int(token), float(value))
        ordered = sorted(seen.items(), key=lambda item: (-item[1], item[0]))[: max(k, 1)]
        known = seen.get(int(chosen_id), chosen_logprob)
        return cls(tuple(t for t, _ in ordered), tuple(v for _, v in ordered), int(k), int(chosen_id),
                   math.nan if known is None else float(known), mode, int(vocab_size))

    @property
    def top_id(self) -> int:
        """The most probable token (the greedy choice)."""
        return self.ids[0]

    def argmax(self) -> int:
        return self.top_id

    def logprob_of(self, token: int) -> float | None:
        """The log probability of `token` when this step reports it (in the top entries or as the chosen one)."""
        for known, value in zip(self.ids, self.logprobs, strict=True):
            if known == token:
                return value
        if token == self.chosen_id and not math.isnan(self.chosen_logprob):
            return self.chosen_logprob
        return None

    def known(self) -> dict[int, float]:
        """Every token this step reports -> its log probability (the top entries and the chosen one)."""
        out = dict(zip(self.ids, self.logprobs, strict=True))
        if not math.isnan(self.chosen_logprob):
            out.setdefault(self.chosen_id, self.chosen_logprob)
        return out


def write_topk(path: str | os.PathLike[str], step: TopkStep) -> None:
    """Write one step as a safetensors file, atomically (temporary name + rename)."""
    tensors = {
        "chosen_id": np.array([step.chosen_id], dtype="<i8"),
        "chosen_logprob": np.array([step.chosen_logprob], dtype="<f8"),
        "ids": np.array(step.ids, dtype="<i8"),
        "logprobs": np.array(step.logprobs, dtype="<f8"),
    }
    metadata = {"format": FORMAT, "version": str(VERSION), "k": str(step.k), "mode": step.mode,
                "vocab_size": str(step.vocab_size)}
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, array in tensors.items():
        header[name] = {"dtype": "I64" if array.dtype.kind == "i" else "F64", "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with atomic_open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        for array in tensors.values():
            handle.write(array.tobytes())


def read_topk(path: str | os.PathLike[str]) -> TopkStep:
    """One top-k file, checked; a `FileFormatError` with the reason when anything is off."""
    from logitsdump.tensorio import read_safetensors

    file = Path(path)
    name = file.name
    try:
        tensors, metadata = read_safetensors(file)
    except OSError as err:
        raise FileFormatError(f"{name}: cannot read ({err.strerror or err})") from err
    if metadata.get("format") != FORMAT:
        raise FileFormatError(f"{name}: not a top-k file (metadata format {metadata.get('format')!r})")
    if metadata.get("version") != str(VERSION):
        raise FileFormatError(f"{name}: top-k file version {metadata.get('version')!r}, this logitsdump reads "
                              f"{VERSION}")
    missing = [n for n in ("ids", "logprobs", "chosen_id", "chosen_logprob") if n not in tensors]
    if missing:
        raise FileFormatError(f"{name}: top-k file without {', '.join(missing)}")
    ids, values = tensors["ids"], tensors["logprobs"]
    if ids.dtype.kind != "i" or values.dtype.kind != "f" or ids.ndim != 1 or ids.shape != values.shape:
        raise FileFormatError(f"{name}: top-k ids and logprobs must be 1-D integer and float arrays of one length")
    if ids.size == 0:
        raise FileFormatError(f"{name}: empty top-k")
    chosen, chosen_value = tensors["chosen_id"], tensors["chosen_logprob"]
    if chosen.dtype.kind != "i" or chosen.size != 1 or chosen_value.dtype.kind != "f" or chosen_value.size != 1:
        raise FileFormatError(f"{name}: chosen_id and chosen_logprob must hold one value each")
    k = _int(metadata.get("k"), name, "k")
    vocab = _int(metadata.get("vocab_size", "0"), name, "vocab_size")
    mode = metadata.get("mode", "")
    if mode not in LOGPROB_MODES:
        raise FileFormatError(f"{name}: logprobs mode {mode!r} (expected one of {', '.join(LOGPROB_MODES)})")
    values64 = values.astype(np.float64)
    if not np.all(np.isfinite(values64)) or np.any(values64 > 1e-6) or (ids < 0).any():
        raise FileFormatError(f"{name}: top-k logprobs must be finite and <= 0, ids >= 0")
    if vocab and (ids >= vocab).any():
        raise FileFormatError(f"{name}: a top-k id is outside the vocabulary of {vocab}")
    if np.any(np.diff(values64) > 0) or len(set(ids.tolist())) != ids.size or k < ids.size:
        raise FileFormatError(f"{name}: top-k entries must be distinct, most probable first, at most k")
    lse = float(np.logaddexp.reduce(values64))
    if lse > 1e-4:
        raise FileFormatError(f"{name}: top-k probabilities sum to {math.exp(lse):.6g} > 1 (not log probabilities)")
    chosen_lp = float(chosen_value.reshape(-1)[0])
    if not (math.isnan(chosen_lp) or chosen_lp <= 1e-6):
        raise FileFormatError(f"{name}: chosen_logprob must be <= 0 or NaN")
    return TopkStep(tuple(int(i) for i in ids), tuple(float(v) for v in values64), k,
                    int(chosen.reshape(-1)[0]), chosen_lp, mode, vocab)


def _int(text: str | None, name: str, what: str) -> int:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 12:
        raise FileFormatError(f"{name}: top-k metadata {what} must be a non-negative integer, found {text!r}")
    return int(text)
