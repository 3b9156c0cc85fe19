"""The server backend against a small fake server (tests/fake_server.py): what it sends, what it records,
and what it does when the server refuses logprobs, caps k, fails, drops connections or answers slowly.
The real `vllm serve` is tested by scripts/smoke_server.sh."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from fake_server import FakeServer, HFModel, SyntheticModel
from logitsdump import store
from logitsdump.demo import examples
from logitsdump.errors import ConfigError, DataError
from logitsdump.runner.backends.openai import server_settings
from logitsdump.runner.evaluate import EvalOptions, run_eval
from logitsdump.topkfile import read_topk

TOKENS = 4


def task_file(tmp_path: Path, length: int = 6) -> Path:
    """The shipped gsm8k YAML with short outputs and an absolute dataset path."""
    from logitsdump.runner.config import load_task_config, resolve_dataset_root

    shipped = examples.task_config("gsm8k")
    data = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    data["local_dataset_path"] = str(resolve_dataset_root(load_task_config(shipped)).resolve())
    data["requested_max_output_length"] = length
    path = tmp_path / "gsm8k.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def model_file(tmp_path: Path, url: str, **server) -> Path:
    settings = {"base_url": url, "api": "vllm", "top_k": 5, "retries": 2, "backoff": 0.0, "timeout": 5.0, **server}
    data = {"model_name": "tiny_server", "model_path": str(examples.TINY_MODEL), "model_type": "pa",
            "data_type": "fp32", "requested_gpu_framework": "Server", "server": settings}
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def evaluate(tmp_path: Path, url: str, monkeypatch, *, cases: str | None = None, out: str = "out",
             replay_dir: Path | None = None, resume: bool = False, batch: int = 1, length: int = 6, **server):
    if cases is not None:
        monkeypatch.setenv("BAD_CASE_LOGITS_DUMP", "True")
        monkeypatch.setenv("LOGITS_DUMP_TOKEN_MAX_LENGTH", str(TOKENS))
        monkeypatch.setenv("BAD_CASE_LIST", cases)
    if replay_dir is not None:
        monkeypatch.setenv("LOGITSDUMP_REPLAY_DIR", str(replay_dir))
        monkeypatch.setenv("LOGITSDUMP_REPLAY_MODE", "prefill")
    if resume:
        monkeypatch.setenv("LOGITSDUMP_RESUME", "1")
    options = EvalOptions(str(model_file(tmp_path, url, **server)), str(task_file(tmp_path, length)),
                          output_dir=str(tmp_path / out), device="cpu", batch_size=batch, save_debug=True)
    return run_eval(options)


def test_settings_name_every_problem_in_one_line(monkeypatch):
    with pytest.raises(ConfigError) as err:
        server_settings({"api": "tgi", "top_k": 0, "concurrency": 0, "timeout": "x", "colour": 1})
    text = str(err.value)
    for part in ("base_url' is required", "'api' must be one of", "'top_k' must be >= 1", "'timeout' must be float",
                 "unknown key 'colour'", "'concurrency' must be >= 1"):
        assert part in text
    assert "\n" not in text
    with pytest.raises(ConfigError, match="at most 5 logprobs"):
        server_settings({"base_url": "http://h:1", "api": "mindie", "top_k": 20})
    with pytest.raises(ConfigError, match="unnormalised logits"):
        server_settings({"base_url": "http://h:1", "logprobs_mode": "raw_logits", "top_k": 20})
    monkeypatch.setenv("LOGITSDUMP_SERVER", '{"base_url": "http://other:2", "top_k": -1}')
    settings = server_settings({"base_url": "http://h:1", "top_k": 5})
    assert (settings.base_url, settings.top_k) == ("http://other:2", -1)


def test_dump_writes_topk_files_sends_every_sampling_field_and_records_the_server(tmp_path, monkeypatch):
    with FakeServer(SyntheticModel()) as server:
        result = evaluate(tmp_path, server.url, monkeypatch, cases="[1, 4]")
    folder = result.layout.logits_dir
    records = store.read_manifest(folder)
    assert [r.index for r in records] == [1, 4]
    for record in records:
        assert record.files == tuple(store.topk_file_name(record.subject, record.index, t) for t in range(TOKENS))
        steps = [read_topk(folder / name) for name in record.files]
        assert [s.chosen_id for s in steps] == list(record.output_token_ids[:TOKENS])
        assert all(len(s.ids) == 5 and s.k == 5 and s.mode == "raw_logprobs" for s in steps)
        assert record.logits_kind == "top5_raw_logprobs" and record.logits_dtype == "float64"
        assert record.extra["topk"] == {"k": 5, "logprobs_mode": "raw_logprobs"}
        assert record.extra["server"]["endpoints"]["/version"] == {"version": "0.32.0-fake"}
        assert record.extra["server"]["model"] == "fake-model"  # the only one /v1/models lists
        assert record.extra["server_requests"]["requests"] == 1
    sent = [b for b in server.state.requests]
    assert [b["prompt"] for b in sent] == [list(r.input_token_ids) for r in records]  # token ids, not text
    for body in sent:
        assert body["temperature"] == 0.0 and body["top_p"] == 1.0 and body["top_k"] == -1 and body["seed"] == 0
        assert body["max_tokens"] == 6 and body["logprobs"] == 5 and body["return_tokens_as_token_ids"] is True
        assert body["repetition_penalty"] == 1.0 and body["presence_penalty"] == 0.0 and body["n"] == 1


def test_free_tokens_are_the_server_greedy_choice(tmp_path, monkeypatch):
    model = SyntheticModel()
    with FakeServer(model) as server:
        result = evaluate(tmp_path, server.url, monkeypatch)
    for outcome in result.outcomes[:3]:
        ids = list(outcome.input_token_ids)
        expected = []
        for _ in range(6):
            token = int(model.logprobs(ids + expected).argmax())
            expected.append(token)
        assert list(outcome.output_token_ids) == expected


@pytest.mark.parametrize(("api", "method", "requests_per_case"), [
    ("vllm", "prompt_logprobs", 1), ("sglang", "logprob_start_len", 1), ("vllm", "per_position", TOKENS),
])
def test_replay_scores_golden_tokens(tmp_path, monkeypatch, api, method, requests_per_case):
    model = SyntheticModel()
    with FakeServer(model) as server:
        golden = evaluate(tmp_path, server.url, monkeypatch, cases="[2, 5]", out="golden").layout.logits_dir
        replayed = evaluate(tmp_path, server.url, monkeypatch, cases="[2, 5]", out="test", replay_dir=golden,
                            api=api, replay=method).layout.logits_dir
    golden_records = {r.index: r for r in store.read_manifest(golden)}
    for record in store.read_manifest(replayed):
        forced = list(golden_records[record.index].output_token_ids[:TOKENS])
        assert list(record.output_token_ids) == forced
        assert record.extra["replay"]["method"] == method
        assert record.extra["server_requests"]["requests"] == requests_per_case
        prompt = list(record.input_token_ids)
        for t, name in enumerate(record.files):
            step = read_topk(replayed / name)
            expected = model.logprobs(prompt + forced[:t])
            assert step.chosen_id == forced[t]
            assert step.chosen_logprob == pytest.approx(float(expected[forced[t]]), abs=1e-12)
            assert step.top_id == int(expected.argmax())


def test_sglang_requests_input_ids_and_raw_logprob_fields(tmp_path, monkeypatch):
    with FakeServer(SyntheticModel()) as server:
        evaluate(tmp_path, server.url, monkeypatch, cases="[1]", api="sglang", top_k=3)
    body = server.state.requests[0]
    assert body["input_ids"] and body["return_logprob"] is True and body["top_logprobs_num"] == 3
    assert body["logprob_start_len"] == -1 and body["sampling_params"]["temperature"] == 0.0
    assert body["sampling_params"]["max_new_tokens"] == 6 and body["sampling_params"]["ignore_eos"] is True
    assert "/get_server_info" in server.state.paths


def test_mindie_text_api_sends_text_and_maps_token_texts(tmp_path, monkeypatch):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(examples.TINY_MODEL)
    with FakeServer(SyntheticModel(ascii_only=True), tokenizer=tokenizer) as server:
        result = evaluate(tmp_path, server.url, monkeypatch, cases="[3]", api="mindie", top_k=5, model="m")
    body = server.state.requests[0]
    assert isinstance(body["prompt"], str) and body["logprobs"] == 5
    record = store.read_manifest(result.layout.logits_dir)[0]
    assert tokenizer(body["prompt"], add_special_tokens=False)["input_ids"] == list(record.input_token_ids)
    step = read_topk(result.layout.logits_dir / record.files[0])
    assert step.chosen_id == record.output_token_ids[0] and len(step.ids) <= 5


def test_a_server_that_refuses_logprobs_stops_the_run(tmp_path, monkeypatch):
    with FakeServer(SyntheticModel(), faults=["nologprobs"]) as server, pytest.raises(ConfigError, match="no logprobs"):
        evaluate(tmp_path, server.url, monkeypatch, cases="[1]")
    with FakeServer(SyntheticModel(), faults=["400logprobs"]) as server, \
            pytest.raises(ConfigError, match="--max-logprobs 5"):
        evaluate(tmp_path, server.url, monkeypatch, cases="[1]", top_k=5, out="again")
    assert server.posts() == 1  # a refusal is not retried


def test_a_server_that_caps_k_silently_is_recorded_as_it_answered(tmp_path, monkeypatch, caplog):
    with FakeServer(SyntheticModel(), cap=3) as server, caplog.at_level(logging.WARNING):
        result = evaluate(tmp_path, server.url, monkeypatch, cases="[1]", top_k=5)
    record = store.read_manifest(result.layout.logits_dir)[0]
    assert all(len(read_topk(result.layout.logits_dir / n).ids) == 3 for n in record.files)
    assert "returned 3 logprobs where 5 were asked" in caplog.text


def test_errors_dropped_connections_and_garbage_are_retried(tmp_path, monkeypatch):
    with FakeServer(SyntheticModel(), faults=["500", "drop", "429", "garbage"]) as server:
        result = evaluate(tmp_path, server.url, monkeypatch, cases="[1]", retries=4)
    record = store.read_manifest(result.layout.logits_dir)[0]
    assert record.extra["server_requests"] == {"failures": 0, "requests": 5, "retries": 4,
                                               "seconds": record.extra["server_requests"]["seconds"]}
    assert server.posts() == 5


def test_a_case_that_keeps_failing_is_missing_never_dropped_and_resume_resends_only_it(tmp_path, monkeypatch):
    faults = ["ok", "500", "500", "ok"]  # case 1 answers, case 4 fails twice (retries 1), case 7 answers
    with FakeServer(SyntheticModel(), faults=faults) as server:
        with pytest.raises(DataError, match=r"1 case\(s\) missing: the backend could not decode them \(keys 4;"):
            evaluate(tmp_path, server.url, monkeypatch, cases="[1, 4, 7]", retries=1)
        folder = tmp_path / "out" / "data" / "CPU" / "precision_test" / "gsm8k" / "fp32" / "tiny_server" / "logits"
        assert [r.index for r in store.read_manifest(folder)] == [1, 7]
        assert store.read_dump_summary(folder) == store.DumpSummary(3, 3, 2)
        before = server.posts()
        evaluate(tmp_path, server.url, monkeypatch, cases="[1, 4, 7]", retries=1, resume=True)
        assert server.posts() - before == 1  # only case 4 was sent again
    assert [r.index for r in store.read_manifest(folder)] == [1, 4, 7]


def test_a_slow_server_times_out_and_is_retried(tmp_path, monkeypatch):
    with FakeServer(SyntheticModel(), faults=["slow"], slow_seconds=1.5) as server:
        result = evaluate(tmp_path, server.url, monkeypatch, cases="[1]", timeout=0.5, retries=1)
    assert store.read_manifest(result.layout.logits_dir)[0].extra["server_requests"]["retries"] == 1
    with FakeServer(SyntheticModel(), faults=["slow", "slow"], slow_seconds=1.5) as server, \
            pytest.raises(DataError, match=r"no answer within 0\.5 s"):
        evaluate(tmp_path, server.url, monkeypatch, cases="[1]", timeout=0.5, retries=1, out="again")


def test_an_unreachable_server_is_a_one_line_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"cannot list its models .*Connection refused.*is it running"):
        evaluate(tmp_path, "http://127.0.0.1:9", monkeypatch, retries=0)


def test_batches_run_concurrently_in_order(tmp_path, monkeypatch):
    with FakeServer(SyntheticModel()) as server:
        one = evaluate(tmp_path, server.url, monkeypatch, out="one")
        four = evaluate(tmp_path, server.url, monkeypatch, out="four", batch=4, concurrency=4)
    assert [o.output_token_ids for o in one.outcomes] == [o.output_token_ids for o in four.outcomes]


@pytest.mark.slow
def test_through_a_server_of_the_real_tiny_model_tokens_and_logprobs_are_hf(tmp_path, monkeypatch):
    import torch

    from logitsdump.runner.backend import HFBackend, choose_device
    from logitsdump.runner.config import load_model_config

    hf = HFBackend(load_model_config(examples.model_config("fp32")), choose_device("cpu"))
    with FakeServer(HFModel(hf)) as server:
        result = evaluate(tmp_path, server.url, monkeypatch, cases="[1, 4, 7]", top_k=-1)
    folder = result.layout.logits_dir
    for record in store.read_manifest(folder):
        plain = hf.greedy([list(record.input_token_ids)], 6, keep_steps=TOKENS)[0]
        assert list(record.output_token_ids) == plain.output_ids
        for t, name in enumerate(record.files):  # top_k -1: the whole vocabulary, as logits files
            saved = torch.load(folder / name, weights_only=True)[0].double()
            expected = torch.log_softmax(plain.step_logits[t].double(), -1)
            # float32 files, and the fake computes each step by a forward pass of the whole prefix (HF's greedy
            # loop uses its KV cache): 1e-5 apart at most on this model
            assert float((saved - expected).abs().max()) < 1e-4


def test_a_task_judged_from_logits_uses_the_reported_top_k(tmp_path, monkeypatch):
    from logitsdump.runner.config import load_task_config, resolve_dataset_root

    shipped = examples.task_config("boolq")
    data = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    data["local_dataset_path"] = str(resolve_dataset_root(load_task_config(shipped)).resolve())
    task = tmp_path / "boolq.yaml"
    task.write_text(yaml.safe_dump(data), encoding="utf-8")
    model = SyntheticModel()
    with FakeServer(model) as server:
        options = EvalOptions(str(model_file(tmp_path, server.url, top_k=20)), str(task),
                              output_dir=str(tmp_path / "out"), device="cpu", save_debug=True)
        result = run_eval(options)
    assert all(b["max_tokens"] == 1 and b["logprobs"] == 20 for b in server.state.requests)
    import transformers

    from logitsdump.runner.tasks.boolq import choice_token_ids

    yes, no = choice_token_ids(transformers.AutoTokenizer.from_pretrained(examples.TINY_MODEL))
    assert len(result.outcomes) == 22
    for outcome in result.outcomes:  # a choice outside the top 20 counts as -inf
        lp = model.logprobs(list(outcome.input_token_ids))
        top = set(np.argsort(-lp)[:20].tolist())
        value = {t: (lp[t] if t in top else -np.inf) for t in (yes, no)}
        assert outcome.test_result == bool(value[yes] > value[no])
