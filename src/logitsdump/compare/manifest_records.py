"""What a dump's manifest says about one case, as the compare records carry it (`records.CaseRecord`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from logitsdump.compare.lenient import read_int, read_ints, read_str


@dataclass(frozen=True)
class ReplaySummary:
    """A replayed dump's record of one case (the manifest's `extra.replay`)."""

    mode: str
    golden_dir: str
    #: The test device's own argmax at each forced step.
    own_tokens: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "golden_dir": self.golden_dir, "own_tokens": list(self.own_tokens)}

    @classmethod
    def from_dict(cls, data: Any) -> ReplaySummary | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("mode"), str):
            return None
        return cls(str(data["mode"]), str(data.get("golden_dir") or ""), read_ints(data.get("own_tokens")) or ())


@dataclass(frozen=True)
class ManifestSummary:
    """What one side's manifest says about a case (None fields: not recorded)."""

    task: str | None = None
    index: int | None = None
    query: str | None = None
    input_token_ids: tuple[int, ...] | None = None
    output_token_ids: tuple[int | None, ...] | None = None
    output_tokens: tuple[str | None, ...] | None = None
    output_text: str | None = None
    model_name: str | None = None
    dtype: str | None = None
    logits_dtype: str | None = None
    device: str | None = None
    logits_kind: str | None = None
    replay: ReplaySummary | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, ReplaySummary):
                value = value.to_dict()
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ManifestSummary | None:
        if not isinstance(data, Mapping):
            return None
        outputs = data.get("output_token_ids")
        texts = data.get("output_tokens")
        inputs = data.get("input_token_ids")
        return cls(
            task=read_str(data.get("task")),
            index=read_int(data.get("index")),
            query=read_str(data.get("query")),
            input_token_ids=read_ints(inputs),
            output_token_ids=tuple(read_int(t) for t in outputs) if isinstance(outputs, list) else None,
            output_tokens=tuple(read_str(t) for t in texts) if isinstance(texts, list) else None,
            output_text=read_str(data.get("output_text")),
            model_name=read_str(data.get("model_name")),
            dtype=read_str(data.get("dtype")),
            logits_dtype=read_str(data.get("logits_dtype")),
            device=read_str(data.get("device")),
            logits_kind=read_str(data.get("logits_kind")),
            replay=ReplaySummary.from_dict(data.get("replay")),
        )
