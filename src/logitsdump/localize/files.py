"""The folders that travel between the two sides: the record (golden) and the replay (test).

    <record>/localize_record.json      what was recorded: model, structure, control arms, the cases
    <record>/case_<id>.json            one case: tokens, how its tensors rebuild, the control arms' errors
    <record>/case_<id>.safetensors     golden's stored tensors of that case
    <replay>/localize_replay.json      the device under test: model, dtype, device, the record it replayed
    <replay>/case_<id>.json            its measurements, provisional verdict, necessity check
    <replay>/case_<id>.safetensors     its isolated outputs at the provisional culprit (for sufficiency)

Every file is written atomically (temporary name, then rename) and the folder's header last, so a folder
with a header is complete. Tensors are safetensors (never a pickle); a file is checked to be a regular file
of this schema before it is read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from logitsdump.errors import DataError
from logitsdump.fsutil import atomic_open, atomic_write_text
from logitsdump.localize.records import SCHEMA_VERSION, RecordCase, ReplayCase

RECORD_HEADER = "localize_record.json"
REPLAY_HEADER = "localize_replay.json"
CASE_JSON = "case_{id}.json"
CASE_TENSORS = "case_{id}.safetensors"


def case_id(number: int) -> str:
    """The id of the `number`-th case of a record (its files' names)."""
    return f"c{number:04d}"


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity (deep inside lists and mappings) written as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: Path, data: Mapping[str, Any], *, indent: int | None = None) -> None:
    """Write a JSON object atomically (non-finite numbers as null)."""
    text = json.dumps(finite(data), ensure_ascii=False, allow_nan=False,
                      **({"indent": indent} if indent else {"separators": (",", ":")}))
    atomic_write_text(path, text + "\n")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object of this schema; DataError (one line) when it is missing, unreadable or of another schema."""
    if not path.is_file():
        raise DataError(f"{path}: missing: is this a localize {what} folder (written completely)?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"{path}: not a readable localize {what} file: {err}") from err
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{path}: not a localize {what} file of schema version {SCHEMA_VERSION}")
    return data


def save_tensors(path: Path, tensors: Mapping[str, Any]) -> int:
    """Write `tensors` (CPU, contiguous) as one safetensors file, atomically; its size in bytes."""
    from safetensors.torch import save

    payload = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    with atomic_open(path, "wb") as handle:
        handle.write(payload)
    return len(payload)


def load_tensors(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file (a regular file; never unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise DataError(f"{path}: missing: the folder is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable safetensors file: {err}") from err


class RecordFolder:
    """A record folder, read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.header = read_json(self.path / RECORD_HEADER, "record")
        if self.header.get("kind") != "record":
            raise DataError(f"{self.path}: not a localize record folder")
        self.ids: list[str] = [str(i) for i in self.header.get("cases", [])]

    def case(self, case: str) -> RecordCase:
        data = read_json(self.path / CASE_JSON.format(id=case), "record case")
        try:
            return RecordCase.from_dict(data)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{self.path / CASE_JSON.format(id=case)}: malformed ({err})") from err

    def tensors(self, case: RecordCase) -> dict[str, Any]:
        return load_tensors(self.path / Path(case.tensors_file).name)


class ReplayFolder:
    """A replay folder, read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.header = read_json(self.path / REPLAY_HEADER, "replay")
        if self.header.get("kind") != "replay":
            raise DataError(f"{self.path}: not a localize replay folder")
        self.ids: list[str] = [str(i) for i in self.header.get("cases", [])]

    def case(self, case: str) -> ReplayCase | None:
        path = self.path / CASE_JSON.format(id=case)
        if not path.is_file():
            return None
        try:
            return ReplayCase.from_dict(read_json(path, "replay case"))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: malformed ({err})") from err

    def tensors(self, case: ReplayCase) -> dict[str, Any]:
        if case.tensors_file is None:
            return {}
        return load_tensors(self.path / Path(case.tensors_file).name)
