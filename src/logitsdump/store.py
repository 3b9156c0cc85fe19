"""The logits files: their names, how they are written, and the manifest beside them.

The only home of the file-name pattern `logits_{subject}_{key}_{t}.pth`
(modeltest's, which msit's `logitscmp` parses) and of the manifest format.
Writing needs torch; name handling and the manifest do not.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from logitsdump.errors import FileFormatError, UserError
from logitsdump.fsutil import (
    FILE_MODE,
    JSON_SIDECAR_MAX_BYTES,
    atomic_open,
    open_input,
    read_input,
    safe_component,
    write_errors,
)

LOGITS_PREFIX = "logits_"
LOGITS_SUFFIX = ".pth"
SAFETENSORS_SUFFIX = ".safetensors"
#: A step's top-k logprobs from a server (`topkfile`): `topk_{subject}_{key}_{t}.safetensors`.
TOPK_PREFIX = "topk_"
#: One JSON line per dumped case, beside the logits files.
MANIFEST_NAME = "manifest.jsonl"
#: Token id -> text for the model's vocabulary, beside the manifest (for reports).
VOCAB_NAME = "vocab.json"
MANIFEST_SCHEMA_VERSION = 1
#: Our runner's account of one dump: cases asked for, found in the dataset, complete (for `dump`'s summary).
DUMP_SUMMARY_NAME = "dump_summary.json"
#: The largest dump summary read (it holds three numbers).
SUMMARY_MAX_BYTES = 64 << 10
#: The manifest `extra` key of a case its task judges from the logits of its choices (BoolQ's yes/no,
#: CMMLU's letters): a list of {"label", "token", "logit"}, the first generated token's raw logits.
EXTRA_CHOICES = "choices"
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


def topk_file_name(subject: str, key: int | str, token_index: int) -> str:
    """`topk_{subject}_{key}_{t}.safetensors`: one step's top-k logprobs (a server's dump, `topkfile`)."""
    full = logits_file_name(subject, key, token_index)
    return TOPK_PREFIX + full[len(LOGITS_PREFIX) : -len(LOGITS_SUFFIX)] + SAFETENSORS_SUFFIX


def is_topk_file_name(name: str) -> bool:
    """Whether `name` is a top-k file's name (`topk_file_name`)."""
    return name.startswith(TOPK_PREFIX) and name.endswith(SAFETENSORS_SUFFIX)


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
    """The subject part of a logits (or top-k) file name: between `logits_` (`topk_`) and `_{key}_{t}`
    ('' when there is none)."""
    stem = _stem(name)
    for prefix in (LOGITS_PREFIX, TOPK_PREFIX):
        if stem.startswith(prefix):
            stem = stem[len(prefix) :]
            break
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
    #: `CaseInputs.to_dict()`: what the case fed the model (empty in manifests written before it).
    inputs: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = MANIFEST_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("files", "input_token_ids", "output_token_ids", "output_tokens"):
            data[name] = list(data[name])
        data["versions"] = dict(self.versions)
        data["extra"] = dict(self.extra)
        data["inputs"] = dict(self.inputs)
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


#: A manifest line longer than this (one case's record) is skipped without being held in memory.
MAX_MANIFEST_LINE = 64 << 20
#: The largest manifest read (about 100,000 cases of long prompts).
MAX_MANIFEST_BYTES = 4 << 30


def _iter_manifest(path: Path) -> Iterator[CaseManifest]:
    if not os.path.exists(path):  # none, or a dangling link: no complete case
        return
    with open_input(path, "manifest", encoding="utf-8", max_bytes=MAX_MANIFEST_BYTES) as handle:
        while line := handle.readline(MAX_MANIFEST_LINE + 1):
            if len(line) > MAX_MANIFEST_LINE:  # a crafted line: skipped to its end
                while line and not line.endswith("\n"):
                    line = handle.readline(MAX_MANIFEST_LINE + 1)
                continue
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
    "vocab_size": int, "device": str, "logits_kind": str, "versions": dict, "extra": dict, "inputs": dict,
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
        data = json.loads(read_input(path, "vocabulary", JSON_SIDECAR_MAX_BYTES))
    except (UserError, ValueError, RecursionError):  # missing, not a regular file, too large, not JSON
        return None
    return [str(t) for t in data] if isinstance(data, list) else None


@dataclass(frozen=True)
class DumpSummary:
    """What one dump of our runner did: `requested` cases, `matched` (found in the dataset), `complete`, and
    the id of the `dump` run that asked (`protocol.ENV_DUMP_ID`; None when the runner was not told one)."""

    requested: int
    matched: int
    complete: int
    dump_id: str | None = None


def write_dump_summary(folder: str | os.PathLike[str], summary: DumpSummary) -> None:
    """Write the dump's summary beside the manifest (atomically)."""
    with atomic_open(Path(folder) / DUMP_SUMMARY_NAME, "w", encoding="utf-8", newline="") as handle:
        json.dump(asdict(summary), handle)


def read_dump_summary(folder: str | os.PathLike[str]) -> DumpSummary | None:
    """The summary `write_dump_summary` wrote; None when absent, unreadable or malformed (a real
    modeltest writes none)."""
    try:
        data = json.loads(read_input(Path(folder) / DUMP_SUMMARY_NAME, "dump summary", SUMMARY_MAX_BYTES))
        values = [data[name] for name in ("requested", "matched", "complete")]
        dump_id = data.get("dump_id")
    except (UserError, OSError, ValueError, RecursionError, TypeError, KeyError, AttributeError):
        return None
    if not all(type(v) is int and v >= 0 for v in values) or not (dump_id is None or isinstance(dump_id, str)):
        return None
    return DumpSummary(*values, dump_id=dump_id)


