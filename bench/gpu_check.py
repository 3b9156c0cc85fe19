"""GPU check for whoever has a CUDA machine: eval and dump on CUDA, single process and data parallel.

    python bench/gpu_check.py [--out DIR]

With a random Llama (hidden 512, 8 layers, vocab 32k) and the sample GSM8K cases:
1. `logitsdump eval` on CUDA (fp32 and bf16) and on the CPU (fp32), timed;
2. `logitsdump dump` of 8 cases, 8 tokens, on CUDA (single process) and on the CPU;
3. the same dump under `torchrun --nproc_per_node <GPUs>` (data parallel): must be bit-identical
   to the single-process CUDA files;
4. the argmax of every CUDA file against the CPU file of the same name, and `logitsdump compare`.
With `--vllm` (vLLM installed, docs/vllm.md), the same model through the vLLM backend on CUDA:
5. eval fp32 and bf16 timed against HF on CUDA (ratio vLLM / HF, process start and load included),
   and the generated tokens of both (debug CSVs);
6. a vLLM dump of the same 8 cases, free-running and replaying HF's CUDA dump: fp32 logits within
   `--vllm-tolerance` of HF's, and `logitsdump compare` HF vs vLLM with every case identical or consistent.
Prints timings and PASS/FAIL lines; exits 1 if a check fails. Needs `logitsdump` on PATH.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def eval_cmd(model_yaml: Path, out: Path, device: str, backend: str | None = None) -> str:
    return (f"logitsdump eval --model_config_path {model_yaml} --task_config_path {examples.task_config('gsm8k')} "
            f"--batch_size 1 --tp 1 --output_dir {out} --save_debug_enable --device {device}"
            + (f" --backend {backend}" if backend else ""))


def debug_csv(out: Path, label: str, dtype: str) -> Path:
    folder = out / "debug" / label / "precision_test" / "gsm8k" / dtype / "random512"
    return folder / "gsm8k_pa_batch1_tp1_debug_info.csv"


def token_columns(csv_path: Path) -> list[tuple[str, str]]:
    """(key, output_token_ids) of each row of a debug CSV."""
    import csv

    with csv_path.open(newline="", encoding="utf-8") as handle:
        return [(row["key"], row["output_token_ids"]) for row in csv.DictReader(handle)]


def max_logit_delta(golden: Path, test: Path) -> tuple[float, int]:
    """Max |logit difference| over the logits files both folders hold, and how many files that is."""
    import torch

    names = sorted({p.name for p in golden.glob("*.pth")} & {p.name for p in test.glob("*.pth")})
    worst = 0.0
    for name in names:
        a, b = (torch.load(folder / name, weights_only=True).float() for folder in (golden, test))
        worst = max(worst, float((a - b).abs().max()))
    return worst, len(names)


def compare_verdicts(golden: Path, test: Path, out: Path, logit_tolerance: float) -> tuple[int, int]:
    """`logitsdump compare` of two folders: (cases identical or consistent, cases).

    Replayed cases are judged against the floor `logit_tolerance` sets (|delta logit| <= d gives a step
    KL of at most about d^2 / 2): fp32's conservative default floor flags any two fp32 engines that are
    not bit-identical."""
    import re

    done = subprocess.run(["logitsdump", "compare", "-gp", str(golden), "-mp", str(test), "-d", "fp32", "-o", str(out),
                           "--noise-kl", f"{logit_tolerance ** 2 / 2:.3g}"], capture_output=True, text=True)
    found = re.search(r"cases: (\d+) \(identical (\d+), consistent (\d+),", done.stdout)
    if done.returncode != 0 or found is None:
        print(done.stdout[-1500:], done.stderr[-1500:], sep="\n")
        return 0, -1
    return int(found.group(2)) + int(found.group(3)), int(found.group(1))


def vllm_checks(work: Path, fp32: Path, bf16: Path, bad: Path, t_hf: float, tolerance: float) -> None:
    """Steps 5 and 6: the vLLM backend against the HF backend, both on CUDA."""
    print("vLLM backend on CUDA:")
    t_vllm = run(eval_cmd(fp32, work / "eval-vllm", "cuda", "vllm").split(), "eval vllm cuda fp32")
    run(eval_cmd(bf16, work / "eval-vllm", "cuda", "vllm").split(), "eval vllm cuda bf16")
    print(f"  vLLM / HF eval time ratio on CUDA (process start and model load included): {t_vllm / t_hf:.2f}")
    for dtype in ("fp32", "bf16"):
        hf_rows, vllm_rows = (token_columns(debug_csv(work / d, "GPU", dtype)) for d in ("eval-cuda", "eval-vllm"))
        same = sum(a == b for a, b in zip(hf_rows, vllm_rows, strict=True))
        print(f"  {dtype}: vLLM tokens = HF tokens for {same}/{len(hf_rows)} cases")
        if dtype == "fp32":
            check(same == len(hf_rows), f"fp32 eval: vLLM and HF generate the same tokens ({same}/{len(hf_rows)})")
    dump = ["logitsdump", "dump", "-bcr", str(bad), "-tr", str(TOKENS), "-e"]
    golden = logits_dir(work / "dump-cuda", "GPU", "fp32")
    run([*dump, eval_cmd(fp32, work / "dump-vllm", "cuda", "vllm")], "dump vllm cuda fp32, free-running")
    run([*dump, eval_cmd(fp32, work / "dump-vllm-replay", "cuda", "vllm"), "--replay", str(golden)],
        "dump vllm cuda fp32, replaying HF's tokens")
    for name in ("dump-vllm", "dump-vllm-replay"):
        test = logits_dir(work / name, "GPU", "fp32")
        worst, files = max_logit_delta(golden, test)
        check(files == 8 * TOKENS and worst < tolerance,
              f"{name}: {files} files, max |logit(vLLM) - logit(HF)| = {worst:.3g} (< {tolerance})")
        good, cases = compare_verdicts(golden, test, work / f"cmp-{name}", tolerance)
        check(good == cases == 8, f"{name}: compare HF vs vLLM: {good}/{cases} cases identical or consistent")


def logits_dir(out: Path, label: str, dtype: str) -> Path:
    return out / "data" / label / "precision_test" / "gsm8k" / dtype / "random512" / "logits"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--vllm", action="store_true", help="also check the vLLM backend against HF on CUDA")
    parser.add_argument("--vllm-tolerance", type=float, default=1e-3, help="max |Δlogit| in fp32 (default 1e-3)")
    args = parser.parse_args()
    if args.vllm and importlib.util.find_spec("vllm") is None:
        raise SystemExit("--vllm: vLLM is not installed (pip install 'logitsdump[vllm]', docs/vllm.md)")
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
    if args.vllm:
        vllm_checks(work, fp32, bf16, bad, t_gpu, args.vllm_tolerance)
    print(f"work folder: {work}")
    if failures:
        raise SystemExit(f"{len(failures)} check(s) failed")
    print("all GPU checks passed")


if __name__ == "__main__":
    main()
