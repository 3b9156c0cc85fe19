"""Does `logitsdump localize` name the planted layer and module? SmolLM2-135M, rates and costs side by side.

    nice -n 10 python bench/localize.py --phase tune   [--workdir DIR]   # the tuning runs (constants chosen here)
    nice -n 10 python bench/localize.py --phase report [--workdir DIR]   # held-out defects and prompts

Golden is SmolLM2-135M-Instruct in fp32 (`logitsdump.demo.smollm2`, through its chat template), its tokens
dumped by `logitsdump dump` (8 tokens a case, gsm8k, boolq, mmlu_zero_shot); each case is localised at its last
dumped step. Three processes, only folders between them, as on two machines:
  1. golden: `logitsdump localize record --test-dtype bf16,fp32` (two control arms: bf16 with golden's sdpa
     attention, fp32 with eager attention), once per task and phase, reused by every condition;
  2. test (`--side test`): one process loads the model under test once and replays every condition, a
     defect planted in memory per case (`defects.plant`) at a layer (head, projection) drawn at random
     across the depth (seeded by --seed, the condition and the case);
  3. golden (`--side judge`): `localize judge` with the golden model and the control arms' (sufficiency check,
     heads). The replay runs with decoys (`ReplayOptions.decoys`): the causal check is also run on wrong
     candidates beside each culprit, and the table says how often it refutes them (`causal_<phase>.csv`: the
     figures of every testable check, culprit or decoy).
Tuning: gsm8k cases 0-7, the healthy pairs, scale-layer x1.1, zero-head and RoPE base 3e4 (the verdict constants
of `localize.verdict` were chosen on these at seed 0), and every local family of the report but the fresh ones (the
causal check's sufficiency null was chosen on them at seeds 0-2, with `bench/localize_sufficiency.py`). Report: the
other 53 cases (gsm8k 8-21, boolq, mmlu), ten local defect families (two of them, FRESH, in no tuning run), two
global ones and the two healthy pairs; docs/localize.md's table is `--seed 7`, pooled with `--seed 8` (necessity on
the logits' change averaged over realizations of the roundoff, sufficiency against its null; the KL rule of
necessity printed beside). The isolated passes' cost is also measured side by side on the healthy model
(`measure_cost`). Baselines on the same runs (the test's plain pass): first module with cosine < 0.99 (msprobe,
tt-metal), the largest accumulated jump, and a threshold on the accumulated error calibrated on the tuning runs'
healthy pair of the same dtype (2x its largest value per module).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from logitsdump.demo import examples
from logitsdump.demo.defects import NORMS, PROJECTIONS, Defect, write_model_yaml

TASKS = ("gsm8k", "boolq", "mmlu_zero_shot")
TOKENS = 8
#: The tuning cases: the first keys of gsm8k; every other case is held out.
TUNE_KEYS = {"gsm8k": range(0, 8)}
LAYERS, HEADS = 30, 9

HEALTHY_BF16 = "healthy: bf16, eager attention (control arm: bf16 sdpa)"
HEALTHY_FP32 = "healthy: fp32, split-K matmuls (control arm: fp32 eager)"


def _layer(rng: random.Random) -> int:
    return rng.randrange(LAYERS)


#: name -> (draw a defect for one case, or None for a healthy pair; test dtype). Report families first.
REPORT: dict[str, tuple[Callable[[random.Random], Defect | None], str]] = {
    HEALTHY_BF16: (lambda rng: None, "bf16"),
    HEALTHY_FP32: (lambda rng: None, "fp32"),
    "drop one head": (lambda rng: Defect("zero-head", layer=_layer(rng), head=rng.randrange(HEADS)), "bf16"),
    "o_proj x 1.05": (lambda rng: Defect("scale-o-proj", layer=_layer(rng), factor=1.05), "bf16"),
    "MLP down_proj x 1.05": (lambda rng: Defect("scale-mlp", layer=_layer(rng), factor=1.05), "bf16"),
    "input norm in fp16 (overflow)": (lambda rng: Defect("fp16-norm", layer=_layer(rng)), "bf16"),
    "post-attention norm eps 1e-5 -> 1": (lambda rng: Defect("norm-eps", layer=_layer(rng), value=1.0,
                                                              module="post_attention_layernorm"), "bf16"),
    "one projection at 3 mantissa bits": (lambda rng: Defect("round-weights", layer=_layer(rng),
                                                              module=rng.choice(PROJECTIONS), bits=3), "bf16"),
    # first run in the final report (never tuned on, never run before it):
    "query projection x 1.1 (softmax temperature)": (lambda rng: Defect("scale-q", layer=_layer(rng), factor=1.1),
                                                     "bf16"),
    "a norm's gain x 1.05": (lambda rng: Defect("scale-norm", layer=_layer(rng), module=rng.choice(NORMS),
                                                factor=1.05), "bf16"),
    # fresh: never run before the final report, in no phase
    "v_proj x 1.1": (lambda rng: Defect("scale-weight", layer=_layer(rng), module="self_attn.v_proj", factor=1.1),
                     "bf16"),
    "MLP up_proj x 1.05": (lambda rng: Defect("scale-weight", layer=_layer(rng), module="mlp.up_proj", factor=1.05),
                           "bf16"),
    "global: RoPE base 1e5 -> 1e4": (lambda rng: Defect("rope-base", value=1e4), "bf16"),
    "global: every RMSNorm eps 1e-5 -> 1": (lambda rng: Defect("rms-eps", value=1.0), "bf16"),
}
#: The report's families no tuning run has: the judge's lines and constants never saw them.
FRESH = ("v_proj x 1.1", "MLP up_proj x 1.05")
TUNE: dict[str, tuple[Callable[[random.Random], Defect | None], str]] = {
    HEALTHY_BF16: REPORT[HEALTHY_BF16],
    HEALTHY_FP32: REPORT[HEALTHY_FP32],
    "tune: scale-layer x 1.1": (lambda rng: Defect("scale-layer", layer=_layer(rng), factor=1.1), "bf16"),
    "tune: drop one head": REPORT["drop one head"],
    "tune: global: RoPE base 1e5 -> 3e4": (lambda rng: Defect("rope-base", value=3e4), "bf16"),
    # every local family of the report from the first on, on the tuning prompts (the causal check's lines were
    # chosen on them); the fresh families below never are
    **{name: REPORT[name] for name in REPORT if not name.startswith(("healthy", "global", "drop one head"))
       and name not in FRESH},
}


def say(message: str) -> None:
    print(message, flush=True)


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()[:48]


def env() -> dict[str, str]:
    out = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    out["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), out.get("PATH", "")])
    return out


def run(argv: list[str], log: Path) -> float:
    """A subprocess, its output to `log`; its wall seconds (exit on failure, with the log's tail)."""
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        status = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=env(), check=False).returncode
    if status != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-4:]
        raise SystemExit(f"failed (status {status}), see {log}: {' | '.join(tail)}")
    return time.monotonic() - started


