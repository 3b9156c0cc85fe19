"""What a case costs through a server against the in-process backends, side by side in one run.

    .venv-vllm/bin/python bench/server_vs_inprocess.py [--model tiny|smollm2]

On the sample gsm8k cases (SmolLM2 through its chat template), in this one process: the HF backend, the
in-process vLLM backend and the server backend against a `vllm serve` of the same folder and dtype
(tools/vllm_server.py; tiny: fp32, SmolLM2: bf16), each timed on every case after one warm-up case:
greedy decoding of 16 tokens keeping 8 steps (a dump: the server's top-20 logprobs, the in-process
backends' whole-vocabulary logits), then a replay of those 8 steps (HF: one forward pass; vLLM:
`prompt_logprobs=-1`; the server: `prompt_logprobs=20`), with the requests each case took.
`scripts/smoke_server.sh` prints the tiny model's figures too.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))


def timings(model_yaml: Path, url: str, tokens: int = 16, steps: int = 8) -> dict[str, str]:
    """name -> one line of per-case figures for the HF, in-process vLLM and server backends on the same cases."""
    from logitsdump.demo import examples
    from logitsdump.runner.backends import backend_class
    from logitsdump.runner.config import load_model_config, load_task_config, resolve_dataset_root
    from logitsdump.runner.device import choose_device
    from logitsdump.runner.tasks import get_task

    config = load_model_config(model_yaml)
    task_config = load_task_config(examples.task_config("gsm8k"))
    cases = get_task(task_config.task_name).load_cases(task_config, resolve_dataset_root(task_config))
    device = choose_device("cpu")
    out = {}
    for name, framework, server in (("HF in-process", "Huggingface", {}), ("vLLM in-process", "Vllm", {}),
                                    ("vllm serve, top-20", "Server", {"base_url": url, "top_k": 20})):
        backend = backend_class(framework)(dataclasses.replace(config, requested_gpu_framework=framework,
                                                               server=server), device)
        prompts = [backend.encode(c.query) for c in cases]
        backend.greedy([prompts[0]], tokens, steps)  # warm-up
        client = getattr(backend, "client", None)
        if client is not None:
            client.counters.take()
        t0 = time.perf_counter()
        decoded = [backend.greedy([p], tokens, steps)[0] for p in prompts]
        generate = (time.perf_counter() - t0) / len(prompts)
        sent = client.counters.take()["requests"] / len(prompts) if client is not None else None
        t0 = time.perf_counter()
        for prompt, result in zip(prompts, decoded, strict=True):
            backend.prefill_logits(prompt, result.output_ids[:steps])
        replay = (time.perf_counter() - t0) / len(prompts)
        replayed = client.counters.take()["requests"] / len(prompts) if client is not None else None
        requests = "" if sent is None else f"; requests per case {sent:g} (generate), {replayed:g} (replay)"
        out[name] = (f"{name}: generate {tokens} tokens {generate * 1000:.1f} ms, replay {steps} steps "
                     f"{replay * 1000:.1f} ms per case ({len(prompts)} cases){requests}")
        del backend
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    args = parser.parse_args()
    from vllm_server import vllm_server

    from logitsdump.demo.defects import write_model_yaml

    work = Path(tempfile.mkdtemp(prefix="server_vs_inprocess_"))
    if args.model == "smollm2":
        from logitsdump.demo import smollm2

        model, name, dtype, chat = smollm2.build_model(), smollm2.MODEL_NAME, "bf16", {"use_chat_template": True}
    else:
        import subprocess

        model, name, dtype, chat = work / "tiny32", "tiny32", "fp32", {}
        maker = Path(__file__).resolve().parent.parent / "tools" / "make_tiny_model.py"
        subprocess.run([sys.executable, str(maker), "--head-dim", "32", "--out", str(model)], check=True,
                       stdout=subprocess.DEVNULL)
    yaml = write_model_yaml(work / "model.yaml", model, name, dtype, **chat)
    vllm_dtype = {"bf16": "bfloat16", "fp32": "float32"}[dtype]
    started = time.monotonic()
    with vllm_server(model, dtype=vllm_dtype, max_logprobs=20, log_path=work / "serve.log") as url:
        lines = timings(yaml, url)
    print(f"{name} ({dtype}), gsm8k sample cases, CPU:")
    for line in lines.values():
        print(f"  {line}")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
