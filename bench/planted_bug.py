"""Does the diagnosis tell a planted precision bug from numerical noise? Rates, side by side.

    python bench/planted_bug.py [--tasks boolq,mmlu_zero_shot,...]

Golden is always the embedded tiny model in fp32. Three devices under test, each through the whole
flow (eval, bcanalyze, dump with the test side replaying the golden tokens, compare):
  noise        the same model in bf16 (pure dtype noise): its bad cases should be consistent or noise;
  scale-layer  fp32, last layer's output scaled by 1.05: its bad cases should be precision-suspect;
  zero-head    fp32, head 0 of layer 0 zeroed: likewise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

from logitsdump.demo import examples
from logitsdump.demo.defects import Defect, write_defective_model, write_model_yaml
from logitsdump.demo.run import DemoOptions, run_demo

TASKS = ("boolq", "mmlu_zero_shot", "mmlu_few_shots", "ceval_zero_shot", "ceval_few_shots", "gsm8k", "cmmlu")
NOISE_VERDICTS = ("identical", "consistent", "noise", "tie-flip")


def scenario(name: str, test_yaml: Path, work: Path, tasks: tuple[str, ...]) -> dict[str, int]:
    options = DemoOptions(workdir=str(work / name), tasks=tasks, golden_model=examples.model_config("fp32"),
                          test_model=test_yaml, replay=True, report=False)
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_demo(options)
    return result.verdict_counts()


def rate(counts: dict[str, int], verdicts: tuple[str, ...]) -> str:
    total = sum(counts.values())
    hits = sum(counts.get(v, 0) for v in verdicts)
    return f"{hits}/{total} = {hits / total:.0%}" if total else "no bad cases"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    tasks = tuple(parser.parse_args().tasks.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        devices = {"noise": examples.model_config("bf16")}
        for defect in (Defect("scale-layer", layer=1, factor=1.05), Defect("zero-head", layer=0, head=0)):
            model = write_defective_model(examples.TINY_MODEL, work / defect.kind, defect)
            devices[defect.kind] = write_model_yaml(work / f"{defect.kind}.yaml", model, "tiny_llama_defect", "fp32")
        print(f"golden: tiny_llama fp32; tasks: {', '.join(tasks)}")
        for name, yaml in devices.items():
            counts = scenario(name, yaml, work, tasks)
            shown = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            print(f"{name:<12} bad cases: {sum(counts.values()):>3}  [{shown}]")
            print(f"{'':<12} consistent or noise: {rate(counts, NOISE_VERDICTS):<14} "
                  f"precision-suspect: {rate(counts, ('precision-suspect',))}")


if __name__ == "__main__":
    main()