# ---- the golden side: dumps and records -----------------------------------------------------


def task_yaml(task: str, folder: Path) -> Path:
    import yaml

    from logitsdump.runner.config import load_task_config, resolve_dataset_root

    shipped = examples.task_config(task)
    data = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    data["local_dataset_path"] = str(resolve_dataset_root(load_task_config(shipped)).resolve())
    data["requested_max_output_length"] = TOKENS
    path = folder / f"{task}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def all_keys(task_yaml_path: Path) -> list[str]:
    from logitsdump.runner.config import load_task_config, resolve_dataset_root
    from logitsdump.runner.tasks import get_task

    config = load_task_config(task_yaml_path)
    return [c.key for c in get_task(config.task_name).load_cases(config, resolve_dataset_root(config))]


def phase_keys(task: str, keys: list[str], phase: str) -> list[str]:
    tune = {str(k) for k in TUNE_KEYS.get(task, ())}
    return [k for k in keys if (k in tune) == (phase == "tune")]


def golden_side(work: Path, phase: str, golden_yaml: Path) -> dict[str, Path]:
    """Dump golden's tokens (every case of each task) and record this phase's cases; task -> record folder."""
    records = {}
    for task in TASKS:
        yaml_path = task_yaml(task, work)
        keys = all_keys(yaml_path)
        chosen = phase_keys(task, keys, phase)
        if not chosen:
            continue
        dump = work / "dump" / task
        done = dump / "bench-done"
        if not done.is_file():
            table = work / f"keys_{task}.csv"
            table.write_text("key\n" + "".join(f"{k}\n" for k in keys), encoding="utf-8")
            runner = (f"logitsdump eval --model_config_path {golden_yaml} --task_config_path {yaml_path} "
                      "--batch_size 1 --tp 1 --device cpu --output_dir " + str(dump))
            seconds = run([sys.executable, "-m", "logitsdump", "dump", "-bcr", str(table), "-tr", str(TOKENS),
                           "-e", runner], work / "logs" / f"dump_{task}.log")
            folder = next(dump.rglob("manifest.jsonl")).parent
            done.write_text(str(folder), encoding="utf-8")
            say(f"  golden dump {task}: {len(keys)} cases ({seconds:.0f} s)")
        folder = Path(done.read_text(encoding="utf-8"))
        record = work / "record" / phase / task
        if not (record / "localize_record.json").is_file():
            seconds = run([sys.executable, "-m", "logitsdump", "localize", "record", "--golden-dump", str(folder),
                           "--keys", ",".join(chosen), "--model_config_path", str(golden_yaml),
                           "--test-dtype", "bf16,fp32", "--device", "cpu", "-o", str(record)],
                          work / "logs" / f"record_{phase}_{task}.log")
            (record / "bench-seconds").write_text(f"{seconds}", encoding="utf-8")
            say(f"  golden record {phase} {task}: {len(chosen)} cases ({seconds:.0f} s)")
        records[task] = record
    return records


