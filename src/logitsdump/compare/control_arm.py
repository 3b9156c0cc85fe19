"""The control arm's folder: found (`--control`, the golden manifest's pointer, or `control/` beside golden),
checked against the golden dump (same model, prompts and forced tokens), and its steps grouped by case.

`compare/control.py` judges the test side against these steps.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitsdump.compare.records import Step
from logitsdump.errors import DataError, UserError
from logitsdump.logs import get_logger
from logitsdump.runner.outputs import control_dir_of
from logitsdump.store import CONTROL_EXTRA, CaseManifest, parse_logits_file_name, parse_logits_subject, read_manifest
from logitsdump.tensorio import TENSOR_SUFFIXES

_log = get_logger("compare")
CaseKey = tuple[str, "int | str"]
#: How the control folder was found.
GIVEN, NAMED, BESIDE = "--control", "named in the golden manifest", "beside the golden dump"


@dataclass(frozen=True)
class ControlArm:
    """A control folder, checked against the golden dump: what it is and which cases it holds."""

    path: Path
    found: str
    kind: str
    description: str
    dtype: str | None
    #: Replayed on golden's tokens (every step comparable), or free-running (comparable up to its own first
    #: argmax change).
    replayed: bool
    cases: frozenset[CaseKey]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "found": self.found, "kind": self.kind, "description": self.description,
                "dtype": self.dtype, "replayed": self.replayed, "cases": len(self.cases)}


def locate_control(golden_dir: Path, given: str | Path | None, enabled: bool = True) -> tuple[Path, str] | None:
    """The control folder of a compare run and how it was found: `--control DIR`, else the folder the golden
    manifest names, else `control/` beside the golden dump when it holds logits files; None without one."""
    if not enabled:
        return None
    if given is not None:
        path = Path(given)
        if not path.is_dir():
            raise DataError(f"--control: folder {path} does not exist")
        return path, GIVEN
    for record in read_manifest(golden_dir):
        pointer = record.extra.get(CONTROL_EXTRA) if isinstance(record.extra, Mapping) else None
        if isinstance(pointer, Mapping) and isinstance(pointer.get("dir"), str):
            named = Path(os.path.normpath(golden_dir / pointer["dir"]))  # "logits/../control" -> "control"
            if named.is_dir():
                return named, NAMED
            _log.warning("the golden manifest names the control %s, which does not exist", named)
            break
    beside = control_dir_of(golden_dir)
    if beside.is_dir() and _tensor_names(beside):
        return beside, BESIDE
    return None


def open_control(path: Path, found: str, golden_dir: Path, golden: Mapping[str, CaseManifest],
                 golden_names: Iterable[str]) -> ControlArm:
    """Check the control folder against the golden dump (`golden`: file name -> golden manifest line,
    `golden_names`: its logits files); DataError (one line, naming what differs) for a control of another
    model, prompt or tokens, or with none of golden's cases."""
    flag = f"control {path}"
    if path.resolve() == golden_dir.resolve():
        raise DataError(f"{flag}: it is the golden folder itself; a control is a second healthy configuration")
    names = _tensor_names(path)
    if not names:
        raise DataError(f"{flag}: no logits files (.pth, .safetensors) there")
    cases = frozenset(c for c in (_case_of(name) for name in names) if c is not None)
    golden_cases = frozenset(c for c in (_case_of(name) for name in golden_names) if c is not None)
    records = read_manifest(path)
    for record in records:
        reference = next((golden[f] for f in record.files if f in golden), None)
        if reference is None:
            continue
        label = f"case {record.subject} #{record.key}"
        if record.model_name != reference.model_name or record.vocab_size != reference.vocab_size:
            raise DataError(f"{flag}: a dump of model {record.model_name!r} (vocabulary {record.vocab_size}), the "
                            f"golden one of {reference.model_name!r} ({reference.vocab_size}): a control must be "
                            "the golden model in another healthy configuration")
        if tuple(record.input_token_ids) != tuple(reference.input_token_ids):
            raise DataError(f"{flag}: {label} has another prompt than golden's (other input tokens): a control "
                            "must be dumped from the same task YAML and dataset")
        replay = record.extra.get("replay") if isinstance(record.extra, Mapping) else None
        # the tokens fed: those before the last step (a step's logits follow the tokens before it; the last
        # one chose a token nothing was fed with, which a 1-step replay records as its own)
        forced = tuple(record.output_token_ids[: max(0, len(record.files) - 1)])
        if isinstance(replay, Mapping) and forced != tuple(reference.output_token_ids[: len(forced)]):
            raise DataError(f"{flag}: {label} replayed other tokens than golden's (it replayed "
                            f"{replay.get('golden_dir') or 'another dump'}): make the control from this golden dump")
    if not cases & golden_cases:
        shown = ", ".join(f"{s} #{k}" for s, k in sorted(cases, key=str)[:3])
        raise DataError(f"{flag}: it holds none of the golden dump's cases (it has {shown}"
                        f"{' ...' if len(cases) > 3 else ''}): a control must be dumped from the same bad cases")
    replayed = bool(records) and all(isinstance(r.extra, Mapping) and "replay" in r.extra for r in records)
    made = next((r.extra.get(CONTROL_EXTRA) for r in records if isinstance(r.extra, Mapping)
                 and isinstance(r.extra.get(CONTROL_EXTRA), Mapping)), None)
    dtype = next((r.dtype for r in records if r.dtype), None)
    if isinstance(made, Mapping):
        kind, description = str(made.get("kind") or "unknown"), str(made.get("description") or "")
    else:
        kind, description = "unknown", f"a second dump of the golden side ({dtype or 'dtype not recorded'})"
    return ControlArm(path, found, kind, description or kind, dtype, replayed, cases)