# ---- provenance: what each run and each case fed the model (the parity preflight reads it) ------------

#: The run's provenance beside a dump's manifest.
PROVENANCE_NAME = "provenance.json"
#: ... and beside an evaluation's debug CSV: `{stem}_provenance.json` for `{stem}_debug_info.csv`.
PROVENANCE_SUFFIX = "_provenance.json"
DEBUG_CSV_SUFFIX = "_debug_info.csv"
PROVENANCE_SCHEMA_VERSION = 1
#: The largest provenance file read back (an eval of 100k cases writes about 40 MB).
MAX_PROVENANCE_BYTES = 512 * 1024 * 1024


def token_ids_sha256(ids: Sequence[int]) -> str:
    """The hash of a token-id sequence, the same for a manifest's list and a debug CSV's `[1, 2]` cell."""
    return hashlib.sha256(",".join(str(int(i)) for i in ids).encode("ascii")).hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def provenance_path_for_csv(csv_path: str | os.PathLike[str]) -> Path:
    """Where an evaluation wrote the provenance of the debug CSV `csv_path` (beside it)."""
    path = Path(csv_path)
    stem = path.name[: -len(DEBUG_CSV_SUFFIX)] if path.name.endswith(DEBUG_CSV_SUFFIX) else path.stem
    return path.with_name(stem + PROVENANCE_SUFFIX)


@dataclass(frozen=True)
class CaseInputs:
    """What one case fed the model and how its generation ended (None: not recorded).

    `rendered_prompt`: the text after the task's prompt template and the chat template, before
    tokenization (dumps only; evaluations keep its hash). `original_length`: the prompt's token count
    before it was fitted to the context limit. `mode`: generate, forward (one pass, need_logits) or
    replay-step / replay-prefill. `stop_reason`: eos, limit (max new tokens), stop-rule or forced.
    `shots`: which few-shot examples the prompt holds (task-specific ids, e.g. `dev:3`).
    """

    input_sha256: str | None = None
    input_length: int | None = None
    original_length: int | None = None
    bos_count: int | None = None
    eos_count: int | None = None
    rendered_prompt: str | None = None
    rendered_sha256: str | None = None
    max_new_tokens: int | None = None
    output_length: int | None = None
    stop_reason: str | None = None
    mode: str | None = None
    shots: tuple[str, ...] | None = None

    def to_dict(self, *, with_prompt: bool = True) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["shots"] = list(self.shots) if self.shots is not None else None
        if not with_prompt:
            data.pop("rendered_prompt")
        return {name: value for name, value in data.items() if value is not None}

    @classmethod
    def from_dict(cls, data: Any) -> CaseInputs:
        """Lenient: a field that is absent or of another type reads as None."""
        if not isinstance(data, Mapping):
            return cls()
        values: dict[str, Any] = {}
        for name, kind in _INPUT_TYPES.items():
            value = data.get(name)
            values[name] = value if isinstance(value, kind) and not isinstance(value, bool) else None
        shots = data.get("shots")
        values["shots"] = tuple(str(s) for s in shots) if isinstance(shots, list) else None
        return cls(**values)


_INPUT_TYPES: dict[str, type] = {
    "input_sha256": str, "input_length": int, "original_length": int, "bos_count": int, "eos_count": int,
    "rendered_prompt": str, "rendered_sha256": str, "max_new_tokens": int, "output_length": int,
    "stop_reason": str, "mode": str,
}


@dataclass(frozen=True)
class RunProvenance:
    """One run's provenance: `run` (sections of settings: runner, versions, model, tokenizer,
    chat_template, generation, inputs, engine, environment) and, for an evaluation, `cases`
    (key -> `CaseInputs.to_dict(with_prompt=False)`)."""

    run: Mapping[str, Any]
    cases: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    schema_version: int = PROVENANCE_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "run": dict(self.run),
                "cases": {str(k): dict(v) for k, v in self.cases.items()}}


def write_provenance(path: str | os.PathLike[str], provenance: RunProvenance) -> None:
    """Write a run's provenance (atomically)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        json.dump(provenance.to_dict(), handle, ensure_ascii=False, sort_keys=True, default=str)


def read_provenance(path: str | os.PathLike[str]) -> RunProvenance | None:
    """The provenance at `path`; None when there is no such file (an older or a foreign run).

    A file that exists but cannot be read as a provenance raises FileFormatError with the reason.
    """
    file = Path(path)
    if not file.is_file():
        return None
    try:
        if file.stat().st_size > MAX_PROVENANCE_BYTES:
            raise FileFormatError(f"{file}: larger than {MAX_PROVENANCE_BYTES} bytes, not a provenance file")
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise FileFormatError(f"cannot read {file}: {getattr(err, 'strerror', None) or err}") from None
    except (ValueError, RecursionError) as err:
        raise FileFormatError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("run"), dict):
        raise FileFormatError(f"{file}: expected a provenance object with a 'run' mapping")
    if data.get("schema_version") != PROVENANCE_SCHEMA_VERSION:
        raise FileFormatError(f"{file}: provenance schema_version {data.get('schema_version')!r} is not "
                              f"{PROVENANCE_SCHEMA_VERSION}; use the logitsdump that wrote it")
    cases = data.get("cases") if isinstance(data.get("cases"), dict) else {}
    return RunProvenance(run=data["run"], cases={str(k): v for k, v in cases.items() if isinstance(v, dict)})