# ---- the test side (a process of its own) ---------------------------------------------------


def split_k(model) -> None:
    """Every Linear computed as two half-length dot products added (a split-K GEMM, as GPU kernels do):
    another healthy implementation, with another rounding."""
    import types

    import torch

    def forward(self, x):
        half = self.in_features // 2
        out = torch.nn.functional.linear(x[..., :half], self.weight[:, :half])
        out = out + torch.nn.functional.linear(x[..., half:], self.weight[:, half:])
        return out + self.bias if self.bias is not None else out

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = types.MethodType(forward, module)


def test_side(work: Path, phase: str, seed: int) -> None:
    import torch

    from logitsdump.demo.defects import plant
    from logitsdump.localize import models
    from logitsdump.localize.run_replay import ReplayOptions, replay

    torch.set_num_threads(1)
    conditions = TUNE if phase == "tune" else REPORT
    yamls = {dtype: work / f"test_{dtype}.yaml" for dtype in ("bf16", "fp32")}
    loaded = {}
    for name, (draw, dtype) in conditions.items():
        if name == HEALTHY_FP32:  # a model of its own, its Linears split
            backend = models.load(str(yamls["fp32"]), device="cpu")
            split_k(backend.model)
        else:
            if dtype not in loaded:
                loaded[dtype] = models.load(str(yamls[dtype]), device="cpu")
            backend = loaded[dtype]
        for task, record in sorted(records_of(work, phase).items()):
            out = work / "replay" / phase / slug(name) / task
            if (out / "localize_replay.json").is_file():
                continue
            planted: dict[str, dict | None] = {}

            def prepare(entry, name=name, draw=draw, backend=backend, planted=planted):
                rng = random.Random(f"{seed}/{name}/{entry.subject}/{entry.key}")
                defect = draw(rng)
                planted[entry.id] = asdict(defect) if defect is not None else None
                if name == HEALTHY_BF16:
                    models.set_attention(backend.model, "eager")
                    return lambda: models.set_attention(backend.model, "sdpa")
                return plant(backend.model, defect) if defect is not None else (lambda: None)

            started = time.monotonic()
            replay(ReplayOptions(str(record), str(yamls[dtype]), str(out), device="cpu", decoys=True),
                   say=lambda _m: None, model=backend, prepare=prepare)
            (out / "planted.json").write_text(json.dumps(planted), encoding="utf-8")
            say(f"  test {name} {task}: {len(planted)} cases ({time.monotonic() - started:.0f} s)")
    measure_cost(work, phase, loaded["bf16"])


#: The cost measurement: each case's plain prefill and isolated passes run alternately this many times.
COST_REPEATS = 5


