"""The runner side of the logits dump: selection, file names, raw logits, manifest, resume."""

from __future__ import annotations

import pytest
import torch

from logitsdump import store
from logitsdump.demo import examples
from logitsdump.errors import ConfigError
from logitsdump.runner.backend import HFBackend, choose_device
from logitsdump.runner.config import load_model_config
from logitsdump.runner.evaluate import run_eval

from helpers import eval_options


def dump(tmp_path, monkeypatch, task, case_list, tokens, dtype="fp32", resume=False, fp32=False, batch_size=1):
    monkeypatch.setenv("BAD_CASE_LOGITS_DUMP", "True")
    monkeypatch.setenv("LOGITS_DUMP_TOKEN_MAX_LENGTH", str(tokens))
    monkeypatch.setenv("BAD_CASE_LIST", case_list)
    if resume:
        monkeypatch.setenv("LOGITSDUMP_RESUME", "1")
    if fp32:
        monkeypatch.setenv("LOGITSDUMP_LOGITS_FP32", "1")
    return run_eval(eval_options(tmp_path, task, dtype, batch_size=batch_size, save_debug=True))


def logits_files(folder):
    return sorted(p.name for p in folder.glob("*.pth"))


@pytest.mark.slow
def test_unsorted_duplicated_list_labels_files_by_true_index(tmp_path, monkeypatch):
    result = dump(tmp_path, monkeypatch, "gsm8k", "[7, 2, 7, 999, -1]", 3)
    folder = result.layout.logits_dir
    assert [o.key for o in result.outcomes] == ["2", "7"]  # original keys, dataset order
    assert logits_files(folder) == sorted(
        f"logits_GSM8K.jsonl_{i}_{t}.pth" for i in (2, 7) for t in range(3)
    )
    records = store.read_manifest(folder)
    assert [(r.index, r.key) for r in records] == [(2, "2"), (7, "7")]
    assert store.read_vocab(folder)[2] == "</s>"


@pytest.mark.slow
def test_dumped_logits_equal_plain_evaluation_bit_for_bit(tmp_path, monkeypatch):
    result = dump(tmp_path, monkeypatch, "gsm8k", "[4]", 10)
    folder = result.layout.logits_dir
    record = store.read_manifest(folder)[0]
    backend = HFBackend(load_model_config(examples.model_config("fp32")), choose_device("cpu"))
    plain = backend.greedy([list(record.input_token_ids)], 24, keep_steps=24)[0]
    assert len(record.files) == min(10, len(plain.output_ids))
    for t, name in enumerate(record.files):
        saved = torch.load(folder / name, weights_only=True)
        assert saved.shape == (1, backend.vocab_size) and saved.dtype == torch.float32
        assert torch.equal(saved[0], plain.step_logits[t])
        assert int(saved.argmax()) == record.output_token_ids[t] == plain.output_ids[t]


@pytest.mark.slow
def test_bf16_logits_keep_model_dtype_unless_asked(tmp_path, monkeypatch):
    folder = dump(tmp_path / "a", monkeypatch, "gsm8k", "[0]", 2, dtype="bf16").layout.logits_dir
    assert torch.load(next(folder.glob("*.pth")), weights_only=True).dtype == torch.bfloat16
    folder = dump(tmp_path / "b", monkeypatch, "gsm8k", "[0]", 2, dtype="bf16", fp32=True).layout.logits_dir
    assert torch.load(next(folder.glob("*.pth")), weights_only=True).dtype == torch.float32
    assert store.read_manifest(folder)[0].logits_dtype == "float32"


@pytest.mark.slow
def test_need_logits_task_saves_token_zero_only(tmp_path, monkeypatch):
    folder = dump(tmp_path, monkeypatch, "boolq", "[0, 3]", 10).layout.logits_dir
    assert logits_files(folder) == ["logits_dev.jsonl_0_0.pth", "logits_dev.jsonl_3_0.pth"]


@pytest.mark.slow
def test_mmlu_keys_count_globally_across_subjects(tmp_path, monkeypatch):
    plain = run_eval(eval_options(tmp_path / "plain", "mmlu_few_shots"))
    last = plain.outcomes[-1]
    folder = dump(tmp_path, monkeypatch, "mmlu_few_shots", f"[0, {last.key}]", 2).layout.logits_dir
    records = store.read_manifest(folder)
    assert {r.index for r in records} == {0, int(last.key)}
    assert {r.subject for r in records} == {plain.outcomes[0].subject, last.subject}


@pytest.mark.slow
def test_humaneval_dump_uses_int_indices(tmp_path, monkeypatch):
    result = dump(tmp_path, monkeypatch, "humaneval", "[3]", 4)
    assert [o.key for o in result.outcomes] == ["HumanEval/3"]
    names = logits_files(result.layout.logits_dir)
    assert names and all(n.startswith("logits_human-eval.jsonl_3_") for n in names)


def test_dump_refuses_batch_size_above_one(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="batch_size 1"):
        dump(tmp_path, monkeypatch, "gsm8k", "[1]", 2, batch_size=2)


@pytest.mark.slow
def test_resume_completes_a_partial_dump(tmp_path, monkeypatch):
    full = dump(tmp_path / "full", monkeypatch, "gsm8k", "[1, 2, 3]", 4).layout.logits_dir
    partial_root = tmp_path / "partial"
    folder = dump(partial_root, monkeypatch, "gsm8k", "[1, 2, 3]", 4).layout.logits_dir
    # simulate a crash during case 3: its manifest line is missing, one file half-done, one temp file left
    records = store.read_manifest(folder)
    store.rewrite_manifest(folder, records[:2])
    for name in records[2].files[1:]:
        (folder / name).unlink()
    (folder / ".logits_GSM8K.jsonl_3_1.pth.0a1b2c3d.tmp").write_bytes(b"partial")  # as fsutil names them
    resumed = dump(partial_root, monkeypatch, "gsm8k", "[1, 2, 3]", 4, resume=True)
    assert [o.key for o in resumed.outcomes] == ["3"]  # only the missing case was re-inferred
    assert logits_files(folder) == logits_files(full)
    for name in logits_files(full):
        assert torch.equal(torch.load(folder / name, weights_only=True), torch.load(full / name, weights_only=True))
    assert not list(folder.glob(".*.tmp"))
    assert [r.index for r in store.read_manifest(folder)] == [1, 2, 3]
