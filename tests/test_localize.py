"""localize on the real tiny model: a planted defect found at its layer and module (and head), a healthy pair
with no culprit, a global defect diffuse, golden's tensors rebuilt exactly, in-memory planting equal to the
planted folders, the refusals, and the two-process flow through the CLI with only folders between the sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logitsdump.demo import examples
from logitsdump.demo.defects import Defect, plant, write_defective_model, write_model_yaml
from logitsdump.errors import DataError
from logitsdump.localize.run_judge import JudgeOptions, judge
from logitsdump.localize.run_record import RecordOptions, record
from logitsdump.localize.run_replay import ReplayOptions, replay
from logitsdump.localize.verdict import DITHER_RUNS, NULL_DRAWS

from helpers import run_cli

pytestmark = pytest.mark.slow

KEYS = (0, 1, 2)
TOKENS = 4


def _quiet(_message: str) -> None:
    pass


def _dump(out: Path, model_yaml: Path, keys: Path, replay_from: Path | None = None) -> Path:
    runner = (f"logitsdump eval --model_config_path {model_yaml} --task_config_path {examples.task_config('gsm8k')} "
              f"--batch_size 1 --output_dir {out} --device cpu")
    extra = ["--replay", str(replay_from), "--replay-mode", "prefill"] if replay_from else []
    done = run_cli("dump", "-bcr", str(keys), "-tr", str(TOKENS), *extra, "-e", runner)
    assert done.returncode == 0, done.stderr[-2000:]
    (manifest,) = out.rglob("manifest.jsonl")
    return manifest.parent


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> dict[str, Path]:
    """The tiny model's golden dump (fp32, 3 gsm8k cases, 4 tokens) and its stats-mode record (bf16 control)."""
    base = tmp_path_factory.mktemp("localize")
    keys = base / "keys.csv"
    keys.write_text("key\n" + "".join(f"{k}\n" for k in KEYS), encoding="utf-8")
    dump = _dump(base / "golden", examples.model_config("fp32"), keys)
    rec = base / "record"
    record(RecordOptions(model_config_path=str(examples.model_config("fp32")), output_dir=str(rec),
                         golden_dump=str(dump), test_dtypes=("bf16",), device="cpu"), say=_quiet)
    return {"base": base, "dump": dump, "record": rec, "keys": keys}


def _planted_yaml(folder: Path, defect: Defect | None, attn_note: str = "") -> Path:
    model = examples.TINY_MODEL if defect is None else write_defective_model(examples.TINY_MODEL, folder / "m", defect)
    needs_code = defect is not None and defect.needs_code
    return write_model_yaml(folder / "test.yaml", model, "tiny_test", "bf16", trust_remote_code=needs_code)


def _localise(golden: dict[str, Path], tmp_path: Path, defect: Defect | None, attn: str | None = None,
              decoys: bool = False):
    test_yaml = _planted_yaml(tmp_path, defect)
    replay(ReplayOptions(str(golden["record"]), str(test_yaml), str(tmp_path / "replay"), device="cpu", attn=attn,
                         decoys=decoys), say=_quiet)
    return judge(JudgeOptions(str(golden["record"]), str(tmp_path / "replay"), str(tmp_path / "out"),
                              model_config_path=str(examples.model_config("fp32")), device="cpu"), say=_quiet)


