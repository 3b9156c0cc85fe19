"""The logits files: their names, how they are written, and the manifest beside them.

The only home of the file-name pattern `logits_{subject}_{key}_{t}.pth`
(modeltest's, which msit's `logitscmp` parses) and of the manifest format.
Writing needs torch; name handling and the manifest do not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from logitsdump.errors import FileFormatError
from logitsdump.fsutil import FILE_MODE, atomic_open, safe_component, write_errors

LOGITS_PREFIX = "logits_"
LOGITS_SUFFIX = ".pth"
SAFETENSORS_SUFFIX = ".safetensors"
#: One JSON line per dumped case, beside the logits files.
MANIFEST_NAME = "manifest.jsonl"
#: Token id -> text for the model's vocabulary, beside the manifest (for reports).
VOCAB_NAME = "vocab.json"
MANIFEST_SCHEMA_VERSION = 1
#: Our runner's account of one dump: cases asked for, found in the dataset, complete (for `dump`'s summary).
DUMP_SUMMARY_NAME = "dump_summary.json"
#: The key of a manifest line's `extra` about the control arm: in a golden dump, `{"dir", "kind"}` (the control
#: folder, relative to the golden one); in a control dump, how it was made (`runner.control.ControlSpec`).
CONTROL_EXTRA = "control"

#: The HumanEval-X language tags that msit's parser recognises in a file name.
LANGUAGE_TAGS = ("cpp", "go", "java", "js", "python")


def subject_token(subject: str) -> str:
    """The subject part of a file name: modeltest replaces '/' by '_'; we also drop odd characters."""
    return safe_component(subject.replace("/", "_").replace("\\", "_"))


def logits_file_name(subject: str, key: int | str, token_index: int) -> str:
    """`logits_{subject}_{key}_{t}.pth`, t = 0 for the first generated token."""
    if token_index < 0:
        raise ValueError(f"token index must be >= 0, got {token_index}")
    return f"{LOGITS_PREFIX}{subject_token(subject)}_{safe_component(str(key))}_{token_index}{LOGITS_SUFFIX}"


def parse_logits_file_name(name: str) -> tuple[int | str, int]:
    """(key, token_id) of a logits file name, by msit's rule.

    Split the stem on `_`; if a part is a HumanEval-X language tag, key is
    `"{lang}/{second-to-last all-digit part}"`; otherwise key is the int of the
    second-to-last part. token_id is the last (all-digit) part.
    Raises FileFormatError with the reason when the name does not fit.
    """
    parts = _stem(name).split("_")
    digit_parts = [p for p in parts if p.isascii() and p.isdigit()]
    language = next((p for p in parts if p in LANGUAGE_TAGS), None)
    if language is not None:
        if len(digit_parts) < 2:
            raise FileFormatError(f"parse_error:expected <num>_<token> at the end of {name!r}")
        return f"{language}/{_int(digit_parts[-2], name)}", _int(digit_parts[-1], name)
    if len(parts) < 2 or not _is_int(parts[-1]) or not _is_int(parts[-2]):
        raise FileFormatError(f"parse_error:expected <key>_<token> at the end of {name!r}")
    return _int(parts[-2], name), _int(parts[-1], name)


def parse_logits_subject(name: str) -> str:
    """The subject part of a logits file name: between `logits_` and `_{key}_{t}` ('' when there is none)."""
    stem = _stem(name)
    if stem.startswith(LOGITS_PREFIX):
        stem = stem[len(LOGITS_PREFIX) :]
    return stem.rsplit("_", 2)[0] if stem.count("_") >= 2 else ""


def _stem(name: str) -> str:
    """`name` without its `.pth` or `.safetensors` ending."""
    for suffix in (LOGITS_SUFFIX, SAFETENSORS_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_int(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        raise FileFormatError(f"parse_error:number too long in {name[:80]!r}") from None


def save_logits(path: str | os.PathLike[str], logits: Any) -> None:
    """Save one step's logits, a CPU tensor of shape [1, vocab], atomically.

    The tensor is cloned so the file holds only its own storage.
    """
    import torch

    tensor = logits.detach().to("cpu")
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    with atomic_open(path, "wb") as handle:
        torch.save(tensor.contiguous().clone(), handle)


@dataclass(frozen=True)
class CaseManifest:
    """One dumped case: what `compare` and `report` need to explain it without the dataset."""

    task: str
    subject: str
    key: int | str
    index: int
    files: tuple[str, ...]
    input_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    output_tokens: tuple[str, ...]
    output_text: str
    query: str
    prompt_sha256: str
    model_name: str
    model_path: str
    dtype: str
    logits_dtype: str
    vocab_size: int
    device: str
    logits_kind: str = "raw"
    versions: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = MANIFEST_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("files", "input_token_ids", "output_token_ids", "output_tokens"):
            data[name] = list(data[name])
        data["versions"] = dict(self.versions)
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseManifest:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("files", "input_token_ids", "output_token_ids", "output_tokens"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)


def manifest_part_name(rank: int) -> str:
    """The manifest part one data-parallel rank appends to; rank 0 merges the parts at the end."""
    return f"manifest.rank{rank}.jsonl"


#: The glob of manifest parts left by data-parallel ranks.
MANIFEST_PART_GLOB = "manifest.rank*.jsonl"


def append_manifest(folder: str | os.PathLike[str], record: CaseManifest, name: str = MANIFEST_NAME) -> None:
    """Append one case to the folder's manifest, flushed to disk.

    Called only after all of the case's files are in place, so a case listed
    in the manifest is complete. A line cut short by a crash is skipped on read.
    """
    line = json.dumps(record.to_dict(), ensure_ascii=False, sort_keys=True) + "\n"
    path = Path(folder) / name
    with write_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)  # never world-writable
        with open(fd, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def read_manifest(folder: str | os.PathLike[str], name: str = MANIFEST_NAME) -> list[CaseManifest]:
    """The complete case records of a folder's manifest (none when there is no manifest)."""
    return list(_iter_manifest(Path(folder) / name))


