"""The vectors behind the causal check's sufficiency half, for every testable culprit of a `bench/localize.py` work
folder (its record, replay and judge folders), so that a sufficiency rule can be chosen on the tuning runs and
checked on a report run without re-running the bench.

    nice -n 10 python bench/localize_sufficiency.py --workdir W --phase tune --out W/vectors.safetensors
    python bench/localize_sufficiency.py --analyse W0/vectors.safetensors W1/vectors.safetensors ...

The second form compares sufficiency rules on those vectors: how often each confirms the true culprits (by the
test's final KL over the noise) and lets a decoy pass: a random change of the deviation's size at the culprit,
judged against the other random changes, and the culprit's deviation moved to the next layer's same module,
judged against random changes there. docs/localize.md says which rule was chosen from it.

Per culprit, at the focus step (float32 over the vocabulary): the control arm's logits (golden's device in the test
dtype), the test's (from the replay), the control arm's run with the culprit's deviation added (what `localize
judge` judges), RANDOM runs with a change of the deviation's size in random directions there (the null a wrong
deviation of the same size gives), and the same deviation and RANDOM random changes at the next layer's same
module. The measures are `passes.alignment`'s; the chosen rule is `verdict.sufficient`.
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
    parser.add_argument("--workdir")
    parser.add_argument("--phase", choices=("tune", "report"), default="tune")
    parser.add_argument("--out")
    parser.add_argument("--analyse", nargs="+", metavar="VECTORS", help="compare sufficiency rules on these files")
    args = parser.parse_args()
    if args.analyse:
        return analyse(args.analyse)
    if not (args.workdir and args.out):
        parser.error("--workdir and --out are required (or --analyse)")
    collect(Path(args.workdir), args.phase, Path(args.out))


def collect(work: Path, phase: str, out: Path) -> None:
    """Write the vectors of every testable culprit of `work`'s `phase` to `out`."""

    import torch

    from logitsdump.localize import files, passes
    from logitsdump.localize.candidates import Structure
    from logitsdump.localize.compact import rebuild
    from logitsdump.localize.outputs import read_document
    from logitsdump.localize.run_judge import GoldenSide, _deviation, _random_like
    from logitsdump.localize.run_replay import TEST_LOGITS, patch_target
    from logitsdump.localize.verdict import CaseVerdict

    torch.set_num_threads(1)
    side = GoldenSide(str(work / "golden.yaml"), device="cpu")
    tensors: dict[str, torch.Tensor] = {}
    meta: list[dict] = []
    started = time.monotonic()
    for judged in sorted((work / "judge" / phase).glob("*/*")):
        condition, task = judged.parent.name, judged.name
        record = files.RecordFolder(work / "record" / phase / task)
        replayed = files.ReplayFolder(work / "replay" / phase / condition / task)
        planted = json.loads((replayed.path / "planted.json").read_text(encoding="utf-8"))
        structure = Structure.from_dict(record.header["structure"])
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
            deviation = _deviation(arm, tokens, structure, golden_sites, target, kept[f"{target}:out"])
            key = f"{condition}/{task}/{case['id']}"
            found = {
                "control": passes.prefill(arm, tokens).logits[0, -1].float(),
                "test": kept[TEST_LOGITS].float(),
                "sufficiency": passes.patched(arm, tokens, target, deviation, how="add")[0][-1],
            }
            for k in range(RANDOM):
                change = _random_like(deviation, f"{case['id']}/{k}")
                found[f"random{k}"] = passes.patched(arm, tokens, target, change, how="add")[0][-1]
            site = structure.by_name()[target]
            moved = next((c.name for c in structure.candidates if c.kind == site.kind and c.module == site.module
                          and c.layer == (site.layer or 0) + 1), None)
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

    save_file(tensors, str(out) + ".tmp", metadata={"cases": json.dumps(meta)})
    Path(str(out) + ".tmp").replace(out)
    print(f"{len(meta)} culprits -> {out}", file=sys.stderr)


