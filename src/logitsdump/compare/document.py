"""The case JSON of one compare run (`logits_cmp_cases_<ts>.json`) as a whole: `CompareDocument`.

The file carries `schema_version`; versions 2 and 3 are read here, version 1 through
`schema_v1.upgrade_document`. `CompareDocument.stats` is derived from the cases' judged steps, never read back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from logitsdump.compare.distribution import StepStatistics
from logitsdump.compare.lenient import read_str
from logitsdump.compare.records import CaseRecord, step_statistics

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


@dataclass(frozen=True)
class CompareDocument:
    """The case JSON of one compare run."""

    tool: str
    timestamp: str
    #: `CompareOptions.to_dict()`: the thresholds, tolerances and input folders.
    options: Mapping[str, Any]
    #: `CompareSummary.to_dict()`: output paths, row and verdict counts.
    summary: Mapping[str, Any]
    cases: tuple[CaseRecord, ...]
    schema_version: int = SCHEMA_VERSION
    #: `floor.Floor.to_dict()`: which noise floor the replayed verdicts used (None: not recorded).
    floor: Mapping[str, Any] | None = None
    #: `control.Reference.to_dict()`: the run's noise reference (the control arm and the run's ratio, or
    #: the floor alone), None in files written before it.
    reference: Mapping[str, Any] | None = None

    @cached_property
    def stats(self) -> StepStatistics | None:
        """llama.cpp's statistics of the judged steps of every case together (the run's figures)."""
        return step_statistics(step for case in self.cases for step in case.judged_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tool": self.tool,
            "timestamp": self.timestamp,
            "options": dict(self.options),
            "floor": dict(self.floor) if self.floor is not None else None,
            "reference": dict(self.reference) if self.reference is not None else None,
            "summary": dict(self.summary),
            "stats": self.stats.to_dict() if self.stats is not None else None,
            "cases": [case.to_dict() for case in self.cases],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareDocument:
        """The document; raises ValueError for another schema version or a missing `cases` list."""
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"schema_version {version!r} is not supported (this version reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))}); use the logitsdump that wrote it")
        if not isinstance(data.get("cases"), list):
            raise ValueError("expected compare's case JSON with a 'cases' list")
        if version == 1:  # its cases need their findings derived from the words of their reasons first
            raise ValueError("schema_version 1 is read through compare.schema_v1.upgrade_document")
        raw = [c for c in data["cases"] if isinstance(c, Mapping)]
        cases = tuple(CaseRecord.from_dict(c) for c in raw)
        options = data.get("options")
        summary = data.get("summary")
        return cls(
            tool=read_str(data.get("tool")) or "logitsdump",
            timestamp=read_str(data.get("timestamp")) or "",
            options=dict(options) if isinstance(options, Mapping) else {},
            summary=dict(summary) if isinstance(summary, Mapping) else {},
            cases=cases,
            schema_version=SCHEMA_VERSION,
            floor=dict(data["floor"]) if isinstance(data.get("floor"), Mapping) else None,
            reference=dict(data["reference"]) if isinstance(data.get("reference"), Mapping) else None,
        )
