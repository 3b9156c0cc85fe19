"""`localize replay`, the test side: the recorded cases' prefills on the model under test, every candidate fed
golden's recorded input, and the necessity check of the provisional culprit.

Per case: golden's tensors are rebuilt from the record (checked), then a plain prefill (the cost baseline),
the plain pass (accumulated errors, the final KL at the focus step), the layer-level and the module-level
isolated passes. The provisional verdict (the record's control arm as the band: `judging`) picks the
culprit; the test run is repeated with the culprit's own error (its isolated output minus golden's) taken out
of its output (necessity), and the culprit's isolated output, the test's and the necessity run's logits at the
focus step (where the check is testable, the necessity run's and a copy of the test's averaged over
`verdict.DITHER_RUNS` realizations of the roundoff, `passes.averaged_logits`), with its heads' input and
output-projection weight for an attention culprit, are kept for the golden side's causal check (both halves judged
on the change of the logits from the control arm's) and head split.
`decoys`: the necessity run also at two wrong candidates beside the culprit (`decoy_targets`), their outputs and
logits kept too. Only the replay folder goes back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitsdump.errors import DataError, UsageError
from logitsdump.fsutil import check_path_fits, ensure_writable_dir
from logitsdump.localize import files, models
from logitsdump.localize.candidates import LM_HEAD, Structure, output_projection
from logitsdump.localize.compact import rebuild
from logitsdump.localize.judging import case_verdict, control_source
from logitsdump.localize.records import SCHEMA_VERSION, Necessity, RecordCase, ReplayCase
from logitsdump.localize.verdict import CULPRIT, DITHER_RUNS, CaseVerdict, testable


@dataclass(frozen=True)
class ReplayOptions:
    """What `localize replay` is asked to do."""

    record: str
    model_config_path: str
    output_dir: str
    device: str = "auto"
    attn: str | None = None
    #: Also run the necessity check at decoys (`decoy_targets`), wrong candidates the causal check should refute.
    decoys: bool = False


@dataclass(frozen=True)
class ReplaySummary:
    path: Path
    cases: int
    verdicts: dict[str, int]


def replay(options: ReplayOptions, say: Callable[[str], None] = print, *, model: Any = None,
           prepare: Callable[[RecordCase], Callable[[], None]] | None = None) -> ReplaySummary:
    """Replay every case of the record (see the module docstring). `model`: an already loaded backend, else the
    model YAML's is loaded; `prepare(case)`: called before each case, returns what to call after it (the bench
    plants a defect per case in memory)."""
    folder = files.RecordFolder(options.record)
    out = Path(options.output_dir)
    check_path_fits(out, "-o/--output-dir", "case_c0000.safetensors.tmp")
    if (out / files.REPLAY_HEADER).exists():
        raise UsageError(f"{out} already holds a localize replay: choose another -o (nothing was changed)")
    ensure_writable_dir(out)
    cases = [folder.case(i) for i in folder.ids]
    if model is None:
        models.refuse_unhookable(options.model_config_path, str(out), [c.focus_step for c in cases])
        model = models.load(options.model_config_path, device=options.device, attn=options.attn)
    structure = Structure.from_dict(folder.header["structure"])
    dtype = model.config.data_type
    control = dtype if dtype in folder.header.get("controls", {}) else None
    if control is None:
        say(f"note: the record has no control arm in {dtype} (it has {', '.join(folder.header.get('controls', {}))}): "
            "no band here; judge with --band HEALTHY_REPLAY")
    say(f"replaying {len(cases)} case(s) on {model.model_path} ({dtype}, {models.attention_of(model.model)})")
    verdicts: dict[str, int] = {}
    for number, entry in enumerate(cases):
        undo = prepare(entry) if prepare is not None else None
        started = time.perf_counter()
        try:
            tensors, case = replay_case(entry, folder, model.model, structure, dtype, control,
                                        golden_dtype=folder.header["model"]["dtype"], decoys=options.decoys)
        finally:
            if undo is not None:
                undo()
        case = dataclasses.replace(case, arm=dataclasses.replace(
            case.arm, seconds={**case.arm.seconds, "case": time.perf_counter() - started}))
        if tensors:
            files.save_tensors(out / case.tensors_file, tensors)
        files.write_json(out / files.CASE_JSON.format(id=entry.id), case.to_dict())
        verdict = CaseVerdict.from_dict(case.provisional)
        verdicts[verdict.kind] = verdicts.get(verdict.kind, 0) + 1
        necessity = f", patched KL {case.necessity.kl:.3g}" if case.necessity else ""
        say(f"case {number + 1}/{len(cases)} {entry.label}: {verdict.label} (final KL {case.arm.kl_focus:.3g}"
            f"{necessity}; {case.arm.seconds['case']:.1f} s)")
    header = {
        "schema_version": SCHEMA_VERSION, "kind": "replay", "tool": "logitsdump localize replay",
        "record": str(folder.path.resolve()), "record_id": folder.header.get("record_id"),
        "record_model": folder.header.get("model"),
        "model": {"path": str(model.model_path), "name": model.config.model_name, "dtype": dtype,
                  "attn": models.attention_of(model.model)},
        "provenance": {"device": model.device.torch_device, "versions": model.versions()},
        "control": control, "cases": [c.id for c in cases],
    }
    files.write_json(out / files.REPLAY_HEADER, header)
    say(f"replay: {out}: bring it back to the golden side and run `logitsdump localize judge`")
    return ReplaySummary(out, len(cases), verdicts)


def replay_case(entry: RecordCase, folder: files.RecordFolder, model: Any, structure: Structure, dtype: str,
                control: str | None, *, golden_dtype: str, decoys: bool = False) -> tuple[dict[str, Any], ReplayCase]:
    """One case's passes, provisional verdict and necessity check (and the decoys'); (tensors to keep, the case's
    record). A culprit's case keeps its isolated output, the test's and the necessity runs' logits at the focus step
    (the causal check's directions) and an attention culprit's heads."""
    from logitsdump.localize import passes
    from logitsdump.localize.run_record import measure_arm

    try:
        golden = rebuild(entry.refs, folder.tensors(entry), entry.checksums)
    except ValueError as err:
        raise DataError(f"{folder.path} case {entry.id}: {err}") from err
    device = model.get_input_embeddings().weight.device
    golden = {name: tensor.to(device) for name, tensor in golden.items()}
    lm_head = next(c.name for c in structure.candidates if c.module == LM_HEAD)
    golden_logits = golden[f"{lm_head}:out"][0, -1]
    tokens = list(entry.token_ids)
    measured = measure_arm(model, tokens, structure, golden, golden_logits, dtype, keep=True)
    arm = measured.arm
    bands = control_source(entry.controls[control], golden_dtype) if control in entry.controls else None
    verdict, _modules, _layers = case_verdict(structure, bands, arm)
    kept: dict[str, Any] = {}
    necessity = None
    decoy_runs: list[Necessity] = []
    runs = 1
    if verdict.kind == CULPRIT:
        target = patch_target(structure, verdict)
        # a testable check averages its logits over realizations of the roundoff (`verdict.DITHER_RUNS`)
        if control in entry.controls and testable(arm.kl_focus, entry.controls[control].kl_focus):
            runs = DITHER_RUNS
        for name in [target, *(decoy_targets(structure, target) if decoys else [])]:
            source = measured.layer if structure.by_name()[name].kind == "layer" else measured.module
            own_error = source.outputs[name].to(golden[f"{name}:out"].device).float() - golden[f"{name}:out"].float()
            averaged, first = passes.averaged_logits(model, tokens, entry.id, runs, name=name, change=own_error,
                                                     how="subtract")
            run = Necessity((name,), passes.kl_divergence(golden_logits, first))
            if name == target:
                necessity = run
            else:
                decoy_runs.append(run)
            kept[f"{name}:out"] = source.outputs[name]
            kept[NECESSITY_LOGITS.format(name=name)] = averaged.clone()
        kept[TEST_LOGITS] = measured.plain.logits[-1].float().clone()
        if runs > 1:
            kept[TEST_LOGITS_AVERAGED] = passes.averaged_logits(model, tokens, entry.id, runs,
                                                                first=kept[TEST_LOGITS])[0]
        kept.update(_heads_tensors(model, structure, verdict, measured.module.heads_in))
    case = ReplayCase(entry.id, arm, control, verdict.to_dict(), necessity,
                      files.CASE_TENSORS.format(id=entry.id) if kept else None, tuple(decoy_runs), runs)
    return kept, case


def decoy_targets(structure: Structure, target: str) -> list[str]:
    """Two deliberately wrong candidates beside a culprit: the same module of the next layer (the previous one at
    the last layer), and, for a module, the next module of its own layer in forward order (the previous one for the
    last)."""
    culprit = structure.by_name()[target]
    if culprit.layer is None:
        return []
    layers = sorted({c.layer for c in structure.candidates if c.kind == "layer" and c.layer is not None})
    later = [n for n in layers if n > culprit.layer]
    neighbour = later[0] if later else max((n for n in layers if n < culprit.layer), default=None)
    found = [c.name for c in structure.candidates
             if c.kind == culprit.kind and c.layer == neighbour and c.module == culprit.module][:1]
    if culprit.kind == "module":
        own = [c.name for c in structure.candidates if c.kind == "module" and c.layer == culprit.layer]
        at = own.index(target)
        if len(own) > 1:
            found.append(own[at + 1] if at + 1 < len(own) else own[at - 1])
    return found


#: The tensors-file keys of the test's logits at the focus step (kept with a culprit: its plain run, and averaged over
#: `ReplayCase.dither_runs` realizations of the roundoff when that is more than one), and of the necessity run's at a
#: patched candidate (the culprit, and each decoy; averaged alike), float32 [vocab] each (192 KB at SmolLM2's 49,152).
TEST_LOGITS = "logits:test"
TEST_LOGITS_AVERAGED = "logits:test:averaged"
NECESSITY_LOGITS = "logits:necessity:{name}"


def patch_target(structure: Structure, verdict: CaseVerdict) -> str:
    """The candidate the causal check patches: the culprit module (an op inside it: the module), or its whole layer
    when several of its modules are the culprit."""
    kinds = {c.name: c.kind for c in structure.candidates}
    modules = [n for n in verdict.names if kinds.get(n) != "op"] or list(verdict.names)
    if len(modules) == 1:
        return modules[0]
    return next(c.name for c in structure.candidates if c.kind == "layer" and c.layer == verdict.layer)


def _heads_tensors(model: Any, structure: Structure, verdict: CaseVerdict, heads_in: dict[int, Any]) -> dict[str, Any]:
    """An attention culprit's heads' input and output-projection weight (the golden side splits it per head)."""
    if verdict.layer is None or verdict.layer not in heads_in:
        return {}
    modules = dict(model.named_modules())
    for name in verdict.names:
        found = output_projection(modules[name])
        if found is not None:
            return {"heads:in": heads_in[verdict.layer], "heads:weight": found[1].weight.detach().to("cpu").clone()}
    return {}
