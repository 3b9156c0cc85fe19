"""The records localize writes and reads, defined once, each with `to_dict`/`from_dict`.

- `Arm`: one configuration's measurements on one case (the control arm on the golden side, or the device
  under test in a replay): per-token errors of every candidate, isolated and accumulated, the final KL;
- `RecordCase`: one recorded case: its tokens, where golden's tensors are and how they are rebuilt, and the
  control arms;
- `ReplayCase`: the test side's measurements of one case, its provisional verdict and the necessity check.
Per-token errors are kept to 4 significant digits (the JSON stays small).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The schema version of every localize file.
SCHEMA_VERSION = 1


def _rounded(values: list[float]) -> list[float]:
    return [float(f"{v:.4g}") for v in values]


def _errors(data: Any) -> dict[str, list[float]]:
    if not isinstance(data, Mapping):
        return {}
    return {str(k): [float(x) for x in v] for k, v in data.items() if isinstance(v, list)}


@dataclass(frozen=True)
class HeadStats:
    """Per-head mean and max over tokens of the relative error of each head's contribution."""

    mean: tuple[float, ...]
    max: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _rounded(list(self.mean)), "max": _rounded(list(self.max))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadStats:
        return cls(tuple(float(x) for x in data["mean"]), tuple(float(x) for x in data["max"]))


@dataclass(frozen=True)
class Arm:
    """One configuration's measurements on one case."""

    #: The data type and attention implementation it ran in.
    dtype: str
    attn: str | None
    #: Candidate name -> per-token relative error of its output, fed golden's input (module level: the
    #: layers' children, the model-level modules, any ops).
    module: dict[str, list[float]]
    #: The same for each decoder layer as a whole.
    layer: dict[str, list[float]]
    #: The plain pass (nothing fed): per-token error of each candidate's output and input, its flat cosine.
    accumulated: dict[str, list[float]]
    accumulated_in: dict[str, list[float]]
    cosine: dict[str, float]
    #: KL(golden || this) of the logits at the focus step, plain pass.
    kl_focus: float
    #: Layer -> the heads' errors (the control arm records them for every layer; a test, at its culprit).
    heads: dict[int, HeadStats] = field(default_factory=dict)
    #: Pass -> seconds ("prefill": a plain forward pass without hooks, "plain", "layer", "module").
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype, "attn": self.attn,
            "module": {k: _rounded(v) for k, v in self.module.items()},
            "layer": {k: _rounded(v) for k, v in self.layer.items()},
            "accumulated": {k: _rounded(v) for k, v in self.accumulated.items()},
            "accumulated_in": {k: _rounded(v) for k, v in self.accumulated_in.items()},
            "cosine": {k: float(f"{v:.9g}") for k, v in self.cosine.items()},
            "kl_focus": self.kl_focus,
            "heads": {str(k): v.to_dict() for k, v in self.heads.items()},
            "seconds": dict(self.seconds),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Arm:
        heads = data.get("heads") if isinstance(data.get("heads"), Mapping) else {}
        return cls(
            dtype=str(data["dtype"]), attn=data.get("attn"),
            module=_errors(data.get("module")), layer=_errors(data.get("layer")),
            accumulated=_errors(data.get("accumulated")), accumulated_in=_errors(data.get("accumulated_in")),
            cosine={str(k): float(v) for k, v in (data.get("cosine") or {}).items()},
            kl_focus=float(data.get("kl_focus", float("nan"))),
            heads={int(k): HeadStats.from_dict(v) for k, v in heads.items()},
            seconds={str(k): float(v) for k, v in (data.get("seconds") or {}).items()},
        )


