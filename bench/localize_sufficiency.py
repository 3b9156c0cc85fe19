"""The vectors behind the causal check's sufficiency half, for every testable culprit of a `bench/localize.py` work
folder (its record, replay and judge folders), so that a sufficiency rule can be chosen on the tuning runs and
checked on a report run without re-running the bench.

    nice -n 10 python bench/localize_sufficiency.py --workdir W --phase tune --out W/vectors_tune.safetensors

Per culprit, at the focus step (float32 over the vocabulary): golden's logits, the control arm's (golden's device
in the test dtype), a second healthy realization of the control arm (the other attention implementation, the
same dtype: what two healthy runs of the test dtype differ by), the test's and the necessity run's (from the
replay), the control arm's run with the culprit's deviation added (what `localize judge` judges), the same added
to golden's own run, and RANDOM runs with a change of the deviation's size in random directions (the null a
wrong deviation of the same size gives).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RANDOM = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--phase", choices=("tune", "report"), default="tune")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    from logitsdump.localize import files, passes
    from logitsdump.localize.candidates import LM_HEAD, Structure
    from logitsdump.localize.compact import rebuild
    from logitsdump.localize.outputs import read_document
    from logitsdump.localize.run_judge import GoldenSide, _deviation, _random_like
    from logitsdump.localize.run_replay import NECESSITY_LOGITS, TEST_LOGITS, patch_target
    from logitsdump.localize.verdict import CaseVerdict

    torch.set_num_threads(1)
    work = Path(args.workdir)
    side = GoldenSide(str(work / "golden.yaml"), device="cpu")
    tensors: dict[str, torch.Tensor] = {}
    meta: list[dict] = []
    started = time.monotonic()
    for judged in sorted((work / "judge" / args.phase).glob("*/*")):
        condition, task = judged.parent.name, judged.name
        record = files.RecordFolder(work / "record" / args.phase / task)
        replayed = files.ReplayFolder(work / "replay" / args.phase / condition / task)
        planted = json.loads((replayed.path / "planted.json").read_text(encoding="utf-8"))
        structure = Structure.from_dict(record.header["structure"])
        lm_head = next(c.name for c in structure.candidates if c.module == LM_HEAD)
        for case in read_document(judged)["cases"]:
            causal = case.get("causal")
            if not causal or causal["outcome"] not in ("confirmed", "refuted"):
                continue
            entry, replay = record.case(case["id"]), replayed.case(case["id"])
            control = entry.controls[replay.control]
            verdict = CaseVerdict.from_dict(case["verdict"])
            target = patch_target(structure, verdict)
            kept = replayed.tensors(replay)
            golden_sites = rebuild(entry.refs, record.tensors(entry), entry.checksums)
            tokens = list(entry.token_ids)
            arm = side.control(control.dtype, control.attn).model
            other = side.control(control.dtype, "eager" if control.attn == "sdpa" else "sdpa").model
            deviation = _deviation(arm, tokens, structure, golden_sites, target, kept[f"{target}:out"])
            key = f"{condition}/{task}/{case['id']}"
            found = {
                "golden": golden_sites[f"{lm_head}:out"][0, -1].float(),
                "control": passes.prefill(arm, tokens).logits[0, -1].float(),
                "healthy": passes.prefill(other, tokens).logits[0, -1].float(),
                "test": kept[TEST_LOGITS].float(),
                "necessity": kept[NECESSITY_LOGITS.format(name=target)].float(),
                "sufficiency": passes.patched(arm, tokens, target, deviation, how="add")[0][-1],
                "sufficiency_golden": passes.patched(side.golden.model, tokens, target, deviation, how="add")[0][-1],
            }
            for k in range(RANDOM):
                change = _random_like(deviation, f"{case['id']}/{k}")
                found[f"random{k}"] = passes.patched(arm, tokens, target, change, how="add")[0][-1]
            moved = next((c.name for c in structure.candidates if c.kind == structure.by_name()[target].kind
                          and c.module == structure.by_name()[target].module
                          and c.layer == (structure.by_name()[target].layer or 0) + 1), None)
            if moved is not None:  # the culprit's deviation at the next layer's same module, and its own null
                found["moved"] = passes.patched(arm, tokens, moved, deviation, how="add")[0][-1]
                for k in range(RANDOM):
                    change = _random_like(deviation, f"{case['id']}/moved/{k}")
                    found[f"moved_random{k}"] = passes.patched(arm, tokens, moved, change, how="add")[0][-1]
            for name, value in found.items():
                tensors[f"{key}:{name}"] = value.detach().float().cpu().contiguous()
            meta.append({"key": key, "condition": condition, "task": task, "id": case["id"], "target": target,
                         "defect": planted.get(case["id"]), "verdict": case["verdict"]["label"],
                         "kl_test": causal["kl_test"], "kl_noise": causal["kl_noise"],
                         "outcome": causal["outcome"], "sufficiency_cosine": causal.get("sufficiency_cosine"),
                         "necessity_share": causal.get("necessity_share"), "tokens": len(tokens)})
            print(f"{len(meta)} {key} {target} ({time.monotonic() - started:.0f} s)", flush=True)
    from safetensors.torch import save_file

    out = Path(args.out)
    save_file(tensors, str(out) + ".tmp", metadata={"cases": json.dumps(meta)})
    Path(str(out) + ".tmp").replace(out)
    print(f"{len(meta)} culprits -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