def _tensor_names(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir() if p.name.endswith(TENSOR_SUFFIXES)]
    except OSError:
        return []


def _case_of(name: str) -> CaseKey | None:
    try:
        key, _token = parse_logits_file_name(name)
    except UserError:  # an odd name belongs to no case (pairing reports it)
        return None
    return parse_logits_subject(name), key


# ---- the steps of the control, by case ---------------------------------------------------------------------


@dataclass(frozen=True)
class ControlSteps:
    """The control's steps (control vs golden) of each case it covers: token -> step, comparable ones only."""

    arm: ControlArm
    by_case: Mapping[CaseKey, Mapping[int, Step]]
    #: token count each case of the control has (its files), for the missing-steps check.
    files: Mapping[CaseKey, int] = field(default_factory=dict)

    @classmethod
    def of(cls, arm: ControlArm, steps: Iterable[Step]) -> ControlSteps:
        """Group the measured control steps by case; a free-running control is comparable up to and including
        its own first argmax change (later it followed another text); DataError when its logits have
        another shape than golden's (another model)."""
        grouped: dict[CaseKey, list[Step]] = {}
        for step in steps:
            if step.key is None or step.token_id is None or step.reason == "only_in_golden_path":
                continue
            if step.reason == "data shape doesn't match.":
                raise DataError(f"control {arm.path}: {step.file_name} has another shape than golden's: a dump of "
                                "another model?")
            grouped.setdefault((step.subject, step.key), []).append(step)
        by_case: dict[CaseKey, dict[int, Step]] = {}
        files: dict[CaseKey, int] = {}
        for case, group in grouped.items():
            ordered = sorted(group, key=lambda s: s.token_id or 0)
            files[case] = len(ordered)
            kept: dict[int, Step] = {}
            for step in ordered:
                if step.metrics is None:
                    if not arm.replayed:
                        break
                    continue
                kept[step.token_id or 0] = step
                if not arm.replayed and not step.metrics.top1_match:
                    break
            by_case[case] = kept
        return cls(arm, by_case, files)

    def check_not_silent(self) -> None:
        """DataError when the control is bitwise golden at every step: it measures no noise."""
        measured = [s for steps in self.by_case.values() for s in steps.values()]
        if measured and all(s.metrics is not None and s.metrics.identical for s in measured):
            raise DataError(f"control {self.arm.path}: bitwise identical to the golden dump at every step, so it "
                            "measures no noise (a thread-count change leaves the bits alone on many CPUs): dump "
                            "it with dump --control impl or --control dtype")
