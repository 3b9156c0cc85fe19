"""localize's files: golden's tensors stored once and rebuilt exactly, the cases chosen from compare's JSON and
the golden manifest, the judge document read back, the report section, and staying torch-free where it must."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from logitsdump import store
from logitsdump.errors import DataError
from logitsdump.localize import files, outputs
from logitsdump.localize.cases import select_cases
from logitsdump.localize.compact import compact, rebuild
from logitsdump.report import localize as report_localize


def test_compact_stores_each_tensor_once_and_rebuilds_it_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    h_in = torch.randn(1, 7, 8, generator=g)
    n1 = torch.randn(1, 7, 8, generator=g)
    attn = torch.randn(1, 7, 8, generator=g)
    h_mid = h_in + attn
    mlp = torch.randn(1, 7, 8, generator=g)
    h_out = h_mid + mlp
    events = [("layer:in", h_in), ("norm:in", h_in), ("norm:out", n1), ("attn:in", n1.clone()), ("attn:out", attn),
              ("post:in", h_mid), ("mlp:out", mlp), ("layer:out", h_out), ("head:in", h_out[:, -2:, :].clone())]
    packed = compact(events)
    assert set(packed.stored) == {"layer:in", "norm:out", "attn:out", "mlp:out"}
    assert packed.refs["norm:in"] == {"alias": "layer:in"}
    assert packed.refs["attn:in"] == {"alias": "norm:out"}  # equal values, another tensor
    assert packed.refs["post:in"] == {"sum": ["layer:in", "attn:out"]}
    assert packed.refs["head:in"] == {"tail": ["layer:out", 2]}
    built = rebuild(packed.refs, packed.stored, packed.checksums)
    for name, tensor in events:
        assert torch.equal(built[name], tensor), name


def test_rebuild_refuses_a_tensor_that_does_not_rebuild_to_golden() -> None:
    a, b = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    packed = compact([("a", a), ("b", b), ("c", a + b)])
    tampered = dict(packed.stored, b=packed.stored["b"] * 1.001)
    with pytest.raises(ValueError, match="checksum"):
        rebuild(packed.refs, tampered, packed.checksums)
    with pytest.raises(ValueError, match="lacks"):
        rebuild(packed.refs, {"a": a}, packed.checksums)


def _manifest(folder: Path, key: int, prompt: list[int], output: list[int], steps: int) -> None:
    record = store.CaseManifest(
        task="gsm8k", subject="GSM8K.jsonl", key=key, index=key, files=tuple(f"f{t}" for t in range(steps)),
        input_token_ids=tuple(prompt), output_token_ids=tuple(output), output_tokens=tuple("x" for _ in output),
        output_text="", query="q", prompt_sha256="0", model_name="m", model_path="p", dtype="fp32",
        logits_dtype="float32", vocab_size=10, device="cpu")
    store.append_manifest(folder, record)


def _compare_json(folder: Path, golden: Path, cases: list[tuple[int, str, int]]) -> Path:
    document = {"schema_version": 3, "tool": "logitsdump", "timestamp": "20260101000000",
                "options": {"golden_path": str(golden), "my_path": str(golden)}, "summary": {}, "cases": [
                    {"subject": "GSM8K.jsonl", "key": key, "verdict": verdict, "reason": "", "tokens_total": 4,
                     "tokens_compared": 4, "tokens_judged": 4, "focus_step": focus, "focus_why": "largest-kl",
                     "replay_mode": "prefill", "steps": [],
                     "my_manifest": {"dtype": "bf16"}} for key, verdict, focus in cases]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "logits_cmp_cases_20260101000000.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_cases_are_the_suspect_ones_at_their_focus_step(tmp_path: Path) -> None:
    golden = tmp_path / "golden"
    golden.mkdir()
    _manifest(golden, 0, [1, 2, 3], [7, 8, 9, 10], 4)
    _manifest(golden, 1, [4, 5], [6, 6, 6, 6], 4)
    _compare_json(tmp_path / "cmp", golden, [(0, "precision-suspect", 2), (1, "noise", 1)])
    selection = select_cases(compare_output=tmp_path / "cmp")
    assert selection.test_dtype == "bf16" and selection.golden_dir == golden
    (case,) = selection.cases
    assert case.key == 0 and case.focus_step == 2 and case.token_ids == (1, 2, 3, 7, 8)
    both = select_cases(compare_output=tmp_path / "cmp", keys=["0", "1"], step=3).cases
    assert [c.token_ids for c in both] == [(1, 2, 3, 7, 8, 9), (4, 5, 6, 6, 6)]
    alone = select_cases(golden_dump=golden).cases  # no compare: every case at its last dumped step
    assert [c.focus_step for c in alone] == [3, 3]


def test_cases_refuse_what_cannot_be_localised(tmp_path: Path) -> None:
    golden = tmp_path / "golden"
    golden.mkdir()
    with pytest.raises(DataError, match=r"no manifest\.jsonl"):
        select_cases(golden_dump=golden)
    _manifest(golden, 0, [1, 2], [3, 4], 2)
    _compare_json(tmp_path / "cmp", golden, [(0, "consistent", 1)])
    with pytest.raises(DataError, match="no precision-suspect or divergent cases"):
        select_cases(compare_output=tmp_path / "cmp")
    with pytest.raises(DataError, match="beyond golden's 2 tokens"):
        select_cases(golden_dump=golden, step=5)


def _document(kind: str = "culprit") -> dict:
    rows = [{"name": f"model.layers.{i}.mlp", "label": f"L{i}.mlp", "layer": i, "module": "mlp", "kind": "module",
             "local_mean": 0.004 * (30 if i == 1 else 1), "local_max": 0.01, "band_mean": 0.004, "band_max": 0.01,
             "band_widened": 1.0, "band_floored": False, "band_prompts": 1, "score": 30.0 if i == 1 else 1.0,
             "accumulated_mean": 0.01 * (i + 1), "accumulated_max": 0.02, "accumulated_cosine": 0.999,
             "control_accumulated_mean": 0.005 * (i + 1)} for i in range(3)]
    verdict = {"kind": kind, "label": "culprit(1, mlp)" if kind == "culprit" else kind, "layer": 1, "module": "mlp",
               "names": ["model.layers.1.mlp"], "score": 30.0, "reason": "L1.mlp at 30x its band <script>"}
    return {"schema_version": 1, "kind": "localize", "model": {"name": "tiny", "dtype": "fp32", "attn": "sdpa"},
            "test": {"dtype": "bf16", "attn": "sdpa"}, "record": "r", "replay": "p",
            "constants": {"above": 3.0, "standout": 2.0, "diffuse_layers": 4}, "confirmed_with_golden_model": True,
            "run": {"kind": kind, "label": verdict["label"], "reason": "1 of 1"},
            "cases": [{"id": "c0000", "label": "GSM8K.jsonl #0", "task": "gsm8k", "focus_step": 3, "tokens": 70,
                       "band_source": "control arm (same case)", "verdict": verdict,
                       "causal": {"outcome": "confirmed", "reason": "patched: KL 0.2 -> 0.001"}, "heads": None,
                       "decoys": [{"decoy": "next layer", "outcome": "refuted"}],
                       "kl_test": 0.2, "kl_noise": 0.001, "candidates": rows, "layers": [],
                       "baselines": {"first_cosine_below": None, "largest_jump": "L2.mlp"},
                       "msprobe_config": "out/msprobe_c0000.json"}]}


def test_the_report_section_shows_the_plot_the_verdict_and_escapes_text() -> None:
    page = report_localize.render_page(_document())
    assert "<svg class=\"depth\"" in page and "culprit(1, mlp)" in page and "polygon class=\"band\"" in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "next layer: refuted" in page
    assert "causal check" in page and "out/msprobe_c0000.json" in page and "largest jump: L2.mlp" in page
    assert page.count('class="own above"') == 1  # only L1.mlp is above band


def test_the_judge_document_is_found_and_checked(tmp_path: Path) -> None:
    (tmp_path / "localize_cases_20260101000000.json").write_text(json.dumps(_document()), encoding="utf-8")
    (tmp_path / "localize_cases_20260101000000_1.json").write_text(json.dumps(_document("none")), encoding="utf-8")
    assert outputs.read_document(tmp_path)["run"]["kind"] == "none"  # the newest of the second
    (tmp_path / "other.json").write_text('{"kind": "record"}', encoding="utf-8")
    with pytest.raises(DataError, match="not a localize judge document"):
        outputs.read_document(tmp_path / "other.json")


def test_json_files_hold_no_infinity_and_refuse_another_schema(tmp_path: Path) -> None:
    files.write_json(tmp_path / "a.json", {"schema_version": 1, "x": float("inf"), "y": [float("nan"), 1.0]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"schema_version": 1, "x": None, "y": [None, 1.0]}
    (tmp_path / "b.json").write_text('{"schema_version": 99}', encoding="utf-8")
    with pytest.raises(DataError, match="schema version 1"):
        files.read_json(tmp_path / "b.json", "record")


def test_the_report_side_and_the_cli_tree_stay_torch_free() -> None:
    code = ("import sys; import logitsdump.report.localize, logitsdump.localize.outputs, logitsdump.localize.verdict;"
            "from logitsdump.cli import build_parser; build_parser();"
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_replay_case_keeps_its_decoys_and_reads_one_without() -> None:
    from logitsdump.localize.records import Arm, Necessity, ReplayCase
    from logitsdump.localize.verdict import Causal

    arm = Arm("bf16", "sdpa", {}, {}, {}, {}, {}, kl_focus=0.1)
    case = ReplayCase("c0000", arm, "bf16", {"kind": "culprit"}, Necessity(("model.layers.3.mlp",), 0.01),
                      "case_c0000.safetensors", (Necessity(("model.layers.4.mlp",), 0.09),))
    back = ReplayCase.from_dict(json.loads(json.dumps(case.to_dict())))
    assert back == case and back.decoys[0].names == ("model.layers.4.mlp",)
    older = case.to_dict()
    del older["decoys"], older["dither_runs"]  # a replay written before decoys and averaging existed
    assert ReplayCase.from_dict(older).decoys == () and ReplayCase.from_dict(older).dither_runs == 1
    averaged = ReplayCase("c0001", arm, "bf16", {"kind": "culprit"}, None, None, dither_runs=4)
    assert ReplayCase.from_dict(json.loads(json.dumps(averaged.to_dict()))).dither_runs == 4
    decoy = Causal("refuted", "why", 0.1, 0.01, names=("model.layers.4.mlp",), decoy="next layer",
                   necessity_share=0.1, necessity_cosine=0.2, necessity_rule="direction", dither_runs=4)
    assert Causal.from_dict(json.loads(json.dumps(decoy.to_dict()))) == decoy
    before = decoy.to_dict()
    for key in ("necessity_share", "necessity_cosine", "necessity_rule", "dither_runs"):
        del before[key]  # a document judged before necessity was judged on the logits' change
    assert Causal.from_dict(before).necessity_rule is None and Causal.from_dict(before).dither_runs == 1


def test_the_cases_csv_has_the_necessity_share(tmp_path: Path) -> None:
    import csv

    document = _document()
    document["cases"][0].update(subject="gsm8k", key="0",
                                baselines={"first_cosine_below": None, "largest_jump": None})
    document["cases"][0]["causal"].update(necessity_share=0.83, necessity_cosine=0.61, necessity_rule="direction",
                                          necessity_recovered=0.4, sufficiency_null_max=0.52, dither_runs=4)
    outputs.write_cases_csv(tmp_path / "cases.csv", document["cases"])
    (row,) = csv.DictReader((tmp_path / "cases.csv").open(encoding="utf-8"))
    assert row["sufficiency_null_max"] == "0.52"  # sufficiency's null: the random changes' largest cosine
    assert (row["necessity_share"], row["necessity_cosine"], row["necessity_rule"]) == ("0.83", "0.61", "direction")
    assert row["necessity_recovered"] == "0.4"  # the KL fraction, still reported
    assert row["dither_runs"] == "4"  # how many realizations of the roundoff the changes were averaged over
