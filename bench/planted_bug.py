"""Does the diagnosis tell a planted precision bug from numerical noise? Rates, side by side.

    python bench/planted_bug.py [--tasks boolq,mmlu_zero_shot,...]

Golden is always the embedded tiny model in fp32. Devices under test, each in bf16 (like a real
accelerator) and each through the whole flow (eval, bcanalyze, dump with the test side replaying the
golden tokens, compare with the default tolerances):
  noise             the same model (pure dtype noise): its bad cases should be consistent or noise;
  zero-head         head 0 of layer 0 zeroed (a kernel that drops a head): should be precision-suspect;
  scale-layer-1.25  layer 1's attention and MLP outputs scaled by 1.25 (a wrong scale): likewise;
  scale-layer-1.05  the same by 1.05: on this random model that is inside bf16's own noise, shown
                    to say where the method's resolution ends.
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
    options = DemoOptions(workdir=str(work / "runs" / name), tasks=tasks, golden_model=examples.model_config("fp32"),
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
        defects = {
            "zero-head": Defect("zero-head", layer=0, head=0),
            "scale-layer-1.25": Defect("scale-layer", layer=1, factor=1.25),
            "scale-layer-1.05": Defect("scale-layer", layer=1, factor=1.05),
        }
        for name, defect in defects.items():
            model = write_defective_model(examples.TINY_MODEL, work / name, defect)
            devices[name] = write_model_yaml(work / f"{name}.yaml", model, "tiny_llama_defect", "bf16")
        print(f"golden: tiny_llama fp32; tasks: {', '.join(tasks)}")
        for name, yaml in devices.items():
            counts = scenario(name, yaml, work, tasks)
            shown = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            print(f"{name:<17} bad cases: {sum(counts.values()):>3}  [{shown}]")
            print(f"{'':<17} consistent or noise: {rate(counts, NOISE_VERDICTS):<14} "
                  f"precision-suspect: {rate(counts, ('precision-suspect',))}")


if __name__ == "__main__":
    main()