@dataclass(frozen=True)
class RecordCase:
    """One recorded case (golden side)."""

    id: str
    subject: str
    key: int | str
    task: str
    #: The step compare centres on: the prefill is the prompt and golden's tokens before it.
    focus_step: int
    focus_why: str
    #: Compare's verdict of the case, when it was chosen from a compare run.
    compare_verdict: str | None
    token_ids: tuple[int, ...]
    prompt_tokens: int
    #: The case's safetensors file (beside the case JSON) and how every recorded tensor is rebuilt from it.
    tensors_file: str
    refs: dict[str, dict[str, Any]]
    checksums: dict[str, float]
    stored_bytes: int
    #: Control-arm key (its dtype) -> its measurements.
    controls: dict[str, Arm]

    @property
    def label(self) -> str:
        return f"{self.subject} #{self.key}" if self.subject else f"#{self.key}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "id": self.id, "subject": self.subject, "key": self.key,
            "task": self.task,
            "focus_step": self.focus_step, "focus_why": self.focus_why, "compare_verdict": self.compare_verdict,
            "token_ids": list(self.token_ids), "prompt_tokens": self.prompt_tokens,
            "tensors_file": self.tensors_file, "refs": self.refs, "checksums": self.checksums,
            "stored_bytes": self.stored_bytes,
            "controls": {k: v.to_dict() for k, v in self.controls.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordCase:
        return cls(
            id=str(data["id"]), subject=str(data.get("subject", "")), key=data.get("key", ""),
            task=str(data.get("task", "")), focus_step=int(data["focus_step"]),
            focus_why=str(data.get("focus_why", "")), compare_verdict=data.get("compare_verdict"),
            token_ids=tuple(int(t) for t in data["token_ids"]), prompt_tokens=int(data.get("prompt_tokens", 0)),
            tensors_file=str(data["tensors_file"]), refs=dict(data["refs"]),
            checksums={str(k): float(v) for k, v in (data.get("checksums") or {}).items()},
            stored_bytes=int(data.get("stored_bytes", 0)),
            controls={str(k): Arm.from_dict(v) for k, v in (data.get("controls") or {}).items()},
        )


@dataclass(frozen=True)
class Necessity:
    """The test run with the provisional culprit's own error (its isolated output minus golden's) taken out of its
    output: the final KL at the focus step against golden."""

    names: tuple[str, ...]
    kl: float

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "kl": self.kl}

    @classmethod
    def from_dict(cls, data: Any) -> Necessity | None:
        if not isinstance(data, Mapping):
            return None
        return cls(tuple(str(n) for n in data.get("names", ())), float(data.get("kl", float("nan"))))


@dataclass(frozen=True)
class ReplayCase:
    """The test side's measurements of one recorded case."""

    id: str
    arm: Arm
    #: The control arm whose bands the provisional verdict used (None: the record had none in this dtype).
    control: str | None
    #: The provisional verdict (`verdict.CaseVerdict.to_dict()`), which chose what to patch and keep.
    provisional: dict[str, Any]
    necessity: Necessity | None
    #: The safetensors file with the test's isolated outputs of the provisional culprit (for sufficiency) and
    #: its heads' input and output-projection weight (for the per-head split); None when there is none.
    tensors_file: str | None
    #: Decoys (`replay --decoys`): the necessity run at deliberately wrong candidates beside the culprit, which the
    #: causal check should refute (their isolated outputs are in the tensors file too).
    decoys: tuple[Necessity, ...] = ()
    #: How many realizations of the roundoff the kept logits (the test's, the necessity runs') are averaged over
    #: (`passes.averaged_logits`; 1: a single run, as every replay before it).
    dither_runs: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "id": self.id, "arm": self.arm.to_dict(), "control": self.control,
                "provisional": self.provisional,
                "necessity": self.necessity.to_dict() if self.necessity else None, "tensors_file": self.tensors_file,
                "decoys": [d.to_dict() for d in self.decoys], "dither_runs": self.dither_runs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplayCase:
        return cls(id=str(data["id"]), arm=Arm.from_dict(data["arm"]), control=data.get("control"),
                   provisional=dict(data.get("provisional") or {}),
                   necessity=Necessity.from_dict(data.get("necessity")), tensors_file=data.get("tensors_file"),
                   decoys=tuple(d for d in (Necessity.from_dict(x) for x in data.get("decoys") or ()) if d),
                   dither_runs=int(data.get("dither_runs") or 1))