def measure_cost(work: Path, phase: str, backend) -> None:
    """The isolated passes' cost over a plain prefill, side by side: per case of the phase (the healthy model),
    a plain prefill, the layer-level and the module-level isolated pass (outputs kept, as the replay does) run in
    turn COST_REPEATS times; the case's ratio is the median of its rounds' ratios, so a pause of the machine during
    one pass does not decide it (the replay's own single timings, measured once each, are reported beside it)."""
    from logitsdump.localize import passes
    from logitsdump.localize.candidates import Structure
    from logitsdump.localize.compact import rebuild
    from logitsdump.localize.files import RecordFolder

    path = work / f"cost_{phase}.json"
    if path.is_file():
        return
    found = []
    for record_dir in records_of(work, phase).values():
        record = RecordFolder(record_dir)
        structure = Structure.from_dict(record.header["structure"])
        for case_id in record.ids:
            entry = record.case(case_id)
            golden = rebuild(entry.refs, record.tensors(entry), entry.checksums)
            tokens = list(entry.token_ids)
            passes.timed_prefill(backend.model, tokens)  # warm
            rounds = []
            for _ in range(COST_REPEATS):
                _, prefill = passes.timed_prefill(backend.model, tokens)
                layer = passes.isolated(backend.model, tokens, structure, golden, "layer", keep=True).seconds
                module = passes.isolated(backend.model, tokens, structure, golden, "module", keep=True).seconds
                rounds.append((layer / prefill, module / prefill, prefill))
            found.append({"case": f"{record_dir.name}/{case_id}", "tokens": len(tokens),
                          "layer": statistics.median(r[0] for r in rounds),
                          "module": statistics.median(r[1] for r in rounds),
                          "prefill_seconds": statistics.median(r[2] for r in rounds)})
    path.write_text(json.dumps(found, indent=1), encoding="utf-8")


def records_of(work: Path, phase: str) -> dict[str, Path]:
    base = work / "record" / phase
    return {p.name: p for p in sorted(base.iterdir())} if base.is_dir() else {}


# ---- the golden side again: judge -----------------------------------------------------------


def judge_side(work: Path, phase: str) -> None:
    import torch

    from logitsdump.localize.run_judge import GoldenSide, JudgeOptions, judge

    torch.set_num_threads(1)
    side = GoldenSide(str(work / "golden.yaml"), device="cpu")
    for replay_dir in sorted((work / "replay" / phase).glob("*/*")):
        out = work / "judge" / phase / replay_dir.parent.name / replay_dir.name
        if out.is_dir() and any(out.glob("localize_cases_*.json")):
            continue
        started = time.monotonic()
        judge(JudgeOptions(str(work / "record" / phase / replay_dir.name), str(replay_dir), str(out)),
              say=lambda _m: None, side=side)
        (out / "bench-seconds").write_text(f"{time.monotonic() - started}", encoding="utf-8")


# ---- analysis (no torch) --------------------------------------------------------------------


def load_results(work: Path, phase: str) -> list[dict]:
    """One row per judged case: the condition, the planted defect, the verdict, the scores, the baselines."""
    from logitsdump.localize.outputs import read_document

    rows = []
    names = {slug(n): n for n in (TUNE if phase == "tune" else REPORT)}
    for folder in sorted((work / "judge" / phase).glob("*/*")):
        name = names.get(folder.parent.name)
        if name is None:
            continue
        document = read_document(folder)
        replay_dir = work / "replay" / phase / folder.parent.name / folder.name
        planted = json.loads((replay_dir / "planted.json").read_text(encoding="utf-8"))
        judge_seconds = float((folder / "bench-seconds").read_text()) / max(1, len(document["cases"]))
        for case in document["cases"]:
            rows.append({"condition": name, "task": folder.name, "case": case, "defect": planted.get(case["id"]),
                         "replay": json.loads((replay_dir / f"case_{case['id']}.json").read_text(encoding="utf-8")),
                         "judge_seconds": judge_seconds})
    return rows


def planted_site(defect: dict | None) -> tuple[int | None, str | None]:
    if defect is None:
        return None, None
    return Defect(**defect).site


def own_score(case: dict, layer: int | None, module: str | None) -> float | None:
    """The planted module's own score (several modules: the largest)."""
    if layer is None or module is None:
        return None
    parts = set(module.split("+"))
    scores = [r["score"] or 0.0 for r in case["candidates"] if r["layer"] == layer and r["module"] in parts]
    return max(scores) if scores else None


def same_module(found: str | None, planted: str) -> bool:
    return found is not None and sorted(found.split("+")) == sorted(planted.split("+"))


def baseline_hit(label: str | None, layer: int, module: str) -> tuple[bool, bool]:
    if label is None:
        return False, False
    exact = any(label == f"L{layer}.{part}" for part in module.split("+"))
    return exact, label.startswith(f"L{layer}.")


