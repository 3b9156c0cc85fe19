"""How a case was judged against the control arm, as the compare records carry it (`compare/control.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from logitsdump.compare.lenient import finite_float, read_int, read_ints


@dataclass(frozen=True)
class ControlStep:
    """One judged step of a case against the control arm (`compare/control.py`)."""

    token: int
    #: KL(golden || control) and the control's `perturbation_rms` at this step; None: no control step here.
    control_kl: float | None
    control_rms: float | None
    #: log of the test's over the control's squared perturbation (`PairMetrics.perturbation_rms`), clamped.
    log_ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ControlStep | None:
        token = read_int(data.get("token"))
        if token is None:
            return None
        return cls(token, finite_float(data.get("control_kl")), finite_float(data.get("control_rms")),
                   finite_float(data.get("log_ratio")))


@dataclass(frozen=True)
class PairedCase:
    """How a case was judged against the control arm: the paired statistics (`compare/control.py`)."""

    #: Judged steps that have a control step (n of the statistics).
    steps: int
    #: Mean over those steps of log(test's / control's squared perturbation): 0 when the test is as noisy.
    log_ratio: float
    #: log of the healthy spread factor of this pairing (the test's noise may be that much larger).
    allowance: float
    #: The mean rule: log_ratio - allowance above this is drift (at the stated false-alarm rate).
    threshold: float
    #: One-sided p-value of the mean rule (small: the test is noisier than any healthy pair would be).
    p_value: float
    #: The worst step, its log_ratio - allowance, and the worst-step rule's threshold.
    worst_token: int | None
    worst_excess: float | None
    step_threshold: float
    #: sum KL(golden || test) / sum KL(golden || control) over the paired steps (None: the control's is 0).
    kl_ratio: float | None
    control_steps: tuple[ControlStep, ...] = ()
    #: Judged tokens with no control step (a free-running control that left golden's text earlier).
    uncovered: tuple[int, ...] = ()
    #: The mean rule's threshold inside a run that is itself precision-suspect (`compare/control.py`,
    #: ALPHA_IN_RUN); None when the run is not (or has one case).
    run_threshold: float | None = None

    @property
    def excess(self) -> float:
        """log_ratio - allowance: how much noisier than the healthy bound the test is (log)."""
        return self.log_ratio - self.allowance

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["control_steps"] = [c.to_dict() for c in self.control_steps]
        data["uncovered"] = list(self.uncovered)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> PairedCase | None:
        if not isinstance(data, Mapping):
            return None
        numbers = {name: finite_float(data.get(name)) for name in
                   ("log_ratio", "allowance", "threshold", "p_value", "step_threshold")}
        if any(v is None for v in numbers.values()):
            return None
        raw = data.get("control_steps") if isinstance(data.get("control_steps"), list) else []
        return cls(
            steps=read_int(data.get("steps")) or 0,
            worst_token=read_int(data.get("worst_token")),
            worst_excess=finite_float(data.get("worst_excess")),
            kl_ratio=finite_float(data.get("kl_ratio")),
            control_steps=tuple(c for c in (ControlStep.from_dict(d) for d in raw if isinstance(d, Mapping)) if c),
            uncovered=read_ints(data.get("uncovered")) or (),
            run_threshold=finite_float(data.get("run_threshold")),
            **numbers,  # type: ignore[arg-type]
        )
