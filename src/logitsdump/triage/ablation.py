"""The configuration ablation: re-run the flipped cases with one feature changed at a time.

The test side's set-up (`RecordedSetup`, from its recorded provenance or the flags) says which features
it ran with; each `Variant` changes one of them, where the backend has it:
- `batch-size-1`: batch size 1 instead of N (any backend);
- `single-process`: tensor parallel size 1 and data parallel off (the run was a torchrun of W processes;
  the ablation runs in one);
- `eager`: eager mode instead of CUDA/NPU graphs (vLLM `enforce_eager`);
- `prefix-cache-off`, `chunked-prefill-off`: vLLM's prefix cache and chunked prefill off;
- `tp-1`: vLLM's own tensor parallel size 1.
Each run judges the cases with the task; a flip goes away when the test's verdict becomes golden's
(bcanalyze's `passed_golden`). The report names the changes that make every reproduced flip go away.
The report's part is torch-free; `run_ablation` loads the model (once, and again per engine change).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from logitsdump.errors import FileFormatError

KIND = "logitsdump-ablation"
SCHEMA_VERSION = 1
BASELINE = "as-recorded"


@dataclass(frozen=True)
class RecordedSetup:
    """What the test side ran with (the features an ablation can change)."""

    #: The model YAML's requested_gpu_framework, as recorded (None: the model YAML's).
    backend: str | None = None
    batch_size: int = 1
    world_size: int = 1
    tp: int = 1
    #: The engine settings its provenance recorded (vLLM: enforce_eager, enable_prefix_caching, ...).
    engine: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Mapping[str, Any] | None, **overrides: Any) -> RecordedSetup:
        """From a run's provenance (`store.RunProvenance.run`); `overrides` (not None) win."""
        runner = run.get("runner") if isinstance(run, Mapping) else None
        runner = runner if isinstance(runner, Mapping) else {}
        engine = run.get("engine") if isinstance(run, Mapping) and isinstance(run.get("engine"), Mapping) else {}
        values = {
            "backend": str(runner["backend"]) if runner.get("backend") else None,
            "batch_size": int(runner.get("batch_size") or 1),
            "world_size": int(runner.get("world_size") or 1), "tp": int(runner.get("tp") or 1),
            "engine": dict(engine),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def vllm(self) -> bool:
        return (self.backend or "").lower() == "vllm"


@dataclass(frozen=True)
class Variant:
    """One feature changed."""

    name: str
    change: str
    batch_size: int | None = None
    #: vLLM engine arguments set for this run (through LOGITSDUMP_VLLM_ENGINE_ARGS).
    engine: Mapping[str, Any] = field(default_factory=dict)


def variants_for(setup: RecordedSetup) -> list[tuple[Variant, str]]:
    """Every variant with '' when it applies to `setup`, else why not."""
    engine = setup.engine
    vllm_only = "" if setup.vllm else "the HF backend has no such feature"
    found: list[tuple[Variant, str]] = [
        (Variant("batch-size-1", f"batch size 1 instead of {setup.batch_size}", batch_size=1),
         "" if setup.batch_size > 1 else "the test ran at batch size 1"),
        (Variant("single-process", f"one process instead of torchrun's {setup.world_size} (tp 1, no data "
                 "parallel)"), "" if setup.world_size > 1 else "the test ran in one process"),
        (Variant("eager", "eager mode instead of graphs", engine={"enforce_eager": True}),
         vllm_only or ("" if engine.get("enforce_eager") is False else "the test ran eagerly")),
        (Variant("prefix-cache-off", "prefix cache off", engine={"enable_prefix_caching": False}),
         vllm_only or ("" if engine.get("enable_prefix_caching") else "the test ran without a prefix cache")),
        (Variant("chunked-prefill-off", "chunked prefill off", engine={"enable_chunked_prefill": False}),
         vllm_only or ("" if engine.get("chunked_prefill_enabled") or engine.get("enable_chunked_prefill")
                       else "the test ran without chunked prefill")),
        (Variant("tp-1", f"tensor parallel size 1 instead of {engine.get('tensor_parallel_size')}",
                 engine={"tensor_parallel_size": 1}),
         vllm_only or ("" if int(engine.get("tensor_parallel_size") or 1) > 1 else "the test ran with tp 1")),
    ]
    return found


@dataclass(frozen=True)
class AblationRow:
    """One run of the flipped cases."""

    name: str
    change: str
    #: Why it was not run ('' when it was).
    skipped: str = ""
    #: case key -> the task's verdict in this run.
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Flipped cases whose verdict is golden's in this run (the flip went away) / still the test's.
    gone: int = 0
    still: int = 0


@dataclass(frozen=True)
class AblationReport:
    """One ablation: the flipped cases, golden's verdicts, and every row."""

    model: str
    setup: Mapping[str, Any]
    golden: Mapping[str, str]
    rows: tuple[AblationRow, ...]
    #: Flipped cases the as-recorded run reproduced (its verdict is not golden's).
    reproduced: int = 0

    def baseline(self) -> AblationRow | None:
        return next((r for r in self.rows if r.name == BASELINE), None)

    def culprits(self) -> list[AblationRow]:
        """The variants that make every reproduced flip go away."""
        return [r for r in self.rows if r.name != BASELINE and not r.skipped and self.reproduced
                and r.gone >= self.reproduced]

    def summary(self) -> str:
        culprits = self.culprits()
        tried = [r for r in self.rows if r.name != BASELINE and not r.skipped]
        if not self.reproduced:
            return (f"the as-recorded run did not reproduce any of the {len(self.golden)} flips: nothing to ablate "
                    "(probe for nondeterminism)")
        if not tried:
            return f"{self.reproduced} flip(s) reproduced; no feature of this set-up can be changed"
        if culprits:
            names = ", ".join(f"{r.change} ({r.gone}/{self.reproduced})" for r in culprits)
            return f"the flip goes away with: {names}"
        best = max(tried, key=lambda r: r.gone)
        return (f"no single change makes the {self.reproduced} reproduced flip(s) go away (best: {best.change}, "
                f"{best.gone}/{self.reproduced}): not configuration-triggered")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "schema_version": SCHEMA_VERSION, "model": self.model, "setup": dict(self.setup),
                "golden": dict(self.golden), "reproduced": self.reproduced,
                "rows": [asdict(r) for r in self.rows], "summary": self.summary(),
                "culprits": [r.name for r in self.culprits()]}

    @classmethod
    def from_dict(cls, data: Any) -> AblationReport:
        if not isinstance(data, Mapping) or data.get("kind") != KIND:
            raise FileFormatError("not an ablation report (expected kind 'logitsdump-ablation')")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise FileFormatError(f"ablation report schema_version {data.get('schema_version')!r} is not "
                                  f"{SCHEMA_VERSION}")
        try:
            names = set(AblationRow.__dataclass_fields__)
            rows = tuple(AblationRow(**{k: v for k, v in r.items() if k in names}) for r in data.get("rows") or ())
            return cls(str(data["model"]), dict(data.get("setup") or {}), dict(data.get("golden") or {}), rows,
                       int(data.get("reproduced") or 0))
        except (KeyError, TypeError, ValueError) as err:
            raise FileFormatError(f"a malformed ablation report ({err})") from None


