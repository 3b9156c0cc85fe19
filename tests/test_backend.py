"""The `Backend` protocol and the lazy registry keyed by the model YAML's `requested_gpu_framework`."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from logitsdump import store
from logitsdump.demo import examples
from logitsdump.errors import ConfigError, UserError
from logitsdump.runner.backends import REGISTRY, REQUIRES, Backend, Decoded, Provenance, backend_class
from logitsdump.runner.config import ModelConfig, load_model_config
from logitsdump.runner.device import Device
from logitsdump.runner.evaluate import run_eval

from helpers import cli_env, eval_options, run_cli

#: every member of the protocol the runner uses
MEMBERS = ("config", "device", "vocab_size", "tokenizer", "encode", "decode", "token_texts", "greedy",
           "last_logits", "prefill_logits", "provenance")


@pytest.mark.parametrize("name", ["Huggingface", "huggingface", "HUGGINGFACE", " HuggingFace "])
def test_lookup_by_name_in_any_case(name):
    from logitsdump.runner.backends.huggingface import HFBackend

    assert backend_class(name) is HFBackend


def _installed(name: str) -> bool:
    return name not in REQUIRES or importlib.util.find_spec(REQUIRES[name][0]) is not None


def test_every_registered_backend_resolves():
    for name in REGISTRY:
        if _installed(name):
            assert callable(backend_class(name))


def test_unknown_framework_names_the_known_ones():
    with pytest.raises(ConfigError) as info:
        backend_class("onnx")
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert "'onnx'" in message and "no such backend" in message
    assert all(name in message for name in REGISTRY)


NO_VLLM = pytest.mark.skipif(_installed("Vllm"), reason="vLLM is installed here (tests/test_vllm_backend.py runs it)")


@NO_VLLM
@pytest.mark.parametrize("name", ["Vllm", "vllm", "VLLM"])
def test_vllm_missing_names_the_extra(name):
    with pytest.raises(ConfigError, match=r"needs vllm, which is not installed") as info:
        backend_class(name)
    assert "logitsdump[vllm]" in str(info.value) and "\n" not in str(info.value)


def test_vllm_backend_module_imports_without_vllm():
    """The registry's module path is real, and importing it loads neither vLLM nor torch."""
    code = (
        "import sys, logitsdump.runner.backends as b, logitsdump.runner.backends.vllm as v\n"
        "assert b.REGISTRY['Vllm'] == v.__name__ + ':' + v.VllmBackend.__name__\n"
        "print(sorted(m for m in ('torch', 'vllm') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_registry_and_loop_import_no_framework():
    """Importing the registry, the loop, replay and the old backend module loads neither torch nor
    transformers; looking up a backend imports its module, which still loads no framework."""
    code = (
        "import sys\n"
        "import logitsdump.runner.backends as b, logitsdump.runner.evaluate, logitsdump.runner.replay\n"
        "assert 'logitsdump.runner.backends.huggingface' not in sys.modules, 'not lazy'\n"
        "b.backend_class('Huggingface')\n"
        "import logitsdump.runner.backend\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _yaml_with_framework(tmp_path: Path, framework: str) -> Path:
    source = examples.model_config("fp32")
    text = source.read_text(encoding="utf-8").replace("requested_gpu_framework: Huggingface",
                                                      f"requested_gpu_framework: {framework}")
    text = text.replace("model_path: ../../model/tiny_llama", f"model_path: {examples.TINY_MODEL}")
    path = tmp_path / f"model_{framework}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@NO_VLLM
def test_eval_with_vllm_yaml_is_one_line_error(tmp_path):
    model = _yaml_with_framework(tmp_path, "Vllm")
    done = run_cli("eval", "--model_config_path", str(model), "--task_config_path", str(examples.task_config("gsm8k")),
                   "--output_dir", str(tmp_path / "out"), "--device", "cpu")
    assert done.returncode == 1
    assert "logitsdump[vllm]" in done.stderr and str(model) in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@NO_VLLM
def test_eval_backend_flag_overrides_the_yaml(tmp_path):
    done = run_cli("eval", "--model_config_path", str(examples.model_config("fp32")), "--task_config_path",
                   str(examples.task_config("gsm8k")), "--output_dir", str(tmp_path / "out"), "--backend", "vllm")
    assert done.returncode == 1 and "--backend" in done.stderr and "logitsdump[vllm]" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_eval_backend_flag_is_checked_by_argparse(tmp_path):
    done = run_cli("eval", "--model_config_path", "m.yaml", "--task_config_path", "t.yaml", "--backend", "onnx")
    assert done.returncode == 2 and "huggingface" in done.stderr and "vllm" in done.stderr


@dataclass
class _Tokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1 + ord(ch) % 60 for ch in text][:40]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(48 + int(i) % 10) for i in ids)


