"""`localize judge`: the verdict of every case and of the run, from a record and its replay (files only).

With golden's model YAML (on the golden side) it also runs, for each culprit, the causal check
(`verdict.causal_check`, both halves on the change of the logits at the focus step from the control arm's run,
golden's device in the test dtype; where the replay averaged necessity's logits over realizations of the roundoff,
the control arm's are averaged alike): necessity, how much of the test's change the replay's necessity run
removed (on the KL for a replay that kept no necessity logits); sufficiency, the control arm's run with only the
culprit's deviation added: does it move the logits the way the test's moved (the same in golden's own run is
reported); the same for the replay's decoys plus two of the golden side's own (a random change of the culprit's
size, the culprit's deviation at the next layer), and, for an attention culprit, the split per head (each head's
contribution through the output projection, against the control arm's per-head band).
Without it, the verdicts and the necessity check (from the replay) stand alone. `band`: a replay of the same
record by a known-healthy test set-up, used as the band instead of the control arm (per case where it replayed
the case, else pooled over its cases).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitsdump.errors import DataError
from logitsdump.fsutil import check_path_fits, claim_stamped, ensure_writable_dir, timestamp
from logitsdump.localize import baselines, files, models, outputs
from logitsdump.localize.candidates import LM_HEAD, Structure
from logitsdump.localize.compact import rebuild
from logitsdump.localize.judging import HEALTHY_SAME, BandSource, case_verdict, control_source, pooled_source
from logitsdump.localize.msprobe import culprit_config
from logitsdump.localize.records import SCHEMA_VERSION, Arm, RecordCase, ReplayCase
from logitsdump.localize.run_replay import NECESSITY_LOGITS, TEST_LOGITS, TEST_LOGITS_AVERAGED, patch_target
from logitsdump.localize.verdict import (
    ABOVE,
    ALIGNED_FLOOR,
    CONFIRMED,
    CULPRIT,
    DIFFUSE_LAYERS,
    DITHER_RUNS,
    MOST,
    NOISE_FACTOR,
    NULL_DRAWS,
    REFUTED,
    REMOVED,
    SHARE,
    STANDOUT,
    CaseVerdict,
    Causal,
    RunVerdict,
    Sufficiency,
    causal_check,
    judge_heads,
    judge_run,
    sufficiency_only,
    testable,
)


@dataclass(frozen=True)
class JudgeOptions:
    """What `localize judge` is asked to do."""

    record: str
    replay: str
    output_dir: str
    model_config_path: str | None = None
    band: str | None = None
    device: str = "auto"


class GoldenSide:
    """The golden side's models for the confirmations: golden's own, and each control arm's (loaded when first
    needed, kept for the next judge)."""

    def __init__(self, model_config_path: str, device: str = "auto", golden: Any = None) -> None:
        self.model_config_path = model_config_path
        self.device = device
        self._golden = golden
        self._controls: dict[tuple[str, str | None], Any] = {}

    @property
    def golden(self) -> Any:
        if self._golden is None:
            self._golden = models.load(self.model_config_path, device=self.device)
        return self._golden

    def control(self, dtype: str, attn: str | None) -> Any:
        if (dtype, attn) not in self._controls:
            self._controls[dtype, attn] = models.load(self.model_config_path, device=self.device, data_type=dtype,
                                                      attn=attn)
        return self._controls[dtype, attn]


@dataclass(frozen=True)
class JudgeSummary:
    document: Path
    cases_csv: Path
    candidates_csv: Path
    page: Path
    run: RunVerdict
    cases: list[dict[str, Any]]


def judge(options: JudgeOptions, say: Callable[[str], None] = print, *,
          side: GoldenSide | None = None) -> JudgeSummary:
    """Judge every recorded case (see the module docstring). `side`: the golden side's models, already loaded
    (default: from `options.model_config_path`, when given)."""
    record = files.RecordFolder(options.record)
    replayed = files.ReplayFolder(options.replay)
    healthy = files.ReplayFolder(options.band) if options.band else None
    out = Path(options.output_dir)
    check_path_fits(out, "-o/--output-dir", "localize_candidates_00000000000000_0000.csv.tmp")
    ensure_writable_dir(out)
    structure = Structure.from_dict(record.header["structure"])
    golden_dtype = record.header["model"]["dtype"]
    for replay_folder in (replayed, healthy):
        if replay_folder is not None and replay_folder.header.get("record_id") != record.header.get("record_id"):
            raise DataError(f"{replay_folder.path} is the replay of another record (record id "
                            f"{replay_folder.header.get('record_id')}, {options.record} is "
                            f"{record.header.get('record_id')}): replay this record on the test side")
    if side is None and options.model_config_path is not None:
        side = GoldenSide(options.model_config_path, options.device)
    pooled = _pooled(healthy, golden_dtype) if healthy is not None else None
    cases = []
    for case_id in record.ids:
        entry = record.case(case_id)
        replay = replayed.case(case_id)
        cases.append(judge_case(entry, replay, structure, golden_dtype, record, replayed, side=side,
                                healthy=healthy, pooled=pooled))
        verdict = cases[-1]["verdict"]
        causal = cases[-1]["causal"]
        say(f"{entry.label} (step {entry.focus_step}): {verdict['label']}"
            + (f" {verdict['score']:.3g}x" if verdict.get("score") is not None and verdict["kind"] == CULPRIT else "")
            + (f"; causal check {causal['outcome']}" if causal else "") + f" - {verdict['reason']}")
    run = judge_run([CaseVerdict.from_dict(c["verdict"]) for c in cases])
    document = {
        "schema_version": SCHEMA_VERSION, "kind": "localize", "tool": "logitsdump localize judge",
        "record": str(record.path), "replay": str(replayed.path), "band": options.band,
        "model": record.header["model"], "test": replayed.header.get("model"),
        "test_provenance": replayed.header.get("provenance"), "golden_provenance": record.header.get("provenance"),
        "constants": {"above": ABOVE, "standout": STANDOUT, "diffuse_layers": DIFFUSE_LAYERS,
                      "noise_factor": NOISE_FACTOR, "most": MOST, "removed": REMOVED,
                      "aligned_floor": ALIGNED_FLOOR, "null_draws": NULL_DRAWS, "share": SHARE,
                      "dither_runs": DITHER_RUNS},
        "confirmed_with_golden_model": side is not None,
        "structure": structure.to_dict(), "run": run.to_dict(), "cases": cases,
    }
    from logitsdump.report.localize import render_page

    with claim_stamped(out, timestamp(), outputs.names) as (doc_path, cases_csv, candidates_csv, page):
        tag = doc_path.name[len(outputs.DOCUMENT[0]):-len(outputs.DOCUMENT[1])]
        for case in cases:
            if case["verdict"]["kind"] == CULPRIT:
                path = out / f"msprobe_{case['id']}_{tag}.json"
                modules = [(n, structure.by_name()[n].cls) for n in case["verdict"]["names"]]
                files.write_json(path, culprit_config(modules, case["focus_step"]))
                case["msprobe_config"] = str(path)
        outputs.write_cases_csv(cases_csv, cases)
        outputs.write_candidates_csv(candidates_csv, cases, ABOVE)
        document["timestamp"] = tag
        from logitsdump.fsutil import atomic_write_text

        atomic_write_text(page, render_page(document))
        outputs.write_document(doc_path, document)
    say(f"run: {run.label}: {run.reason}")
    say(f"results: {doc_path}\n         {cases_csv}\n         {candidates_csv}\n         {page}")
    return JudgeSummary(doc_path, cases_csv, candidates_csv, page, run, cases)


def judge_case(entry: RecordCase, replay: ReplayCase | None, structure: Structure, golden_dtype: str,
               record: files.RecordFolder, replayed: files.ReplayFolder, *, side: GoldenSide | None = None,
               healthy: files.ReplayFolder | None = None, pooled: BandSource | None = None) -> dict[str, Any]:
    """One case's verdict, causal check, head and table (the document's case entry)."""
    control = entry.controls.get(replay.control) if replay is not None and replay.control else None
    bands = _bands(entry, control, golden_dtype, healthy, pooled)
    verdict, modules, layers = case_verdict(structure, bands, replay.arm if replay else None)
    causal = None
    heads = None
    decoys: list[Causal] = []
    if verdict.kind == CULPRIT and replay is not None:
        causal, heads, decoys = _confirm(entry, replay, structure, verdict, control, record, replayed, side)
        if heads is not None:
            verdict = verdict.with_head(heads["head"])
    test = replay.arm if replay else None
    rows = []
    for scored in modules:
        row = scored.to_dict()
        row.update(_accumulated(test, scored.candidate.name))
        if control is not None and control.accumulated.get(scored.candidate.name):
            values = control.accumulated[scored.candidate.name]
            row["control_accumulated_mean"] = sum(values) / len(values)
        rows.append(row)
    return {
        "id": entry.id, "label": entry.label, "subject": entry.subject, "key": entry.key, "task": entry.task,
        "focus_step": entry.focus_step, "focus_why": entry.focus_why, "compare_verdict": entry.compare_verdict,
        "tokens": len(entry.token_ids), "prompt_tokens": entry.prompt_tokens,
        "band_source": bands.kind if bands else None,
        "verdict": verdict.to_dict(), "causal": causal.to_dict() if causal else None, "heads": heads,
        "decoys": [d.to_dict() for d in decoys],
        "kl_test": test.kl_focus if test else None, "kl_noise": control.kl_focus if control else None,
        "candidates": rows, "layers": [s.to_dict() for s in layers],
        "baselines": {"first_cosine_below": baselines.first_cosine_below(structure, test) if test else None,
                      "largest_jump": baselines.largest_jump(structure, test) if test else None},
        "seconds": dict(test.seconds) if test else {},
        "msprobe_config": None,
    }


def _bands(entry: RecordCase, control: Arm | None, golden_dtype: str, healthy: files.ReplayFolder | None,
           pooled: BandSource | None) -> BandSource | None:
    if healthy is not None:
        same = healthy.case(entry.id)
        if same is not None:
            source = control_source(same.arm, golden_dtype)
            return BandSource(HEALTHY_SAME, source.floor, arm=same.arm)
        return pooled
    return control_source(control, golden_dtype) if control is not None else None


def _pooled(healthy: files.ReplayFolder, golden_dtype: str) -> BandSource:
    arms = [c.arm for c in (healthy.case(i) for i in healthy.ids) if c is not None]
    if not arms:
        raise DataError(f"{healthy.path}: the healthy replay holds no case")
    return pooled_source(arms, golden_dtype)


def _confirm(entry: RecordCase, replay: ReplayCase, structure: Structure, verdict: CaseVerdict, control: Arm | None,
             record: files.RecordFolder, replayed: files.ReplayFolder,
             side: GoldenSide | None) -> tuple[Causal, dict[str, Any] | None, list[Causal]]:
    """The causal check of a culprit, and of the replay's decoys (wrong candidates it should refute); with the
    golden side's models, the culprit's head."""
    from logitsdump.localize import passes

    target = patch_target(structure, verdict)
    runs = {run.names[0]: run.kl for run in (replay.necessity, *replay.decoys) if run is not None and run.names}
    kl_noise = control.kl_focus if control is not None else float("nan")
    kept = replayed.tensors(replay)
    sufficiency: dict[str, Sufficiency] = {}
    removals: dict[str, tuple[float, float]] = {}
    golden_decoys: dict[str, Causal] = {}
    sufficiency_golden = None
    heads = None
    if side is not None and control is not None and f"{target}:out" in kept:
        golden_sites = rebuild(entry.refs, record.tensors(entry), entry.checksums)
        lm_head = next(c.name for c in structure.candidates if c.module == LM_HEAD)
        golden_logits = golden_sites[f"{lm_head}:out"][0, -1]
        tokens = list(entry.token_ids)
        arm_model = side.control(control.dtype, control.attn).model
        # sufficiency: single runs (a sufficiency run shares the control arm's roundoff up to the culprit, and the
        # test's too where both sides run the same kernels); necessity: the test's and the necessity runs' averaged
        # logits against the control arm's averaged alike (the same dithers, `passes.averaged_logits`)
        averaged_base, base = passes.averaged_logits(arm_model, tokens, entry.id, replay.dither_runs)
        test_logits = kept.get(TEST_LOGITS)
        averaged_test = kept.get(TEST_LOGITS_AVERAGED, test_logits)

        def aligned(name: str, change: Any) -> tuple[float | None, float | None, Any]:
            logits, _ = passes.patched(arm_model, tokens, name, change, how="add")
            cosine, share = (passes.alignment(base, test_logits, logits[-1])
                             if test_logits is not None else (None, None))
            return cosine, share, logits[-1]

        def null(name: str, change: Any) -> tuple[float, ...]:
            """The cosines of NULL_DRAWS random changes of `change`'s size at `name` (none for a zero change, or
            where the check is untestable: it is not judged there)."""
            if test_logits is None or not bool(change.abs().max() > 0) or not testable(replay.arm.kl_focus, kl_noise):
                return ()
            draws = (aligned(name, _random_like(change, f"{entry.id}/{name}/null{k}"))[0] for k in range(NULL_DRAWS))
            return tuple(float(c) for c in draws if c is not None)

        def moved(name: str, change: Any, against: tuple[float, ...] | None = None) -> Sufficiency:
            cosine, share, logits = aligned(name, change)
            return Sufficiency(passes.kl_divergence(golden_logits, logits), cosine, share,
                               null(name, change) if against is None else against)

        deviations = {name: _deviation(arm_model, tokens, structure, golden_sites, name, kept[f"{name}:out"])
                      for name in runs if f"{name}:out" in kept}
        sufficiency = {name: moved(name, change) for name, change in deviations.items()}
        if test_logits is not None:  # necessity on the same change (a replay before it kept them: on the KL)
            removals = {name: passes.removal(averaged_base, averaged_test, kept[NECESSITY_LOGITS.format(name=name)])
                        for name in runs if NECESSITY_LOGITS.format(name=name) in kept}
        if replay.decoys and target in deviations:  # the golden side's decoys: no necessity run, sufficiency only
            shapes = [n for n in deviations if n != target and deviations[n].shape == deviations[target].shape]
            # the random decoy is one more draw of the culprit's null: judged against the culprit's draws
            extra = {RANDOM_DECOY: moved(target, _random_like(deviations[target], entry.id),
                                         against=sufficiency[target].null)}
            if shapes:
                extra[f"{MOVED_DECOY} {shapes[0]}"] = moved(shapes[0], deviations[target])
            golden_decoys = {label: sufficiency_only(replay.arm.kl_focus, kl_noise, found)
                             for label, found in extra.items()}
        own_error = kept[f"{target}:out"].float() - golden_sites[f"{target}:out"].float().to("cpu")
        attention = "heads:in" in kept and verdict.layer is not None
        logits, golden_heads = passes.patched(side.golden.model, tokens, target, own_error, how="add",
                                              heads_at=verdict.layer if attention else None, structure=structure)
        sufficiency_golden = passes.kl_divergence(golden_logits, logits[-1])
        if attention and golden_heads is not None:
            heads = _split_heads(structure, verdict, kept, side.golden, golden_heads, control)
    checks = {name: causal_check(replay.arm.kl_focus, kl_noise, kl, sufficiency.get(name),
                                 sufficiency_golden if name == target else None, removal=removals.get(name))
              for name, kl in runs.items()}
    culprit = _averaged(checks.get(target) or causal_check(replay.arm.kl_focus, kl_noise, None, None), replay)
    decoys = [_averaged(dataclasses.replace(c, names=(n,), decoy=_decoy_kind(structure, target, n)), replay)
              for n, c in checks.items() if n != target]
    decoys += [dataclasses.replace(c, names=(target,), decoy=label) for label, c in golden_decoys.items()]
    return culprit, heads, decoys


def _averaged(causal: Causal, replay: ReplayCase) -> Causal:
    """A check with necessity, with the replay's count of realizations of the roundoff (said in its reason when more
    than one)."""
    if replay.dither_runs <= 1 or causal.outcome not in (CONFIRMED, REFUTED):
        return causal
    return dataclasses.replace(causal, dither_runs=replay.dither_runs, reason=(
        f"{causal.reason} (necessity on the changes averaged over {replay.dither_runs} realizations of the "
        "roundoff)"))


#: The golden side's decoys: a deviation of the culprit's size in a random direction, at the culprit; the
#: culprit's own deviation at the next layer's same module.
RANDOM_DECOY, MOVED_DECOY = "random direction", "moved to"


def _decoy_kind(structure: Structure, target: str, name: str) -> str:
    by_name = structure.by_name()
    return "next layer" if by_name[name].layer != by_name[target].layer else "next module"


def _random_like(deviation: Any, seed: str) -> Any:
    """A change of the deviation's size (per token) in a random direction, seeded by the case."""
    import torch

    from logitsdump.localize.passes import seeded_generator

    noise = torch.randn(deviation.shape, generator=seeded_generator(seed), dtype=torch.float32)
    scale = deviation.float().norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return noise * scale


