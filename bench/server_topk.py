"""Do verdicts from a server's top-k logprobs agree with the in-process full-vocabulary verdicts? Side by side.

    .venv-vllm/bin/python bench/server_topk.py [--model smollm2|tiny] [--cases N] [--tokens 16] [--workdir DIR]

Run it with the Python that has vLLM (scripts/smoke_vllm.sh sets up `.venv-vllm`): it runs the in-process
vLLM backend and `vllm serve` (tools/vllm_server.py) on the same model folders.
1. golden: HF transformers in fp32, free-running (`logitsdump dump -e "logitsdump eval ..."`), on every case
   of gsm8k and mmlu_zero_shot (SmolLM2 through its chat template), N tokens each; every third case is held
   out for the floor and never judged (bench/planted_bug.py's split);
2. the floor: `logitsdump calibrate` on the held-out cases, golden against the healthy model in bf16 through
   the in-process vLLM backend, replayed in prefill mode (`prompt_logprobs=-1`: the whole vocabulary);
3. each condition (bf16 noise, planted defects: demo/defects.py) in bf16, replaying golden's tokens:
   - full: the in-process vLLM backend (`--backend vllm --replay-mode prefill`: one prefill pass, the whole
     vocabulary's raw logits), compared with the floor: the reference verdicts;
   - top-20 and top-5: the same model folder behind `vllm serve --dtype bfloat16 --max-logprobs 20`, through
     the server backend (`--backend server`, teacher forcing by `prompt_logprobs`), compared with the same
     floor on top-k evidence (compare/topk.py);
   and the agreement of each top-k verdict with the full verdict of the same case. Both score golden's
   tokens by one prefill pass of the same engine, so what differs is what top-k evidence can show (a
   step-mode reference would add the decode-vs-prefill difference: near-tie argmax changes that move).
4. the KL lower bound's gap: on the in-process full dumps, each step's full KL against the lower bound the
   top-k rule sees when the test side keeps only its top k (the bound alone, no engine difference), and
   against the server's own top-k bound (the bound plus whatever differs between `vllm serve` and `vllm.LLM`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from planted_bug import _slug, _split_keys, _task_yaml
from vllm_server import vllm_server

from logitsdump.demo.defects import Defect, write_defective_model, write_model_yaml

PASSING = ("identical", "consistent", "noise", "tie-flip")
CONDITIONS: dict[str, Defect | None] = {
    "bf16 noise": None,
    "drop head 0 of layer 15": Defect("zero-head", layer=15, head=0),
    "o_proj of layer 15 x 1.1": Defect("scale-o-proj", layer=15, factor=1.1),
    "o_proj of layer 15 x 1.5": Defect("scale-o-proj", layer=15, factor=1.5),
}
TINY_CONDITIONS: dict[str, Defect | None] = {
    "bf16 noise": None,
    "zero head 0 of layer 0": Defect("zero-head", layer=0, head=0),
    "scale layer 1 x 1.25": Defect("scale-layer", layer=1, factor=1.25),
}
TASKS = ("gsm8k", "mmlu_zero_shot")
KS = (20, 5)


def say(message: str) -> None:
    print(message, flush=True)


def dump(model_yaml: Path, task_yaml: Path, keys: Path, out: Path, tokens: int, log: Path, *, backend: str | None,
         replay: Path | None = None, replay_mode: str = "step", env: dict[str, str] | None = None
         ) -> tuple[Path, float]:
    """One `logitsdump dump` subprocess; (its logits folder, wall seconds)."""
    runner = (f"logitsdump eval --model_config_path {model_yaml} --task_config_path {task_yaml} --batch_size 1 "
              f"--output_dir {out}" + (f" --backend {backend}" if backend else ""))
    argv = [sys.executable, "-m", "logitsdump", "dump", "-bcr", str(keys), "-tr", str(tokens), "-e", runner]
    if replay is not None:
        argv += ["--replay", str(replay), "--replay-mode", replay_mode]
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", **(env or {}))
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        status = subprocess.run(["nice", "-n", "10", *argv], stdout=handle, stderr=subprocess.STDOUT, env=full_env,
                                check=False).returncode
    seconds = time.monotonic() - started
    if status != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"dump failed (status {status}), see {log}: {' | '.join(tail)}")
    folders = [p.parent for p in out.rglob("manifest.jsonl")]
    if len(folders) != 1:
        raise SystemExit(f"expected one logits folder under {out}, found {folders}")
    return folders[0], seconds


def verdicts(golden: Path, mine: Path, out: Path, floor: Path) -> dict:
    """(subject, key) -> (verdict, [KL or KL lower bound per judged step]) of one compare run."""
    from logitsdump.compare import CompareOptions, run_compare

    summary = run_compare(CompareOptions(golden, mine, out, tolerances_file=floor, dtype="bf16"))
    result = {}
    for case in summary.cases:
        kls = [s.metrics.kl_divergence if s.metrics is not None else s.topk.kl_lower_bound
               for s in case.judged_steps if s.metrics is not None or s.topk is not None]
        result[case.subject, case.key] = (case.verdict, kls)
    return result


def bound_gaps(golden: Path, mine: Path, k: int) -> list[tuple[float, float]]:
    """(full KL, KL lower bound with the test side cut to its top k) of every step both folders have."""
    from logitsdump.compare.topk_metrics import Side, kl_lower_bound, side_of_logits
    from logitsdump.tensorio import load_logits

    out = []
    for file in sorted(golden.glob("logits_*.pth")):
        if not (mine / file.name).is_file():
            continue
        g = side_of_logits(load_logits(file), k)
        m_full = side_of_logits(load_logits(mine / file.name), k)
        full, *_ = kl_lower_bound(g, m_full)  # the test's whole vocabulary: the bound is the KL itself
        cut = Side({t: float(m_full.full[t]) for t in m_full.top[:k]}, m_full.top[:k])  # type: ignore[index]
        bound, *_ = kl_lower_bound(g, cut)
        out.append((full, bound))
    return out


def agreement(reference: dict, other: dict) -> tuple[int, int, int]:
    """(cases, same verdict, same pass/fail) over the cases both have."""
    common = [c for c in reference if c in other]
    same = sum(reference[c][0] == other[c][0] for c in common)
    klass = sum((reference[c][0] in PASSING) == (other[c][0] in PASSING) for c in common)
    return len(common), same, klass


def pct(n: int, d: int) -> str:
    return f"{n}/{d} = {n / d:.1%}" if d else "-"


def quantile(values: list[float], q: float) -> float:
    from logitsdump.compare.stats import percentile_high

    return percentile_high(values, q) if values else math.nan


def requests_per_case(folder: Path) -> tuple[float, float]:
    """(mean requests, mean request seconds) per case from a server dump's manifest."""
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]
    costs = [r["extra"].get("server_requests", {}) for r in rows]
    n = max(len(costs), 1)
    return sum(c.get("requests", 0) for c in costs) / n, sum(c.get("seconds", 0.0) for c in costs) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--cases", type=int, default=None, help="at most this many judged cases in all")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--conditions", default=None, help="';'-separated subset of the conditions")
    args = parser.parse_args()
    started = time.monotonic()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="server_topk_"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    if args.model == "smollm2":
        from logitsdump.demo import smollm2

        model, name, chat, table = smollm2.build_model(), smollm2.MODEL_NAME, {"use_chat_template": True}, CONDITIONS
    else:
        model = work / "tiny32"
        if not model.is_dir():
            maker = Path(__file__).resolve().parent.parent / "tools" / "make_tiny_model.py"
            subprocess.run([sys.executable, str(maker), "--head-dim", "32", "--out", str(model)], check=True,
                           stdout=subprocess.DEVNULL)
        name, chat, table = "tiny32", {}, TINY_CONDITIONS
    names = [n for n in table if not args.conditions or n in args.conditions.split(";")]
    per_task = max(1, args.cases // len(TASKS)) if args.cases else None
    plans = {task: (_task_yaml(task, work, args.tokens), {}) for task in TASKS}
    for task_yaml, parts in plans.values():
        parts.update(_split_keys(task_yaml, work, per_task))
    judged = sum(parts["judged"][1] for _y, parts in plans.values())
    say(f"work folder {work}; model {name}; {judged} judged cases of {', '.join(TASKS)}, {args.tokens} tokens")

    golden_yaml = write_model_yaml(work / "golden.yaml", model, name, "fp32", **chat)
    golden = {}
    for task, (task_yaml, parts) in plans.items():
        for part, (keys, _count) in parts.items():
            golden[task, part], seconds = dump(golden_yaml, task_yaml, keys, work / "dump" / "golden" / part / task,
                                               args.tokens, work / "logs" / f"golden_{part}_{task}.log", backend=None)
            say(f"  golden HF fp32 {task} {part} ({seconds:.0f} s)")

    from logitsdump.compare import CompareOptions
    from logitsdump.compare.calibrate import calibrate

    healthy = write_model_yaml(work / "healthy.yaml", model, name, "bf16", **chat)
    pairs = []
    for task, (task_yaml, parts) in plans.items():
        mine, _s = dump(healthy, task_yaml, parts["held-out"][0], work / "dump" / "calibration" / task, args.tokens,
                        work / "logs" / f"calibration_{task}.log", backend="vllm", replay=golden[task, "held-out"],
                        replay_mode="prefill")
        pairs.append((golden[task, "held-out"], mine))
    floor = work / "vllm_bf16_tolerances.json"
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        calibrated = calibrate([CompareOptions(g, m, work / "calibration") for g, m in pairs], output_path=floor)
    say("  floor (in-process vLLM bf16 vs HF fp32, held-out cases): "
        + ", ".join(f"{k} {v:.3g}" for k, v in calibrated.suggested.items() if v is not None))

    rows = []
    for condition in names:
        defect = table[condition]
        folder = model if defect is None else write_defective_model(model, work / "models" / _slug(condition), defect)
        yaml = write_model_yaml(work / f"{_slug(condition)}.yaml", folder, name, "bf16", **chat)
        full, tops, gaps, server_gaps = {}, {k: {} for k in KS}, [], []
        cost = {"full_s": 0.0, "server_s": 0.0, "requests": [], "request_s": []}
        for task, (task_yaml, parts) in plans.items():
            keys = parts["judged"][0]
            out = work / "dump" / _slug(condition) / task
            log = work / "logs" / f"{_slug(condition)}_{task}_full.log"
            mine, seconds = dump(yaml, task_yaml, keys, out / "full", args.tokens, log, backend="vllm",
                                 replay=golden[task, "judged"], replay_mode="prefill")
            cost["full_s"] += seconds
            target = work / "compare" / _slug(condition) / task / "full"
            full.update(verdicts(golden[task, "judged"], mine, target, floor))
            gaps += bound_gaps(golden[task, "judged"], mine, 20)
        with vllm_server(folder, dtype="bfloat16", max_logprobs=max(KS),
                         log_path=work / "logs" / f"serve_{_slug(condition)}.log") as base_url:
            for task, (task_yaml, parts) in plans.items():
                keys = parts["judged"][0]
                for k in KS:
                    out = work / "dump" / _slug(condition) / task / f"top{k}"
                    env = {"LOGITSDUMP_SERVER": json.dumps({"base_url": base_url, "api": "vllm", "top_k": k})}
                    mine, seconds = dump(yaml, task_yaml, keys, out, args.tokens,
                                         work / "logs" / f"{_slug(condition)}_{task}_top{k}.log", backend="server",
                                         replay=golden[task, "judged"], env=env)
                    if k == max(KS):
                        cost["server_s"] += seconds
                        n, s = requests_per_case(mine)
                        cost["requests"].append(n)
                        cost["request_s"].append(s)
                    found = verdicts(golden[task, "judged"], mine,
                                     work / "compare" / _slug(condition) / task / f"top{k}", floor)
                    tops[k].update(found)
        for case, (_v, kls) in tops[max(KS)].items():
            if case in full:
                server_gaps += list(zip(full[case][1], kls, strict=False))
        rows.append((condition, full, tops, gaps, server_gaps, cost))
        shown = []
        for k in KS:
            n, same, _klass = agreement(full, tops[k])
            shown.append(f"top-{k} same verdict {pct(same, n)}")
        say(f"  {condition}: " + "; ".join(shown))

    say("")
    say(f"{name}, golden HF fp32 free-running; test bf16 replayed on golden's tokens; {judged} cases x {args.tokens} "
        f"tokens of {', '.join(TASKS)}; floor: {floor.name} (held-out cases)")
    say("")
    say("| condition | full (in-process vLLM) passing | top-20 (vllm serve) same verdict | same pass/fail "
        "| top-5 same verdict | same pass/fail |")
    say("|---|---|---|---|---|---|")
    for condition, full, tops, _g, _sg, _c in rows:
        passing = sum(v in PASSING for v, _ in full.values())
        cells = []
        for k in KS:
            n, same, klass = agreement(full, tops[k])
            cells += [pct(same, n), pct(klass, n)]
        say(f"| {condition} | {pct(passing, len(full))} | " + " | ".join(cells) + " |")
    say("")
    say("KL lower bound vs full KL per step (in-process full dumps, the test side cut to its top 20 | the server's "
        "top-20 bound against the in-process full KL):")
    say("| condition | steps | median bound/KL | p10 bound/KL | max (KL - bound) | p99 (KL - bound) "
        "| server: median bound/KL | server: max abs(KL - bound) |")
    say("|---|---|---|---|---|---|---|---|")
    for condition, _f, _t, gaps, server_gaps, _c in rows:
        ratios = sorted(b / f for f, b in gaps if f > 0)
        diffs = [f - b for f, b in gaps]
        s_ratios = sorted(b / f for f, b in server_gaps if f > 0)
        s_diffs = [abs(f - b) for f, b in server_gaps]
        say(f"| {condition} | {len(gaps)} | {quantile(ratios, 0.5):.3f} | {-quantile([-r for r in ratios], 0.9):.3f} "
            f"| {max(diffs, default=math.nan):.3g} | {quantile(diffs, 0.99):.3g} | {quantile(s_ratios, 0.5):.3f} "
            f"| {max(s_diffs, default=math.nan):.3g} |")
    say("")
    say("| condition | in-process vLLM dump wall (s) | server dump wall, top-20 (s) | requests per case | "
        "request seconds per case |")
    say("|---|---|---|---|---|")
    for condition, _f, _t, _g, _sg, cost in rows:
        n = sum(cost["requests"]) / max(len(cost["requests"]), 1)
        s = sum(cost["request_s"]) / max(len(cost["request_s"]), 1)
        say(f"| {condition} | {cost['full_s']:.0f} | {cost['server_s']:.0f} | {n:.1f} | {s:.3f} |")
    say(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