class FakeBackend:
    """A model-free backend: every step's logits are one-hot-ish on (prompt length + step) % vocab."""

    vocab_size = 64

    def __init__(self, config: ModelConfig, device: Device, *, tensor_parallel: bool = False) -> None:
        self.config = config
        self.device = device
        self.tokenizer = _Tokenizer()

    def encode(self, query: str) -> list[int]:
        return self.tokenizer.encode(query)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return [f"<{int(i)}>" for i in ids]

    def _logits(self, position: int):
        import torch

        logits = torch.linspace(-1.0, 1.0, self.vocab_size)
        logits[position % self.vocab_size] = 5.0
        return logits

    def greedy(self, batch, max_new_tokens, keep_steps=0, forced=None, limits=None, stops=None):
        results = []
        for row, ids in enumerate(batch):
            steps = max_new_tokens if limits is None else limits[row]
            rows = [self._logits(len(ids) + t) for t in range(steps)]
            chosen = [int(r.argmax()) for r in rows]
            results.append(Decoded(chosen, rows[:keep_steps], rows[0].float().clone()))
        return results

    def last_logits(self, batch):
        return [self._logits(len(ids)) for ids in batch]

    def prefill_logits(self, prompt, continuation):
        return [self._logits(len(prompt) + t) for t in range(len(continuation))]

    def provenance(self) -> Provenance:
        return Provenance("fake://model", self.device.torch_device, {"fake": "1"})


def test_a_fake_backend_satisfies_the_protocol():
    fake = FakeBackend(load_model_config(examples.model_config("fp32")), Device("cpu", "CPU"))
    assert isinstance(fake, Backend)
    assert not isinstance(object(), Backend)


def test_the_loop_talks_only_to_the_protocol(tmp_path, monkeypatch):
    """run_eval and the dump work with a backend that is nothing but the protocol."""
    config = replace(load_model_config(examples.model_config("fp32")), model_name="fake")
    fake = FakeBackend(config, Device("cpu", "CPU"))
    result = run_eval(eval_options(tmp_path / "eval", "gsm8k", save_debug=True), backend=fake)
    assert result.outcomes and result.layout.debug_file.is_file()
    assert all(len(o.output_token_ids) == 12 for o in result.outcomes)  # the task YAML's output length

    monkeypatch.setenv("BAD_CASE_LOGITS_DUMP", "True")
    monkeypatch.setenv("LOGITS_DUMP_TOKEN_MAX_LENGTH", "3")
    monkeypatch.setenv("BAD_CASE_LIST", "[0, 2]")
    dumped = run_eval(eval_options(tmp_path / "dump", "gsm8k"), backend=fake)
    records = store.read_manifest(dumped.layout.logits_dir)
    assert [r.index for r in records] == [0, 2] and dumped.dumped_files == 6
    assert records[0].model_path == "fake://model" and records[0].versions == {"fake": "1"}
    assert records[0].output_tokens[0].startswith("<")


@pytest.fixture(scope="module")
def hf_backend():
    from logitsdump.runner.backends import load_backend
    from logitsdump.runner.device import choose_device

    return load_backend(load_model_config(examples.model_config("fp32")), choose_device("cpu"))