def _iter_manifest(path: Path) -> Iterator[CaseManifest]:
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # cut short by a crash: that case is not complete
            try:
                record = CaseManifest.from_dict(json.loads(line))
            except (ValueError, TypeError, AttributeError, RecursionError):
                continue
            if _well_formed(record):
                yield record


#: Field -> the type a manifest read from an untrusted folder must have (else the line is skipped).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "task": str, "subject": str, "key": (int, str), "index": int, "output_text": str, "query": str,
    "prompt_sha256": str, "model_name": str, "model_path": str, "dtype": str, "logits_dtype": str,
    "vocab_size": int, "device": str, "logits_kind": str, "versions": dict, "extra": dict,
}


def _well_formed(record: CaseManifest) -> bool:
    """Whether a record has the types its writer gives it (a crafted line must not crash a reader)."""
    if not all(isinstance(getattr(record, name), kind) for name, kind in _FIELD_TYPES.items()):
        return False
    return (
        all(isinstance(f, str) for f in record.files + record.output_tokens)
        and all(isinstance(i, int) for i in record.input_token_ids + record.output_token_ids)
    )


def rewrite_manifest(folder: str | os.PathLike[str], records: Iterable[CaseManifest]) -> None:
    """Replace the manifest with `records` (e.g. sorted, after a resume), atomically."""
    path = Path(folder) / MANIFEST_NAME
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")


def write_vocab(folder: str | os.PathLike[str], tokens: Sequence[str]) -> None:
    """Write the vocabulary (token id -> text, as a JSON list) beside the manifest."""
    with atomic_open(Path(folder) / VOCAB_NAME, "w", encoding="utf-8", newline="") as handle:
        json.dump(list(tokens), handle, ensure_ascii=False)


def read_vocab(folder: str | os.PathLike[str]) -> list[str] | None:
    """The vocabulary written by `write_vocab`, or None when absent or unreadable."""
    path = Path(folder) / VOCAB_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return [str(t) for t in data] if isinstance(data, list) else None


@dataclass(frozen=True)
class DumpSummary:
    """What one dump of our runner did: `requested` cases, `matched` (found in the dataset), `complete`."""

    requested: int
    matched: int
    complete: int


def write_dump_summary(folder: str | os.PathLike[str], summary: DumpSummary) -> None:
    """Write the dump's summary beside the manifest (atomically)."""
    with atomic_open(Path(folder) / DUMP_SUMMARY_NAME, "w", encoding="utf-8", newline="") as handle:
        json.dump(asdict(summary), handle)


def read_dump_summary(folder: str | os.PathLike[str]) -> DumpSummary | None:
    """The summary `write_dump_summary` wrote; None when absent, unreadable or malformed (a real
    modeltest writes none)."""
    try:
        data = json.loads((Path(folder) / DUMP_SUMMARY_NAME).read_text(encoding="utf-8"))
        values = [data[name] for name in ("requested", "matched", "complete")]
    except (OSError, ValueError, RecursionError, TypeError, KeyError):
        return None
    if not all(type(v) is int and v >= 0 for v in values):
        return None
    return DumpSummary(*values)