def calibrated(rows: list[dict], work: Path) -> dict[str, dict[str, float]]:
    """dtype -> module name -> threshold, from the tuning runs' healthy pairs (2x their largest value)."""
    from logitsdump.localize.baselines import calibrate_thresholds
    from logitsdump.localize.candidates import Structure
    from logitsdump.localize.records import Arm

    out = {}
    tune = load_results(work, "tune") if (work / "judge" / "tune").is_dir() else []
    for name, dtype in ((HEALTHY_BF16, "bf16"), (HEALTHY_FP32, "fp32")):
        arms = [Arm.from_dict(r["replay"]["arm"]) for r in tune if r["condition"] == name]
        if arms:
            structure = Structure.from_dict(json.loads((work / "record" / "tune" / "gsm8k" /
                                                        "localize_record.json").read_text())["structure"])
            out[dtype] = calibrate_thresholds(structure, arms)
    return out


def summarize(work: Path, phase: str) -> dict:
    from logitsdump.localize.baselines import first_above_threshold
    from logitsdump.localize.candidates import Structure
    from logitsdump.localize.records import Arm
    from logitsdump.localize.verdict import ABOVE, CONFIRMED, CULPRIT, DIFFUSE, MOST, UNTESTABLE

    rows = load_results(work, phase)
    thresholds = calibrated(rows, work)
    structure = None
    table = {}
    by_excess: dict[str, list[int]] = {"3-10x": [0, 0], ">= 10x": [0, 0]}
    halves = {"checked": 0, "necessity holds": 0, "sufficiency holds": 0, "necessity on the KL": 0,
              "confirmed, necessity on the KL": 0}
    decoys: dict[str, Any] = {}
    causal_rows: list[dict] = []
    healthy_scores = {"pairs": 0, "above": 0, "max": 0.0, "layer_max": 0.0}
    for name, (_draw, dtype) in (TUNE if phase == "tune" else REPORT).items():
        mine = [r for r in rows if r["condition"] == name]
        if not mine:
            continue
        if structure is None:
            header = json.loads((work / "record" / phase / mine[0]["task"] / "localize_record.json").read_text())
            structure = Structure.from_dict(header["structure"])
        stats = {"cases": len(mine), "dtype": dtype, "verdicts": {}, "eligible": 0, "exact_eligible": 0,
                 "layer_eligible": 0, "exact_all": 0, "layer_all": 0, "scores": [], "causal_testable": 0,
                 "causal_confirmed": 0, "causal_untestable": 0, "diffuse": 0, "no_culprit": 0,
                 "baselines": {b: {"exact": 0, "layer": 0, "names_any": 0} for b in ("cosine", "jump", "calibrated")},
                 "heads_right": 0, "heads_asked": 0, "detected_scores": [], "missed_scores": [],
                 "seconds_case": [], "module_ratio": [], "layer_ratio": [], "judge_seconds": []}
        for row in mine:
            case, verdict = row["case"], row["case"]["verdict"]
            stats["verdicts"][verdict["kind"]] = stats["verdicts"].get(verdict["kind"], 0) + 1
            arm = Arm.from_dict(row["replay"]["arm"])
            seconds = arm.seconds
            stats["seconds_case"].append(seconds.get("case", 0.0))
            stats["judge_seconds"].append(row["judge_seconds"])
            if seconds.get("prefill"):
                stats["module_ratio"].append(seconds["module"] / seconds["prefill"])
                stats["layer_ratio"].append(seconds["layer"] / seconds["prefill"])
            labels = {"cosine": case["baselines"]["first_cosine_below"], "jump": case["baselines"]["largest_jump"],
                      "calibrated": first_above_threshold(structure, arm, thresholds.get(dtype, {}))
                      if thresholds.get(dtype) else None}
            for key, label in labels.items():
                stats["baselines"][key]["names_any"] += label is not None
            if verdict["kind"] != CULPRIT:
                stats["no_culprit"] += 1
            if verdict["kind"] == DIFFUSE:
                stats["diffuse"] += 1
            if name.startswith("healthy"):
                scores = [r["score"] or 0.0 for r in case["candidates"]]
                healthy_scores["pairs"] += len(scores)
                healthy_scores["above"] += sum(x > ABOVE for x in scores)
                healthy_scores["max"] = max(healthy_scores["max"], *scores)
                healthy_scores["layer_max"] = max(healthy_scores["layer_max"],
                                                  *[r["score"] or 0.0 for r in case["layers"]])
            causal = case.get("causal")
            if verdict["kind"] == CULPRIT and causal and causal["outcome"] in (CONFIRMED, "refuted"):
                key = "3-10x" if causal["kl_test"] < 10 * causal["kl_noise"] else ">= 10x"
                by_excess[key][0] += causal["outcome"] == CONFIRMED
                by_excess[key][1] += 1
                halves["checked"] += 1
                halves["necessity holds"] += bool(causal.get("necessity_holds"))
                halves["sufficiency holds"] += bool(causal.get("sufficiency_holds"))
                kl_rule = (causal.get("necessity_recovered") or 0.0) >= MOST
                halves["necessity on the KL"] += kl_rule
                halves["confirmed, necessity on the KL"] += kl_rule and bool(causal.get("sufficiency_holds"))
            if verdict["kind"] == CULPRIT and causal and causal["outcome"] in (CONFIRMED, "refuted"):
                causal_rows.append(causal_row(name, "culprit", causal))
                for decoy in case.get("decoys") or []:
                    if decoy["outcome"] in (CONFIRMED, "refuted"):
                        kind = (decoy.get("decoy") or "?").split(" model.")[0]
                        causal_rows.append(causal_row(name, f"decoy: {kind}", decoy))
                        counts = decoys.setdefault(kind, {"refuted": 0, "checked": 0, "necessity refutes": 0,
                                                          "sufficiency refutes": 0, "3-10x": [0, 0], ">= 10x": [0, 0]})
                        key = "3-10x" if decoy["kl_test"] < 10 * decoy["kl_noise"] else ">= 10x"
                        counts["refuted"] += decoy["outcome"] != CONFIRMED
                        counts["checked"] += 1
                        counts[key][0] += decoy["outcome"] != CONFIRMED
                        counts[key][1] += 1
                        counts["necessity refutes"] += decoy.get("necessity_holds") is False
                        counts["sufficiency refutes"] += not decoy.get("sufficiency_holds")
            if verdict["kind"] == CULPRIT and causal:
                if causal["outcome"] == UNTESTABLE:
                    stats["causal_untestable"] += 1
                elif causal["outcome"] in (CONFIRMED, "refuted"):
                    stats["causal_testable"] += 1
                    stats["causal_confirmed"] += causal["outcome"] == CONFIRMED
            layer, module = planted_site(row["defect"])
            if layer is None or module is None:
                continue
            score = own_score(case, layer, module)
            exact = verdict["kind"] == CULPRIT and verdict.get("layer") == layer and same_module(verdict.get("module"),
                                                                                                module)
            at_layer = verdict["kind"] == CULPRIT and verdict.get("layer") == layer
            stats["exact_all"] += exact
            stats["layer_all"] += at_layer
            stats["scores"].append(score)
            (stats["detected_scores"] if exact else stats["missed_scores"]).append(score or 0.0)
            if score is not None and score >= 3.0:
                stats["eligible"] += 1
                stats["exact_eligible"] += exact
                stats["layer_eligible"] += at_layer
            if row["defect"]["kind"] == "zero-head" and exact:
                stats["heads_asked"] += 1
                stats["heads_right"] += verdict.get("head") == row["defect"]["head"]
            for key, label in labels.items():
                hit_exact, hit_layer = baseline_hit(label, layer, module)
                stats["baselines"][key]["exact"] += hit_exact
                stats["baselines"][key]["layer"] += hit_layer
        table[name] = stats
    record_bytes = tokens = 0
    record_seconds = cases = 0.0
    for record in records_of(work, phase).values():
        header = json.loads((record / "localize_record.json").read_text())
        record_bytes += header["bytes"]
        tokens += header["tokens"]
        cases += len(header["cases"])
        record_seconds += float((record / "bench-seconds").read_text()) if (record / "bench-seconds").is_file() else 0
    layers = structure.layers if structure else LAYERS
    cost_path = work / f"cost_{phase}.json"
    cost = json.loads(cost_path.read_text(encoding="utf-8")) if cost_path.is_file() else []
    return {"cost": cost, "calibrated": sorted(thresholds), "phase": phase, "conditions": table, "above": ABOVE,
            "causal_by_excess": by_excess, "causal_halves": halves, "most": MOST,
            "decoys": decoys, "causal_rows": causal_rows,
            "healthy_scores": healthy_scores,
            "bytes_per_token_layer": record_bytes / max(1, tokens * layers), "record_seconds_per_case":
            record_seconds / max(1, cases), "record_cases": cases, "record_mb": record_bytes / 1e6}