@pytest.mark.slow
def test_hf_backend_satisfies_the_protocol(hf_backend):
    from logitsdump.runner.backend import HFBackend  # the old import path still works

    assert type(hf_backend) is HFBackend and isinstance(hf_backend, Backend)
    assert all(hasattr(hf_backend, name) for name in MEMBERS)
    provenance = hf_backend.provenance()
    assert provenance.device == "cpu" and Path(provenance.model_path).is_dir()
    assert set(provenance.versions) == {"logitsdump", "torch", "transformers"}


@pytest.mark.slow
def test_hf_backend_logits_agree_across_its_entry_points(hf_backend):
    import torch

    prompt = hf_backend.encode("Question: what is two plus two? Answer:")
    free = hf_backend.greedy([prompt], 6, keep_steps=6)[0]
    assert len(free.step_logits) == len(free.output_ids) == 6
    assert all(row.shape == (hf_backend.vocab_size,) and row.dtype == torch.float32 for row in free.step_logits)
    assert free.output_ids == [int(row.argmax()) for row in free.step_logits]
    forced = hf_backend.greedy([prompt], 6, keep_steps=6, forced=[free.output_ids])[0]
    assert forced.own_ids == free.output_ids
    assert all(torch.equal(a, b) for a, b in zip(forced.step_logits, free.step_logits, strict=True))
    prefill = hf_backend.prefill_logits(prompt, free.output_ids)
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(prefill, free.step_logits, strict=True))
    (last,) = hf_backend.last_logits([prompt])
    assert torch.allclose(last, free.step_logits[0], atol=1e-4, rtol=1e-4)
    assert hf_backend.token_texts(free.output_ids[:1]) == [hf_backend.tokenizer.decode(free.output_ids[:1])]


def test_vllm_engine_arguments_ask_for_raw_full_vocabulary_logits(monkeypatch):
    from logitsdump.runner.backends import vllm as vllm_backend

    config = load_model_config(examples.model_config("bf16"))
    monkeypatch.delenv(vllm_backend.ENGINE_ARGS_ENV, raising=False)
    on_cpu = vllm_backend.engine_arguments("/m", config, Device("cpu", "CPU"))
    assert on_cpu["max_logprobs"] == -1 and on_cpu["logprobs_mode"] == "raw_logits"
    assert on_cpu["dtype"] == "bfloat16" and on_cpu["enable_prefix_caching"] is False
    assert on_cpu["enforce_eager"] is True and on_cpu["kv_cache_memory_bytes"] == vllm_backend.CPU_KV_CACHE_BYTES
    assert on_cpu["logits_processors"] == [vllm_backend.FORCED_PROCESSOR]
    on_gpu = vllm_backend.engine_arguments("/m", config, Device("cuda:0", "GPU"))
    assert "enforce_eager" not in on_gpu and "kv_cache_memory_bytes" not in on_gpu
    monkeypatch.setenv(vllm_backend.ENGINE_ARGS_ENV, '{"enforce_eager": false, "tensor_parallel_size": 2}')
    overridden = vllm_backend.engine_arguments("/m", config, Device("cpu", "CPU"))
    assert overridden["enforce_eager"] is False and overridden["tensor_parallel_size"] == 2
    for bad in ("{not json", "[1, 2]"):
        monkeypatch.setenv(vllm_backend.ENGINE_ARGS_ENV, bad)
        with pytest.raises(ConfigError, match=vllm_backend.ENGINE_ARGS_ENV):
            vllm_backend.engine_arguments("/m", config, Device("cpu", "CPU"))


def test_vllm_runs_its_v1_model_runner_unless_the_user_chose(monkeypatch):
    """ForcedTokens has V1's processor interface: vLLM 0.32's V2 runner (its default with Triton) refuses it."""
    from logitsdump.runner.backends import vllm as vllm_backend

    for name in vllm_backend.ENGINE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    vllm_backend.set_engine_environment()
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    vllm_backend.set_engine_environment()
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "1"