def run_ablation(model_config_path: str, task_config_path: str, flipped: Sequence[Any], setup: RecordedSetup, *,
                 device: str = "auto", progress: Any = None) -> AblationReport:
    """Run the as-recorded set-up and each applicable variant on the `flipped` cases (`rerun.FlippedCase`)."""
    from logitsdump.runner.backends.vllm import ENGINE_ARGS_ENV
    from logitsdump.triage.rerun import Rerunner, environment

    golden = {case.key: case.golden_pass for case in flipped if case.golden_pass is not None}
    recorded_test = {case.key: case.test_pass for case in flipped if case.test_pass is not None}
    base = Rerunner.from_files(model_config_path, task_config_path, device, backend=setup.backend)
    setup = replace(setup, backend=base.model_config.requested_gpu_framework)
    cases = base.find(case.key for case in flipped)
    keys = [case.key for case in cases]

    def judged(rerunner: Rerunner, batch_size: int) -> dict[str, str]:
        outcomes = rerunner.run(rerunner.batches_with(cases, batch_size), 0, only=keys)
        return {key: outcome.pass_label for key, outcome in outcomes.items()}

    rows: list[AblationRow] = []
    if setup.world_size > 1:  # torchrun's layout cannot be re-run in this process: its verdicts are the CSV's
        baseline = {k: v for k, v in recorded_test.items() if k in keys}
        rows.append(AblationRow(BASELINE, f"torchrun of {setup.world_size} (the test's recorded verdicts)",
                                labels=baseline))
    else:
        baseline = judged(base, setup.batch_size)
        rows.append(AblationRow(BASELINE, f"the test's set-up (batch size {setup.batch_size})", labels=baseline))
    if progress is not None:
        progress(f"{BASELINE}: done")
    reproduced = [k for k in keys if k in golden and baseline.get(k) is not None and baseline[k] != golden[k]]
    for variant, why_not in variants_for(setup):
        if why_not:
            rows.append(AblationRow(variant.name, variant.change, skipped=why_not))
            continue
        if variant.engine:
            current = json.loads(os.environ.get(ENGINE_ARGS_ENV) or "{}")
            with environment({ENGINE_ARGS_ENV: json.dumps({**current, **variant.engine})}):
                labels = judged(Rerunner.from_files(model_config_path, task_config_path, device,
                                                    backend=setup.backend), setup.batch_size)
        else:
            labels = judged(base, variant.batch_size or setup.batch_size)
        gone = sum(1 for k in reproduced if labels.get(k) == golden[k])
        rows.append(AblationRow(variant.name, variant.change, labels=labels, gone=gone, still=len(reproduced) - gone))
        if progress is not None:
            progress(f"{variant.name}: {gone}/{len(reproduced)} flip(s) gone")
    rows[0] = replace(rows[0], still=len(reproduced))
    return AblationReport(base.model_config.model_name, asdict(setup), golden, tuple(rows), len(reproduced))