def test_a_dropped_head_is_found_at_its_layer_module_and_head(golden, tmp_path: Path) -> None:
    result = _localise(golden, tmp_path, Defect("zero-head", layer=1, head=2), decoys=True)
    assert len(result.cases) == len(KEYS)
    for case in result.cases:
        verdict = case["verdict"]
        assert (verdict["kind"], verdict["layer"], verdict["module"], verdict["head"]) == ("culprit", 1, "self_attn", 2)
        assert verdict["score"] > 10
        assert case["causal"]["outcome"] in ("confirmed", "untestable"), case["causal"]
        if case["causal"]["outcome"] == "confirmed":
            causal = case["causal"]
            assert causal["sufficiency_cosine"] > causal["sufficiency_null_max"] and causal["sufficiency_share"] >= 0.5
            assert causal["sufficiency_null_draws"] == NULL_DRAWS
            # necessity on the change of the logits the patch removes (the replay kept the necessity run's logits)
            assert case["causal"]["necessity_rule"] == "direction" and case["causal"]["necessity_share"] >= 0.5
            # testable: the changes averaged over realizations of the roundoff, the decoys' alike
            assert causal["dither_runs"] == DITHER_RUNS and "realizations of the roundoff" in causal["reason"]
            assert {d["dither_runs"] for d in case["decoys"] if d["necessity_rule"]} == {DITHER_RUNS}
            # the wrong candidates beside it (the next layer's attention, the next module, a random change of the
            # culprit's size) are refuted; the culprit's own change moved one layer on may pass (not asserted);
            # taking out the next layer's own error leaves the test's change where it was
            kinds = {d["decoy"]: d for d in case["decoys"]}
            for kind in ("next layer", "next module", "random direction"):
                assert kinds[kind]["outcome"] == "refuted", kinds[kind]
            assert kinds["next layer"]["necessity_rule"] == "direction"
            assert kinds["next layer"]["necessity_holds"] is False, kinds["next layer"]
    assert any(c["causal"]["outcome"] == "confirmed" for c in result.cases)
    (cases_csv,) = (tmp_path / "out").glob("localize_cases_*.csv")
    header = cases_csv.read_text().splitlines()[0].split(",")
    assert {"necessity_share", "necessity_cosine", "necessity_rule"} <= set(header)
    _without_necessity_logits(tmp_path / "replay")  # a replay written before they were kept: the KL rule
    older = judge(JudgeOptions(str(golden["record"]), str(tmp_path / "replay"), str(tmp_path / "older"),
                               model_config_path=str(examples.model_config("fp32")), device="cpu"), say=_quiet)
    for case in older.cases:
        if case["causal"]["outcome"] in ("confirmed", "refuted"):
            assert case["causal"]["necessity_rule"] == "kl" and case["causal"]["necessity_share"] is None
            assert "judged on the KL" in case["causal"]["reason"]
            assert (case["causal"]["necessity_recovered"] >= 0.5) == case["causal"]["necessity_holds"]
    assert result.run.kind == "culprit" and result.run.site == "L1.self_attn"
    msprobe = json.loads(Path(result.cases[0]["msprobe_config"]).read_text())
    assert msprobe["tensor"]["scope"][0] == "Module.model.layers.1.self_attn.LlamaAttention.forward.0"
    assert msprobe["step"] == [result.cases[0]["focus_step"]]


