"""The repeat and batch probe: does a flipped case change when nothing changes, or with its batch?

On the test side, for each flipped case: `repeats` runs at batch size 1, then the case in the batch of
`batch_size` the evaluation put it in (its neighbours in dataset order around it). Reported per case:
- `nondeterministic`: its tokens change across the repeats at batch size 1;
- `batch-variant`: its tokens at batch size N differ from those at batch size 1;
- `bits-only`: its logits differ (repeats or batch) but its tokens do not;
- `stable`: bitwise identical logits and the same tokens every time.
with the measured spread (the largest |Δlogit| over the steps that followed the same prefix). The
switches that remove run-to-run and batch nondeterminism are named in docs/triage.md.
The report's part (`ProbeReport`) is torch-free; `run_probe` loads the model.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from logitsdump.errors import FileFormatError
from logitsdump.fsutil import atomic_open

STABLE = "stable"
BITS_ONLY = "bits-only"
BATCH_VARIANT = "batch-variant"
NONDETERMINISTIC = "nondeterministic"
#: Worst first.
CLASSES = (NONDETERMINISTIC, BATCH_VARIANT, BITS_ONLY, STABLE)
KIND = "logitsdump-probe"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ProbeCase:
    """What one flipped case did across repeats and in its batch."""

    key: str
    verdict: str
    #: Distinct token sequences over the repeats at batch size 1.
    repeat_outputs: int
    repeat_max_abs: float
    repeat_identical: bool
    #: At batch size N (None: the batch probe was not run).
    batch_max_abs: float | None = None
    batch_identical: bool | None = None
    batch_output_changed: bool | None = None
    batch_pass_changed: bool | None = None
    #: How many cases the batch of size N that held this case had.
    batch_cases: int | None = None
    pass_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeReport:
    """One probe run."""

    model: str
    dtype: str
    device: str
    repeats: int
    batch_size: int
    steps: int
    cases: tuple[ProbeCase, ...]
    #: Determinism switches set in the environment of the run (name -> value).
    switches: Mapping[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts = Counter(case.verdict for case in self.cases)
        return {name: counts.get(name, 0) for name in CLASSES}

    def largest(self, name: str) -> float | None:
        values = [getattr(c, name) for c in self.cases if getattr(c, name) is not None]
        return max(values) if values else None

    def summary(self) -> str:
        """One line: the classes and the spreads."""
        counts = self.counts()
        parts = [f"{counts[name]} {name}" for name in CLASSES if counts[name]]
        spread = f"max |Δlogit| over {self.repeats} repeats {_g(self.largest('repeat_max_abs'))}"
        if self.batch_size > 1:
            spread += f", at batch size {self.batch_size} vs 1 {_g(self.largest('batch_max_abs'))}"
        return f"{len(self.cases)} case(s): {', '.join(parts) or 'none'} ({spread}; {self.dtype}, " \
               f"{self.device}, first {self.steps} steps)"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "schema_version": SCHEMA_VERSION, **asdict(self),
                "cases": [asdict(c) for c in self.cases], "counts": self.counts()}

    @classmethod
    def from_dict(cls, data: Any) -> ProbeReport:
        if not isinstance(data, Mapping) or data.get("kind") != KIND:
            raise FileFormatError("not a probe report (expected kind 'logitsdump-probe')")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise FileFormatError(f"probe report schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
        try:
            names = set(ProbeCase.__dataclass_fields__)
            cases = tuple(ProbeCase(**{k: v for k, v in c.items() if k in names}) for c in data.get("cases") or ())
            cases = tuple(_tupled(c) for c in cases)
            return cls(str(data["model"]), str(data["dtype"]), str(data["device"]), int(data["repeats"]),
                       int(data["batch_size"]), int(data["steps"]), cases, dict(data.get("switches") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise FileFormatError(f"a malformed probe report ({err})") from None


def _tupled(case: ProbeCase) -> ProbeCase:
    from dataclasses import replace

    return replace(case, pass_labels=tuple(case.pass_labels))


def classify(repeat_outputs: int, repeat_identical: bool, batch_output_changed: bool | None,
             batch_identical: bool | None) -> str:
    """The probe's class of one case (see the module's docstring)."""
    if repeat_outputs > 1:
        return NONDETERMINISTIC
    if batch_output_changed:
        return BATCH_VARIANT
    if not repeat_identical or batch_identical is False:
        return BITS_ONLY
    return STABLE


def run_probe(rerunner: Any, keys: Sequence[str], *, repeats: int = 3, batch_size: int = 8, steps: int = 8,
              progress: Any = None) -> ProbeReport:
    """Probe the cases `keys` on a loaded `rerun.Rerunner`."""
    from logitsdump.runner.backends.describe import DETERMINISM_VARIABLES
    from logitsdump.triage.rerun import max_abs_difference

    cases = rerunner.find(keys)
    runs = []
    for number in range(max(repeats, 1)):
        runs.append(rerunner.run([[case] for case in cases], steps))
        if progress is not None:
            progress(f"repeat {number + 1}/{repeats} at batch size 1")
    batched = None
    contexts: dict[str, int] = {}
    if batch_size > 1:
        groups = rerunner.batches_with(cases, batch_size)
        for group in groups:
            contexts.update({case.key: len(group) for case in group})
        batched = rerunner.run(groups, steps, only=[c.key for c in cases])
        if progress is not None:
            progress(f"batch size {batch_size}: {len(groups)} batch(es)")
    found = []
    for case in cases:
        outcomes = [run[case.key] for run in runs if case.key in run]
        first = outcomes[0]
        spreads = [max_abs_difference(first, other) for other in outcomes[1:]]
        repeat_max = max((s[0] for s in spreads), default=0.0)
        repeat_identical = all(s[1] for s in spreads)
        distinct = len({o.output_ids for o in outcomes})
        batch_fields: dict[str, Any] = {}
        if batched is not None and case.key in batched:
            other = batched[case.key]
            worst, identical, _ = max_abs_difference(first, other)
            batch_fields = {"batch_max_abs": worst, "batch_identical": identical,
                            "batch_output_changed": other.output_ids != first.output_ids,
                            "batch_pass_changed": other.pass_label != first.pass_label,
                            "batch_cases": contexts.get(case.key)}
        verdict = classify(distinct, repeat_identical, batch_fields.get("batch_output_changed"),
                           batch_fields.get("batch_identical"))
        labels = tuple(o.pass_label for o in outcomes) + ((batched[case.key].pass_label,) if batch_fields else ())
        found.append(ProbeCase(case.key, verdict, distinct, repeat_max, repeat_identical, pass_labels=labels,
                               **batch_fields))
    config = rerunner.model_config
    switches = {name: os.environ[name] for name in DETERMINISM_VARIABLES if name in os.environ}
    return ProbeReport(config.model_name, config.data_type, rerunner.device.torch_device, max(repeats, 1),
                       batch_size, steps, tuple(found), switches)


def write_report(report: ProbeReport | Any, path: Path) -> Path:
    """Write a probe or ablation report as JSON (atomically)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        json.dump(report.to_dict(), handle, indent=1, sort_keys=True)
    return path


def read_json(path: str | os.PathLike[str]) -> Any:
    """A report file's JSON; FileFormatError with the reason when it cannot be read."""
    file = Path(path)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileFormatError(f"{file} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise FileFormatError(f"cannot read {file}: {getattr(err, 'strerror', None) or err}") from None
    except (ValueError, RecursionError) as err:
        raise FileFormatError(f"{file}: not valid JSON ({err})") from None


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
