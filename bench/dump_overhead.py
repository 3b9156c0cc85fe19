"""What the logits dump costs: the same cases evaluated with and without the dump, side by side.

    python bench/dump_overhead.py [--repeats 3] [--tokens 12]

For the embedded tiny model and a larger random Llama (hidden 512, 8 layers, vocab 32k; fp32 on the
CPU), every sample GSM8K case is evaluated plainly and under the dump protocol (all cases listed,
`-tr` = the task's output length), alternating, with one loaded model. Prints the best time of each,
the ratio dump / plain, and the bytes written per logits file against vocab x dtype size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from logitsdump import protocol
from logitsdump.demo import examples

from random_model import write_model_yaml, write_random_llama


def timed_eval(options, backend, env: dict[str, str] | None) -> float:
    from logitsdump.runner.evaluate import run_eval

    saved = {name: os.environ.get(name) for name in (env or {})}
    os.environ.update(env or {})
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            run_eval(options, backend)
        return time.perf_counter() - started
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def measure(name: str, model_yaml: Path, work: Path, repeats: int, tokens: int) -> None:
    from logitsdump.runner.backend import HFBackend, choose_device
    from logitsdump.runner.config import load_model_config, load_task_config
    from logitsdump.runner.evaluate import EvalOptions

    task_yaml = examples.task_config("gsm8k")
    cases = len((examples.DATASETS / "gsm8k" / "GSM8K.jsonl").read_text().splitlines())
    out_tokens = min(tokens, load_task_config(task_yaml).requested_max_output_length)
    backend = HFBackend(load_model_config(model_yaml), choose_device("cpu"))
    plain = EvalOptions(str(model_yaml), str(task_yaml), output_dir=str(work / "plain"), device="cpu")
    dump = EvalOptions(str(model_yaml), str(task_yaml), output_dir=str(work / "dump"), device="cpu")
    request = protocol.DumpRequest(token_max_length=out_tokens, indices=tuple(range(cases)))
    env = {k: v for k, v in protocol.child_environment({}, request).items()}
    timed_eval(plain, backend, None)  # warm-up
    plain_times, dump_times = [], []
    for _ in range(repeats):
        plain_times.append(timed_eval(plain, backend, None))
        dump_times.append(timed_eval(dump, backend, env))
    files = list((work / "dump").rglob("*.pth"))
    bytes_per_file = sum(f.stat().st_size for f in files) / max(len(files), 1)
    ideal = backend.vocab_size * backend.dtype.itemsize
    best_plain, best_dump = min(plain_times), min(dump_times)
    print(f"{name:<34} {cases:>3} cases  plain {best_plain:7.3f} s  dump {best_dump:7.3f} s  "
          f"ratio {best_dump / best_plain:5.3f}  | {len(files):>3} files, {bytes_per_file:9.0f} B/file "
          f"= {bytes_per_file / ideal:5.3f} x vocab*{backend.dtype.itemsize}B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=12)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        measure("tiny_llama (embedded, vocab 259)", examples.model_config("fp32"), work / "tiny",
                args.repeats, args.tokens)
        model = write_random_llama(work / "model512", hidden=512, layers=8, vocab=32000)
        yaml = write_model_yaml(work / "model512.yaml", model, "random512", "fp32")
        measure("random Llama h512 L8 vocab 32k", yaml, work / "large", args.repeats, args.tokens)


if __name__ == "__main__":
    main()