def _without_necessity_logits(replay_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    for path in replay_dir.glob("case_*.safetensors"):
        kept = {k: v for k, v in load_file(str(path)).items() if not k.startswith("logits:necessity:")}
        save_file(kept, str(path))


def test_a_norm_epsilon_is_found_in_that_norm(golden, tmp_path: Path) -> None:
    result = _localise(golden, tmp_path, Defect("norm-eps", layer=0, module="input_layernorm", value=1e-2))
    for case in result.cases:
        assert (case["verdict"]["kind"], case["verdict"]["layer"], case["verdict"]["module"]) == (
            "culprit", 0, "input_layernorm"), case["verdict"]


def test_a_healthy_pair_has_no_culprit(golden, tmp_path: Path) -> None:
    result = _localise(golden, tmp_path, None, attn="eager")  # another bf16 implementation than the control's sdpa
    assert [c["verdict"]["kind"] for c in result.cases] == ["none"] * len(KEYS), [c["verdict"] for c in result.cases]
    assert result.run.kind == "none"


def test_a_global_defect_is_diffuse_and_names_the_rotary_embedding(golden, tmp_path: Path) -> None:
    result = _localise(golden, tmp_path, Defect("rope-base", value=500.0))
    for case in result.cases:
        assert case["verdict"]["kind"] == "diffuse" and case["verdict"]["common_cause"] == "rotary_emb"


def test_golden_tensors_rebuild_exactly_from_the_record(golden) -> None:
    from logitsdump.localize import passes
    from logitsdump.localize.candidates import Structure
    from logitsdump.localize.compact import rebuild
    from logitsdump.localize.files import RecordFolder
    from logitsdump.localize.models import load

    folder = RecordFolder(golden["record"])
    entry = folder.case(folder.ids[0])
    built = rebuild(entry.refs, folder.tensors(entry), entry.checksums)
    backend = load(str(examples.model_config("fp32")), device="cpu")
    captured = passes.capture(backend.model, list(entry.token_ids), Structure.from_dict(folder.header["structure"]))
    import torch

    assert set(built) == {name for name, _ in captured.events}
    for name, tensor in captured.events:
        assert torch.equal(built[name], tensor), name
    per_layer = entry.stored_bytes / (len(entry.token_ids) * folder.header["structure"]["layers"])
    assert per_layer < 12 * 64 * 4  # four hidden vectors a layer, plus the model-level ones shared


def test_averaged_logits_start_with_the_plain_run_and_dither_alike_on_every_call(golden) -> None:
    import torch

    from logitsdump.localize import passes
    from logitsdump.localize.files import RecordFolder
    from logitsdump.localize.models import load

    torch.set_num_threads(1)
    folder = RecordFolder(golden["record"])
    tokens = list(folder.case(folder.ids[0]).token_ids)
    model = load(str(examples.model_config("fp32")), device="cpu", data_type="bf16").model
    plain = passes.prefill(model, tokens).logits[0, -1].float()
    mean, first = passes.averaged_logits(model, tokens, "c0000", 4)
    assert torch.equal(first, plain)  # run 0 is the plain prefill
    again, _ = passes.averaged_logits(model, tokens, "c0000", 4, first=plain)
    assert torch.equal(again, mean)  # the same seed dithers alike (what the two machines rely on)
    assert not torch.equal(mean, plain)  # the dithered runs are other realizations of the roundoff
    # ... of the roundoff only: one rounding at the input moves the logits by about what bf16 rounding does
    fp32 = load(str(examples.model_config("fp32")), device="cpu").model
    reference = passes.prefill(fp32, tokens).logits[0, -1].float()
    assert (mean - plain).norm() < 2 * (plain - reference).norm()
    other, _ = passes.averaged_logits(model, tokens, "c0001", 4)
    assert not torch.equal(other, mean)  # another case, other draws
    head = next(n for n, _ in model.named_modules() if n.endswith("layers.0.mlp"))
    zero = torch.zeros(1, len(tokens), model.config.hidden_size)
    patched, patched_first = passes.averaged_logits(model, tokens, "c0000", 4, name=head, change=zero, how="add")
    assert torch.equal(patched_first, plain) and torch.equal(patched, mean)  # a zero patch changes nothing
    assert torch.equal(passes.averaged_logits(model, tokens, "c0000", 1)[0], plain)  # one run: the plain one


@pytest.mark.parametrize("defect", [
    Defect("zero-head", layer=1, head=1), Defect("scale-mlp", layer=0, factor=1.1),
    Defect("round-weights", layer=1, module="mlp.up_proj", bits=3), Defect("rope-base", value=500.0),
    Defect("norm-eps", layer=1, module="post_attention_layernorm", value=0.5), Defect("fp16-norm", layer=0),
    Defect("rms-eps", value=1e-2), Defect("scale-q", layer=1, factor=1.2),
    Defect("scale-norm", layer=0, module="input_layernorm", factor=1.1),
])
def test_planting_in_memory_equals_the_planted_folder(defect: Defect, tmp_path: Path) -> None:
    import torch

    from logitsdump.localize.models import load

    folder = write_defective_model(examples.TINY_MODEL, tmp_path / "m", defect)
    planted = load(str(write_model_yaml(tmp_path / "p.yaml", folder, "p", "fp32", trust_remote_code=defect.needs_code)),
                   device="cpu")
    memory = load(str(examples.model_config("fp32")), device="cpu")
    ids = torch.tensor([[5, 17, 33, 2, 90, 101, 7, 250]])
    with torch.inference_mode():
        before = memory.model(input_ids=ids).logits
        undo = plant(memory.model, defect)
        after = memory.model(input_ids=ids).logits
        expected = planted.model(input_ids=ids).logits
        undo()
        restored = memory.model(input_ids=ids).logits
    assert torch.equal(after, expected)
    assert not torch.equal(after, before) and torch.equal(restored, before)


def test_the_vllm_backend_and_a_runner_command_are_refused_with_the_msprobe_handoff(golden, tmp_path: Path) -> None:
    vllm_yaml = tmp_path / "vllm.yaml"
    vllm_yaml.write_text(f"model_name: tiny\nmodel_path: {examples.TINY_MODEL}\ndata_type: bf16\n"
                         "requested_gpu_framework: Vllm\n", encoding="utf-8")
    done = run_cli("localize", "replay", "--record", str(golden["record"]), "--model_config_path", str(vllm_yaml),
                   "-o", str(tmp_path / "rep"))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot hook the Vllm backend" in done.stderr and "msprobe" in done.stderr
    handoff = json.loads((tmp_path / "rep" / "msprobe_config.json").read_text())
    assert handoff["level"] == "L0" and handoff["step"] == [TOKENS - 1]
    done = run_cli("localize", "record", "--golden-dump", str(golden["dump"]), "--model_config_path",
                   str(examples.model_config("fp32")), "-e", "modeltest --model_config_path x.yaml",
                   "-o", str(tmp_path / "rec"))
    assert done.returncode == 2 and "another program" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (tmp_path / "rec" / "msprobe_config.json").is_file()
    assert not (tmp_path / "rec" / "localize_record.json").exists()


def test_a_replay_of_another_record_is_refused(golden, tmp_path: Path) -> None:
    other = tmp_path / "other"
    record(RecordOptions(model_config_path=str(examples.model_config("fp32")), output_dir=str(other),
                         golden_dump=str(golden["dump"]), keys=("0",), test_dtypes=("bf16",), device="cpu"), say=_quiet)
    replay(ReplayOptions(str(other), str(_planted_yaml(tmp_path, None)), str(tmp_path / "rep"), device="cpu"),
           say=_quiet)
    with pytest.raises(DataError, match="replay of another record"):
        judge(JudgeOptions(str(golden["record"]), str(tmp_path / "rep"), str(tmp_path / "out")), say=_quiet)


def test_the_two_sides_run_as_separate_processes_through_the_cli(golden, tmp_path: Path) -> None:
    """golden dump, test dump replayed, compare; then record (golden), replay (test), judge (golden), report:
    every step a process of its own, only folders between them."""
    planted = _planted_yaml(tmp_path, Defect("zero-head", layer=1, head=2))
    test_dump = _dump(tmp_path / "test", planted, golden["keys"], replay_from=golden["dump"])
    done = run_cli("compare", "-gp", str(golden["dump"]), "-mp", str(test_dump), "-o", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    fp32 = str(examples.model_config("fp32"))
    done = run_cli("localize", "record", "-c", str(tmp_path / "cmp"), "--keys", ",".join(map(str, KEYS)),
                   "--model_config_path", fp32, "--device", "cpu", "-o", str(tmp_path / "rec"))
    assert done.returncode == 0, done.stderr
    assert "KB per token per layer" in done.stdout and "control arm bf16" in done.stdout  # the test dtype from compare
    done = run_cli("localize", "replay", "--record", str(tmp_path / "rec"), "--model_config_path", str(planted),
                   "--device", "cpu", "-o", str(tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    done = run_cli("localize", "judge", "--record", str(tmp_path / "rec"), "--replay", str(tmp_path / "rep"),
                   "--model_config_path", fp32, "--device", "cpu", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "run: culprit(L1.self_attn)" in done.stdout
    (document,) = (tmp_path / "out").glob("localize_cases_*.json")
    cases = json.loads(document.read_text())["cases"]
    assert all(c["verdict"]["label"] == "culprit(1, self_attn, head 2)" for c in cases)
    (csv_file,) = (tmp_path / "out").glob("localize_candidates_*.csv")
    assert "L1.self_attn" in csv_file.read_text()
    done = run_cli("report", str(tmp_path / "cmp"), "--localize", str(tmp_path / "out"), "-o",
                   str(tmp_path / "page.html"))
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "page.html").read_text()
    assert 'id="localize"' in page and "culprit(1, self_attn, head 2)" in page and '<svg class="depth"' in page


def test_tensors_mode_measures_the_ops_of_the_top_sites(golden, tmp_path: Path) -> None:
    rec = tmp_path / "record"
    record(RecordOptions(model_config_path=str(examples.model_config("fp32")), output_dir=str(rec),
                         golden_dump=str(golden["dump"]), keys=("0",), test_dtypes=("bf16",), keep="tensors",
                         ops_at=(1,), device="cpu"), say=_quiet)
    header = json.loads((rec / "localize_record.json").read_text())
    ops = [c["module"] for c in header["structure"]["candidates"] if c["kind"] == "op"]
    assert ops == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                   "mlp.up_proj", "mlp.down_proj"]
    assert header["bytes"] > json.loads((golden["record"] / "localize_record.json").read_text())["bytes"] / 3
    test_yaml = _planted_yaml(tmp_path, Defect("round-weights", layer=1, module="self_attn.v_proj", bits=1))
    replay(ReplayOptions(str(rec), str(test_yaml), str(tmp_path / "replay"), device="cpu"), say=_quiet)
    result = judge(JudgeOptions(str(rec), str(tmp_path / "replay"), str(tmp_path / "out"),
                                model_config_path=str(examples.model_config("fp32")), device="cpu"), say=_quiet)
    verdict = result.cases[0]["verdict"]
    assert verdict["kind"] == "culprit" and verdict["layer"] == 1, verdict
    assert set(verdict["module"].split("+")) == {"self_attn", "self_attn.v_proj"}  # the op inside the module


def test_a_test_dtype_without_a_control_arm_is_inconclusive_and_says_why(golden, tmp_path: Path) -> None:
    replay(ReplayOptions(str(golden["record"]), str(examples.model_config("fp32")), str(tmp_path / "replay"),
                         device="cpu"), say=_quiet)  # the record has a bf16 control arm only
    result = judge(JudgeOptions(str(golden["record"]), str(tmp_path / "replay"), str(tmp_path / "out")), say=_quiet)
    assert {c["verdict"]["kind"] for c in result.cases} == {"inconclusive"}
    assert "no control arm in the test's dtype (fp32)" in result.cases[0]["verdict"]["reason"]
    assert result.run.kind == "inconclusive"