def causal_row(condition: str, role: str, causal: dict) -> dict:
    """One causal check's figures (the bench's causal CSV)."""
    keys = ("outcome", "kl_test", "kl_noise", "necessity_recovered", "necessity_share", "necessity_cosine",
            "necessity_rule", "sufficiency_reproduced", "sufficiency_cosine", "sufficiency_share",
            "sufficiency_null_max", "necessity_holds", "sufficiency_holds")
    return {"condition": condition, "role": role, **{k: causal.get(k) for k in keys}}


def pct(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "-"


def print_table(summary: dict) -> None:
    conditions = summary["conditions"]
    say("")
    say(f"SmolLM2-135M-Instruct, fp32 golden; phase {summary['phase']}; above band: > {summary['above']:g}x; "
        "'own >= 3x': the planted module's own error is at least 3x its band")
    say("")
    say("| condition | cases | verdicts | exact (layer, module), own >= 3x | layer, own >= 3x | no culprit | diffuse "
        "| causal check confirms (testable) | head right |")
    say("|---|---|---|---|---|---|---|---|---|")
    for name, c in conditions.items():
        local = not name.startswith("healthy") and "global" not in name
        shown = ", ".join(f"{n} {k}" for k, n in sorted(c["verdicts"].items()))
        untestable = f" + {c['causal_untestable']} untestable" if c["causal_untestable"] else ""
        say(f"| {name} | {c['cases']} | {shown} | {pct(c['exact_eligible'], c['eligible']) if local else '-'} "
            f"| {pct(c['layer_eligible'], c['eligible']) if local else '-'} | {pct(c['no_culprit'], c['cases'])} "
            f"| {pct(c['diffuse'], c['cases'])} | {pct(c['causal_confirmed'], c['causal_testable'])}{untestable} "
            f"| {pct(c['heads_right'], c['heads_asked']) if c['heads_asked'] else '-'} |")
    say("")
    say("baselines on the same runs: names the planted (layer, module) / names anything")
    say("")
    say("| condition | localize | first cosine < 0.99 | largest accumulated jump | calibrated accumulated threshold |")
    say("|---|---|---|---|---|")
    for name, c in conditions.items():
        local = not name.startswith("healthy") and "global" not in name
        n, culprits, b = c["cases"], c["verdicts"].get("culprit", 0), c["baselines"]
        first = f"{pct(c['exact_all'], n) if local else '-'} / {pct(culprits, n)}"
        rest = [f"{pct(b[k]['exact'], n) if local else '-'} / {pct(b[k]['names_any'], n)}"
                if k != "calibrated" or c["dtype"] in summary["calibrated"] else "- (no tuning run in this folder)"
                for k in ("cosine", "jump", "calibrated")]
        say(f"| {name} | {first} | " + " | ".join(rest) + " |")
    say("")
    for name, c in conditions.items():
        if name.startswith("healthy") or "global" in name or not c["scores"]:
            continue
        detected = sorted(x for x in c["detected_scores"] if x)
        below = sum(1 for x in c["scores"] if x is None or x < 3.0)
        say(f"resolution, {name}: smallest own score found {detected[0]:.3g}x; {below} of {c['cases']} cases under 3x "
            f"(of them found: {sum(1 for x in c['detected_scores'] if x and x < 3.0)})" if detected else
            f"resolution, {name}: none found")
    testable = sum(c["causal_testable"] for c in conditions.values())
    confirmed = sum(c["causal_confirmed"] for c in conditions.values())
    say(f"causal check, all culprits: {pct(confirmed, testable)} of the testable confirm; by the test's final KL over "
        f"the noise: {', '.join(f'{k}: {pct(*v)}' for k, v in summary['causal_by_excess'].items())}")
    h = summary["causal_halves"]
    say(f"causal check, each half on the culprits: necessity holds {pct(h['necessity holds'], h['checked'])} (on the "
        f"change of the logits it removes), sufficiency {pct(h['sufficiency holds'], h['checked'])}; for comparison, "
        f"necessity on the KL (>= {summary['most']:g} of the excess recovered) "
        f"{pct(h['necessity on the KL'], h['checked'])}, "
        f"the check with it {pct(h['confirmed, necessity on the KL'], h['checked'])}")
    for kind, d in summary["decoys"].items():
        halves = (f"; necessity refutes {d['necessity refutes']}, sufficiency {d['sufficiency refutes']}"
                  if kind in ("next layer", "next module") else " (sufficiency only)")
        say(f"causal check on decoys, {kind}: refuted {pct(d['refuted'], d['checked'])}; 3-10x: {pct(*d['3-10x'])}, "
            f">= 10x: {pct(*d['>= 10x'])}{halves}")
    healthy = summary["healthy_scores"]
    say(f"healthy pairs: {healthy['pairs']} (case, module) scores, {healthy['above']} above {summary['above']:g}, the "
        f"largest {healthy['max']:.3g}; whole layers: the largest {healthy['layer_max']:.3g}")
    ratios = sorted(r for c in conditions.values() for r in c["module_ratio"])
    layer_ratios = sorted(r for c in conditions.values() for r in c["layer_ratio"])
    seconds = [x for c in conditions.values() for x in c["seconds_case"]]
    judged = [max(c["judge_seconds"]) for c in conditions.values() if c["judge_seconds"]]
    if ratios:
        say(f"cost: isolated module-level pass / plain prefill, per case in the same process: median "
            f"{statistics.median(ratios):.2f}, p90 {ratios[int(0.9 * len(ratios))]:.2f}, max {ratios[-1]:.2f} "
            f"({len(ratios)} cases); layer-level pass: median {statistics.median(layer_ratios):.2f}, p90 "
            f"{layer_ratios[int(0.9 * len(layer_ratios))]:.2f}")
        say(f"cost: test side {statistics.median(seconds):.1f} s per case (median; max {max(seconds):.1f} s: five "
            f"passes and the necessity run); golden record {summary['record_seconds_per_case']:.1f} s per case "
            f"(process start and model loads included); judge with the golden side's models at most "
            f"{max(judged):.2f} s per case")
    if summary["cost"]:
        side_by_side = sorted(c["module"] for c in summary["cost"])
        layer_side = sorted(c["layer"] for c in summary["cost"])
        say(f"cost, side by side (each case's median of {COST_REPEATS} alternating rounds, healthy model, "
            f"{len(side_by_side)} cases): module-level pass / plain prefill median "
            f"{statistics.median(side_by_side):.2f}, p90 {side_by_side[int(0.9 * len(side_by_side))]:.2f}, max "
            f"{side_by_side[-1]:.2f}; layer-level median {statistics.median(layer_side):.2f}, p90 "
            f"{layer_side[int(0.9 * len(layer_side))]:.2f}, max {layer_side[-1]:.2f}")
    say(f"cost: stats-mode record {summary['record_mb']:.0f} MB for {summary['record_cases']:.0f} cases, "
        f"{summary['bytes_per_token_layer'] / 1000:.2f} KB per token per layer (hidden 576, fp32)")


def write_csv(summary: dict, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["condition", "cases", "eligible", "exact_eligible", "layer_eligible", "exact_all",
                         "no_culprit", "diffuse", "causal_testable", "causal_confirmed"])
        for name, s in summary["conditions"].items():
            writer.writerow([name, s["cases"], s["eligible"], s["exact_eligible"], s["layer_eligible"],
                             s["exact_all"], s["no_culprit"], s["diffuse"], s["causal_testable"],
                             s["causal_confirmed"]])


def write_causal_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["condition"])
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("tune", "report"), default="report")
    parser.add_argument("--workdir", default=None, help="keep everything here and reuse it (default: a new folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", choices=("test", "judge"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.workdir) if args.workdir else Path(f"localize_bench_{time.strftime('%Y%m%d%H%M%S')}")
    if args.side == "test":
        return test_side(work, args.phase, args.seed)
    if args.side == "judge":
        return judge_side(work, args.phase)
    from logitsdump.demo import smollm2

    started = time.monotonic()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    model = smollm2.build_model()
    chat = {"use_chat_template": True}
    golden_yaml = write_model_yaml(work / "golden.yaml", model, smollm2.MODEL_NAME, "fp32", **chat)
    for dtype in ("bf16", "fp32"):
        write_model_yaml(work / f"test_{dtype}.yaml", model, smollm2.MODEL_NAME, dtype, **chat)
    say(f"work folder {work}; phase {args.phase}; seed {args.seed}")
    golden_side(work, args.phase, golden_yaml)
    me = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(work), "--phase", args.phase,
          "--seed", str(args.seed)]
    say(f"  test side: {run([*me, '--side', 'test'], work / 'logs' / f'test_{args.phase}.log'):.0f} s")
    say(f"  judge: {run([*me, '--side', 'judge'], work / 'logs' / f'judge_{args.phase}.log'):.0f} s")
    summary = summarize(work, args.phase)
    (work / f"summary_{args.phase}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    write_csv(summary, work / f"summary_{args.phase}.csv")
    write_causal_csv(summary["causal_rows"], work / f"causal_{args.phase}.csv")
    print_table(summary)
    say(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
