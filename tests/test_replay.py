"""Teacher-forced replay: `dump --replay GOLDEN_DIR` feeds the golden tokens, step t against step t."""

from __future__ import annotations

import json

import pytest
import torch

from logitsdump import store
from logitsdump.demo import examples
from logitsdump.errors import ConfigError
from logitsdump.runner.evaluate import EvalOptions, run_eval

from helpers import run_cli

pytestmark = pytest.mark.slow  # every test dumps from the tiny model


def dump(tmp_path, monkeypatch, dtype, case_list="[1, 4, 9]", tokens=8, replay=None, mode="step", task="gsm8k"):
    monkeypatch.setenv("BAD_CASE_LOGITS_DUMP", "True")
    monkeypatch.setenv("LOGITS_DUMP_TOKEN_MAX_LENGTH", str(tokens))
    monkeypatch.setenv("BAD_CASE_LIST", case_list)
    if replay is not None:
        monkeypatch.setenv("LOGITSDUMP_REPLAY_DIR", str(replay))
        monkeypatch.setenv("LOGITSDUMP_REPLAY_MODE", mode)
    else:
        monkeypatch.delenv("LOGITSDUMP_REPLAY_DIR", raising=False)
    options = EvalOptions(str(examples.model_config(dtype)), str(examples.task_config(task)),
                          output_dir=str(tmp_path), device="cpu")
    return run_eval(options).layout.logits_dir


def load(folder, name):
    return torch.load(folder / name, weights_only=True)


def test_replay_of_itself_is_bit_identical_at_every_step(tmp_path, monkeypatch):
    golden = dump(tmp_path / "golden", monkeypatch, "fp32")
    replayed = dump(tmp_path / "replay", monkeypatch, "fp32", replay=golden)
    golden_records = {r.index: r for r in store.read_manifest(golden)}
    for record in store.read_manifest(replayed):
        assert record.files == golden_records[record.index].files
        assert record.output_token_ids == golden_records[record.index].output_token_ids[: len(record.files)]
        replay = record.extra["replay"]
        assert replay["mode"] == "step" and replay["golden_dir"] == str(golden.resolve())
        assert replay["own_tokens"] == list(record.output_token_ids[: len(record.files)])
        for name in record.files:
            assert torch.equal(load(replayed, name), load(golden, name))


def test_bf16_replay_follows_the_golden_tokens(tmp_path, monkeypatch):
    golden = dump(tmp_path / "golden", monkeypatch, "fp32")
    free = dump(tmp_path / "free", monkeypatch, "bf16")
    replayed = dump(tmp_path / "replay", monkeypatch, "bf16", replay=golden)
    golden_records = {r.index: r for r in store.read_manifest(golden)}
    free_records = {r.index: r for r in store.read_manifest(free)}
    diverged = 0
    for record in store.read_manifest(replayed):
        gold = golden_records[record.index]
        assert record.output_token_ids == gold.output_token_ids[: len(record.files)]  # fed, not chosen
        assert record.files == gold.files  # every golden step has a file
        own = record.extra["replay"]["own_tokens"]
        assert own == [int(load(replayed, name).argmax()) for name in record.files]
        assert load(replayed, record.files[0]).dtype == torch.bfloat16
        # step 0 has the same prefix in a free run and a replay
        assert torch.equal(load(replayed, record.files[0]), load(free, free_records[record.index].files[0]))
        diverged += own != list(gold.output_token_ids[: len(own)])
    assert diverged > 0  # bf16 would have chosen differently somewhere: that is what replay is for


def test_prefill_mode_scores_the_same_continuation(tmp_path, monkeypatch):
    golden = dump(tmp_path / "golden", monkeypatch, "fp32")
    step = dump(tmp_path / "step", monkeypatch, "fp32", replay=golden)
    prefill = dump(tmp_path / "prefill", monkeypatch, "fp32", replay=golden, mode="prefill")
    for record in store.read_manifest(prefill):
        assert record.extra["replay"]["mode"] == "prefill"
        for name in record.files:
            assert torch.allclose(load(prefill, name), load(step, name), atol=1e-4, rtol=1e-4)


def test_forward_only_task_replays_token_zero(tmp_path, monkeypatch):
    golden = dump(tmp_path / "golden", monkeypatch, "fp32", case_list="[2, 3]", task="boolq")
    replayed = dump(tmp_path / "replay", monkeypatch, "bf16", case_list="[2, 3]", task="boolq", replay=golden)
    records = store.read_manifest(replayed)
    assert [len(r.files) for r in records] == [1, 1]
    assert all("replay" in r.extra for r in records)


def test_golden_without_manifest_is_refused(tmp_path, monkeypatch):
    golden = dump(tmp_path / "golden", monkeypatch, "fp32")
    (golden / store.MANIFEST_NAME).unlink()
    with pytest.raises(ConfigError, match=r"no manifest\.jsonl"):
        dump(tmp_path / "replay", monkeypatch, "bf16", replay=golden)


def test_changed_prompt_is_refused_for_that_case(tmp_path, monkeypatch, caplog):
    golden = dump(tmp_path / "golden", monkeypatch, "fp32")
    lines = (golden / store.MANIFEST_NAME).read_text().splitlines()
    first = json.loads(lines[0])
    first["prompt_sha256"] = "0" * 64
    (golden / store.MANIFEST_NAME).write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    replayed = dump(tmp_path / "replay", monkeypatch, "bf16", replay=golden)
    assert [r.index for r in store.read_manifest(replayed)] == [4, 9]
    assert "prompt hash differs" in caplog.text


def test_cli_replay_flags(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("key\n1\n4\n")
    runner = (f"logitsdump eval --model_config_path {examples.model_config('fp32')} "
              f"--task_config_path {examples.task_config('gsm8k')} --output_dir {tmp_path / 'g'}")
    assert run_cli("dump", "-bcr", str(bad), "-tr", "4", "-e", runner).returncode == 0
    golden = next((tmp_path / "g").rglob("logits"))
    replay_runner = runner.replace("fp32.yaml", "bf16.yaml").replace(str(tmp_path / "g"), str(tmp_path / "t"))
    done = run_cli("dump", "-bcr", str(bad), "-tr", "4", "--replay", str(golden), "-e", replay_runner)
    assert done.returncode == 0, done.stderr
    assert "2 cases, 8 files" in done.stdout
    missing = run_cli("dump", "-bcr", str(bad), "--replay", str(tmp_path / "nope"), "-e", replay_runner)
    assert missing.returncode == 2 and "not a folder" in missing.stderr
    modeltest = run_cli("dump", "-bcr", str(bad), "--replay", str(golden), "-e", "modeltest --x 1")
    assert modeltest.returncode != 0