def _deviation(arm_model: Any, tokens: list[int], structure: Structure, golden_sites: dict[str, Any], target: str,
               test_output: Any) -> Any:
    """The culprit's deviation from a healthy module of the test dtype: its isolated output in the test minus the
    control arm's, both fed golden's input (what the sufficiency check adds to the control arm's run; the roundoff
    both share cancels, so the control arm's run does not get its own rounding twice)."""
    from logitsdump.localize import passes

    level = "layer" if structure.by_name()[target].kind == "layer" else "module"
    device = arm_model.get_input_embeddings().weight.device
    sites = {name: tensor.to(device) for name, tensor in golden_sites.items()}
    control = passes.isolated(arm_model, tokens, structure, sites, level, keep=True).outputs[target]
    return test_output.float() - control.float().to(test_output.device)


def _split_heads(structure: Structure, verdict: CaseVerdict, kept: dict[str, Any], golden: Any, golden_heads: Any,
                 control: Arm | None) -> dict[str, Any] | None:
    from logitsdump.localize.candidates import output_projection
    from logitsdump.localize.heads import contributions, head_stats

    modules = dict(golden.model.named_modules())
    found = next((output_projection(modules[n]) for n in verdict.names if output_projection(modules[n])), None)
    if found is None or control is None or verdict.layer not in control.heads:
        return None
    test = contributions(kept["heads:in"], kept["heads:weight"], structure.heads)
    gold = contributions(golden_heads, found[1].weight, structure.heads)
    stats = head_stats(test, gold)
    band = control.heads[verdict.layer]
    head, scores, reason = judge_heads(stats.mean, stats.max, band.mean, band.max)
    return {"layer": verdict.layer, "head": head, "scores": [min(s, 1e12) for s in scores], "reason": reason,
            "local_mean": list(stats.mean), "band_mean": list(band.mean)}


def _accumulated(test: Arm | None, name: str) -> dict[str, Any]:
    if test is None or not test.accumulated.get(name):
        return {}
    values = test.accumulated[name]
    return {"accumulated_mean": sum(values) / len(values), "accumulated_max": max(values),
            "accumulated_cosine": test.cosine.get(name)}