def _changes(path: str) -> list[tuple[str, float, float, float, list[float]]]:
    """Per culprit of one vectors file: the culprit's, the random decoys' and the moved decoy's (role, the test's KL
    over the noise, cosine, share) with the test's change (`passes.alignment`), each beside its null (the random
    changes' cosines it is judged against)."""
    from safetensors import safe_open

    from logitsdump.localize.passes import alignment

    items = []
    with safe_open(path, "pt") as handle:
        keys = set(handle.keys())
        for case in json.loads(handle.metadata()["cases"]):
            key = case["key"]
            control, test = handle.get_tensor(f"{key}:control"), handle.get_tensor(f"{key}:test")

            def against(name: str, key: str = key, control=control, test=test) -> tuple[float, float]:
                return alignment(control, test, handle.get_tensor(f"{key}:{name}"))

            ratio = case["kl_test"] / case["kl_noise"]
            draws = [against(f"random{k}") for k in range(RANDOM)]
            items.append(("culprit", ratio, *against("sufficiency"), [c for c, _ in draws]))
            for j, (cosine, share) in enumerate(draws):
                items.append(("random change", ratio, cosine, share, [c for i, (c, _) in enumerate(draws) if i != j]))
            if f"{key}:moved" in keys:
                there = [against(f"moved_random{k}")[0] for k in range(RANDOM)]
                items.append(("moved deviation", ratio, *against("moved"), there))
    return items


def analyse(paths: list[str]) -> None:
    """The rules side by side on `paths` (see the module docstring)."""
    import statistics

    from logitsdump.localize.verdict import Sufficiency, sufficient

    def chosen(cosine: float, share: float, null: list[float]) -> bool:
        return sufficient(Sufficiency(0.0, cosine, share, tuple(null)))

    def z(cosine: float, null: list[float]) -> float:
        return (cosine - statistics.mean(null)) / max(statistics.pstdev(null), 1e-9)

    rules = {
        "fixed line: cosine >= 0.7, share >= 0.5": lambda c, s, n: c >= 0.7 and s >= 0.5,
        "cosine above every draw, share >= 0.5": lambda c, s, n: c > max(n) and s >= 0.5,
        "cosine above every draw and >= 0.5, share >= 0.5 (verdict.sufficient)": chosen,
        "z over the draws >= 2, share >= 0.5": lambda c, s, n: z(c, n) >= 2 and s >= 0.5,
        "z over the draws >= 3, share >= 0.5": lambda c, s, n: z(c, n) >= 3 and s >= 0.5,
        "cosine >= every draw + 0.1, share >= 0.5": lambda c, s, n: c >= max(n) + 0.1 and s >= 0.5,
    }
    items = [item for path in paths for item in _changes(path)]
    roles = ("culprit", "random change", "moved deviation")
    print("| rule | " + " | ".join(f"{r} passes, {b}" for r in roles for b in ("3-10x", ">= 10x")) + " |")
    print("|---|" + "---|" * 6)
    for name, rule in rules.items():
        cells = []
        for role in roles:
            for low, high in ((0, 10), (10, float("inf"))):
                mine = [rule(c, s, n) for r, ratio, c, s, n in items if r == role and low <= ratio < high]
                cells.append(f"{sum(mine)}/{len(mine)} ({sum(mine) / len(mine):.0%})" if mine else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    culprits = [(ratio, c, s, max(n)) for r, ratio, c, s, n in items if r == "culprit"]
    print(f"\n{len(culprits)} culprits; their cosine {min(c for _, c, _, _ in culprits):.2f} to "
          f"{max(c for _, c, _, _ in culprits):.2f}; the largest random draw beside them "
          f"{max(m for *_, m in culprits):.2f}")
    for ratio, cosine, share, top in sorted(culprits):
        if not chosen(cosine, share, [top]):
            print(f"  refuted by the chosen rule: KL {ratio:.1f}x the noise, cosine {cosine:.2f}, share {share:.2f}, "
                  f"the largest random draw {top:.2f}")


if __name__ == "__main__":
    main()
