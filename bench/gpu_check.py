"""GPU check for whoever has a CUDA machine: eval and dump on CUDA, single process and data parallel.

    python bench/gpu_check.py [--out DIR]

With a random Llama (hidden 512, 8 layers, vocab 32k) and the sample GSM8K cases:
1. `logitsdump eval` on CUDA (fp32 and bf16) and on the CPU (fp32), timed;
2. `logitsdump dump` of 8 cases, 8 tokens, on CUDA (single process) and on the CPU;
3. the same dump under `torchrun --nproc_per_node <GPUs>` (data parallel): must be bit-identical
   to the single-process CUDA files;
4. the argmax of every CUDA file against the CPU file of the same name, and `logitsdump compare`.
Prints timings and PASS/FAIL lines; exits 1 if a check fails. Needs `logitsdump` on PATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from logitsdump.demo import examples

from random_model import write_model_yaml, write_random_llama

CASES = "key\n" + "\n".join(str(i) for i in range(8)) + "\n"
TOKENS = 8
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}: {what}", flush=True)
    if not ok:
        failures.append(what)


def run(argv: list[str], what: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise SystemExit(f"FAIL: {what} exited {done.returncode}")
    print(f"  {what}: {seconds:.2f} s", flush=True)
    return seconds


def eval_cmd(model_yaml: Path, out: Path, device: str) -> str:
    return (f"logitsdump eval --model_config_path {model_yaml} --task_config_path {examples.task_config('gsm8k')} "
            f"--batch_size 1 --tp 1 --output_dir {out} --save_debug_enable --device {device}")


def logits_dir(out: Path, label: str, dtype: str) -> Path:
    return out / "data" / label / "precision_test" / "gsm8k" / dtype / "random512" / "logits"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: nothing to check")
    gpus = torch.cuda.device_count()
    print(f"torch {torch.__version__}, {gpus} x {torch.cuda.get_device_name(0)}", flush=True)
    work = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model = write_random_llama(work / "model", hidden=512, layers=8, vocab=32000)
    fp32 = write_model_yaml(work / "fp32.yaml", model, "random512", "fp32")
    bf16 = write_model_yaml(work / "bf16.yaml", model, "random512", "bf16")
    bad = work / "bad.csv"
    bad.write_text(CASES)

    print("eval (22 GSM8K cases, 12 tokens):")
    t_gpu = run(eval_cmd(fp32, work / "eval-cuda", "cuda").split(), "eval cuda fp32")
    run(eval_cmd(bf16, work / "eval-cuda", "cuda").split(), "eval cuda bf16")
    t_cpu = run(eval_cmd(fp32, work / "eval-cpu", "cpu").split(), "eval cpu fp32")
    print(f"  cpu / cuda time ratio (process start and model load included): {t_cpu / t_gpu:.2f}")

    print(f"dump (8 cases, {TOKENS} tokens):")
    dump = ["logitsdump", "dump", "-bcr", str(bad), "-tr", str(TOKENS), "-e"]
    run([*dump, eval_cmd(fp32, work / "dump-cuda", "cuda")], "dump cuda fp32, one process")
    run([*dump, eval_cmd(fp32, work / "dump-cpu", "cpu")], "dump cpu fp32")
    torchrun = f"{shutil.which('torchrun') or 'torchrun'} --standalone --nproc_per_node {gpus} --no-python "
    run([*dump, torchrun + eval_cmd(fp32, work / "dump-dp", "cuda")], f"dump cuda fp32, torchrun x{gpus}")

    single, parallel, cpu = (logits_dir(work / d, lbl, "fp32") for d, lbl in
                             (("dump-cuda", "GPU"), ("dump-dp", "GPU"), ("dump-cpu", "CPU")))
    names = sorted(p.name for p in single.glob("*.pth"))
    check(len(names) == 8 * TOKENS, f"{len(names)} CUDA logits files written (expected {8 * TOKENS})")
    check(names == sorted(p.name for p in parallel.glob("*.pth")), "data-parallel run wrote the same file names")
    same = all(torch.equal(torch.load(single / n, weights_only=True), torch.load(parallel / n, weights_only=True))
               for n in names)
    check(same, "data-parallel files are bit-identical to the single-process files")
    first = [n for n in names if n.endswith("_0.pth")]
    agree = sum(int(torch.load(single / n, weights_only=True).argmax()) ==
                int(torch.load(cpu / n, weights_only=True).argmax()) for n in first)
    check(agree == len(first), f"argmax of the first token: CUDA = CPU for {agree}/{len(first)} cases")
    every = sum(int(torch.load(single / n, weights_only=True).argmax()) ==
                int(torch.load(cpu / n, weights_only=True).argmax()) for n in names)
    print(f"  argmax CUDA = CPU for {every}/{len(names)} files (later tokens may follow different prefixes)")
    done = subprocess.run(["logitsdump", "compare", "-gp", str(cpu), "-mp", str(single), "-d", "fp32",
                           "-o", str(work / "cmp")], capture_output=True, text=True)
    print(done.stdout[-1500:])
    check(done.returncode == 0, "logitsdump compare CPU vs CUDA ran")
    print(f"work folder: {work}")
    if failures:
        raise SystemExit(f"{len(failures)} check(s) failed")
    print("all GPU checks passed")


if __name__ == "__main__":
    main()
