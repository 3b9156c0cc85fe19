"""The vLLM backend: greedy decoding through `vllm.LLM`, with the raw logits of the whole vocabulary.

The engine is built with `max_logprobs=-1, logprobs_mode="raw_logits"`: a request with
`logprobs=-1` then gets, for every generated step, what the model computed for every token
of the vocabulary (copied before vLLM's logits processors and penalties), which this module
turns back into a [vocab] tensor of the model's dtype (vLLM hands them over as float32, a
lossless widening). Replay feeds the golden tokens through the same decode path with a
logits processor (`ForcedTokens`, applied after the raw logits were copied), or scores the
golden continuation in one pass with `prompt_logprobs=-1` (prefill mode).

Tokenization is the HF tokenizer's, as in the HF backend (`hf_tokenizer`); vLLM receives
token ids. Stopping follows the HF backend: the model's EOS ids, per-row limits, and a
task's stopping rule, applied to the generated ids (vLLM generates up to the row's limit and
the ids are cut after the first that satisfies the rule; the kept tokens are the same).

vLLM is imported when a model loads, not with this module (the registry checks that it is
installed first). Engine settings: see `engine_arguments`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import Any

from logitsdump.dtypes import TORCH_NAMES
from logitsdump.errors import ConfigError
from logitsdump.logs import get_logger
from logitsdump.runner.backends.base import Decoded, Provenance, StopRule
from logitsdump.runner.backends.describe import describe_model
from logitsdump.runner.backends.hf_tokenizer import TokenizerMethods, eos_ids, load_tokenizer
from logitsdump.runner.config import ModelConfig, resolve_model_path
from logitsdump.runner.device import Device
from logitsdump.runner.sampling import read_generation_config, resolve_settings

log = get_logger("backend")

#: JSON object of `vllm.LLM` keyword arguments that replace ours (e.g. `{"enforce_eager": false,
#: "kv_cache_memory_bytes": 8000000000, "tensor_parallel_size": 2}`).
ENGINE_ARGS_ENV = "LOGITSDUMP_VLLM_ENGINE_ARGS"
#: KV cache on the CPU unless ENGINE_ARGS_ENV says otherwise: small, the tiny model needs far less.
CPU_KV_CACHE_BYTES = 256 * 1024 * 1024
#: SamplingParams.extra_args key carrying a replay's forced tokens to `ForcedTokens`.
FORCED_KEY = "logitsdump_forced_tokens"
FORCED_PROCESSOR = "logitsdump.runner.backends.vllm_forcing:ForcedTokens"
#: vLLM settings the backend needs, set before vLLM loads unless the user set them:
#: - the engine in this process (no spawned engine core re-importing the caller's __main__);
#: - vLLM's V1 model runner: `ForcedTokens` has V1's logits-processor interface, and vLLM 0.32 picks its V2
#:   runner wherever Triton is installed (CUDA), whose loader refuses V1-interface processors at start-up.
ENGINE_ENVIRONMENT = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_V2_MODEL_RUNNER": "0"}


def set_engine_environment() -> None:
    """Set ENGINE_ENVIRONMENT's variables that the user has not set (before vLLM reads them)."""
    for name, value in ENGINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def engine_arguments(model_path: str, config: ModelConfig, device: Device) -> dict[str, Any]:
    """The `vllm.LLM` arguments: raw full-vocabulary logits, no prefix cache, and ENGINE_ARGS_ENV on top.

    On the CPU: eager mode (no minute-long compilation warm-up) and a 256 MiB KV cache.
    On CUDA and NPU: vLLM's defaults (graphs, `gpu_memory_utilization`), as a deployment runs.
    """
    arguments: dict[str, Any] = {
        "model": model_path,
        "tokenizer": model_path,
        "dtype": TORCH_NAMES[config.data_type],
        "trust_remote_code": config.trust_remote_code,
        "seed": 0,
        "max_logprobs": -1,
        "logprobs_mode": "raw_logits",
        "enable_prefix_caching": False,  # every prompt is computed, the same way each time
        "logits_processors": [FORCED_PROCESSOR],
    }
    if device.kind == "cpu":
        arguments.update(enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
    if config.max_position_embedding > 0:
        arguments["max_model_len"] = config.max_position_embedding
    override = os.environ.get(ENGINE_ARGS_ENV, "").strip()
    if override:
        try:
            extra = json.loads(override)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{ENGINE_ARGS_ENV} is not valid JSON: {err}") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"{ENGINE_ARGS_ENV} must be a JSON object of vllm.LLM arguments")
        arguments.update(extra)
    return arguments


class VllmBackend(TokenizerMethods):
    """A model loaded by `vllm.LLM` on the platform vLLM runs on (CUDA, CPU, or NPU through vllm-ascend)."""

    def __init__(self, config: ModelConfig, device: Device, *, tensor_parallel: bool = False) -> None:
        if tensor_parallel:
            raise ConfigError(
                "the vLLM backend runs its own tensor parallelism: start one process (no torchrun) and set "
                f'{ENGINE_ARGS_ENV}=\'{{"tensor_parallel_size": N}}\''
            )
        for name, value in config.env.items():
            os.environ[name] = value  # modeltest exports the model YAML's env before loading
        set_engine_environment()
        import torch
        import vllm
        from vllm.platforms import current_platform

        platform = str(current_platform.device_type or "cpu")
        if device.kind != platform:
            raise ConfigError(
                f"--device {device.torch_device}: the installed vLLM runs on {platform} (its build and plugins "
                "choose the platform); use --device auto or that device"
            )
        if device.torch_device.partition(":")[2] not in ("", "0"):
            raise ConfigError(
                f"--device {device.torch_device}: vLLM takes the first visible device; choose it with "
                "CUDA_VISIBLE_DEVICES (GPU) or ASCEND_RT_VISIBLE_DEVICES (NPU) and --device auto"
            )
        self.config = config
        self.device = device
        self.model_path = resolve_model_path(config)
        self.dtype = getattr(torch, TORCH_NAMES[config.data_type])
        try:
            self.tokenizer = load_tokenizer(self.model_path, config)
            import transformers

            model_config = transformers.AutoConfig.from_pretrained(
                self.model_path, trust_remote_code=config.trust_remote_code, local_files_only=True
            )
            try:
                generation_config = transformers.GenerationConfig.from_pretrained(self.model_path,
                                                                                  local_files_only=True)
            except OSError:  # no generation_config.json
                generation_config = None
            self.settings = resolve_settings(config.generation, read_generation_config(self.model_path))
            self.engine_arguments = engine_arguments(str(self.model_path), config, device)
            self.llm = vllm.LLM(**self.engine_arguments)
        except (OSError, ValueError, NotImplementedError, RuntimeError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot load the model from {self.model_path} with vLLM: {first_line}") from err
        self.eos_ids = eos_ids((generation_config, model_config), self.tokenizer)
        self._vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary size as vLLM computes logits for it (padding rows left out)."""
        return self._vocab_size

    def _params(self, max_tokens: int, full_logits: bool, forced: Sequence[int] | None = None,
                prompt_logits: bool = False) -> Any:
        from vllm import SamplingParams

        sampling: dict[str, Any] = {}
        if forced is None and not self.settings.argmax:  # the model YAML's `generation` (sampling.py)
            s = self.settings
            sampling["repetition_penalty"] = s.repetition_penalty
            if s.do_sample:
                sampling.update(temperature=s.temperature, top_p=s.top_p, seed=s.seed)
                if s.top_k > 0:
                    sampling["top_k"] = s.top_k
        return SamplingParams(
            temperature=sampling.pop("temperature", 0.0),
            **sampling,
            max_tokens=max(int(max_tokens), 1),
            ignore_eos=True,  # EOS is ours to decide (the same ids as the HF backend), never during a replay
            stop_token_ids=[] if forced is not None else sorted(self.eos_ids),
            logprobs=-1 if full_logits else None,
            prompt_logprobs=-1 if prompt_logits else None,
            flat_logprobs=True,
            detokenize=False,  # we decode ourselves; this also spares detokenizing the whole vocabulary per step
            extra_args={FORCED_KEY: [int(t) for t in forced]} if forced is not None else None,
        )

    def _generate(self, prompts: Sequence[Sequence[int]], params: Sequence[Any]) -> list[Any]:
        requests = [{"prompt_token_ids": [int(i) for i in ids]} for ids in prompts]
        outputs = list(self.llm.generate(requests, list(params), use_tqdm=False))  # in the order of requests
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM answered {len(outputs)} of {len(requests)} requests")
        return outputs

    def _row(self, flat: Any, position: int) -> Any:
        """Position `position` of a FlatLogprobs as a [vocab] tensor of the model's dtype."""
        import torch

        start, end = flat.start_indices[position], flat.end_indices[position]
        ids = torch.tensor(flat.token_ids[start:end], dtype=torch.long)
        values = torch.tensor(flat.logprobs[start:end], dtype=torch.float32)
        row = torch.full((self._vocab_size,), float("nan"), dtype=torch.float32)
        row[ids] = values
        covered = int(torch.zeros(self._vocab_size, dtype=torch.bool).index_fill_(0, ids, True).sum())
        if covered != self._vocab_size:
            raise RuntimeError(f"vLLM returned logits for {covered} of {self._vocab_size} tokens "
                               "(expected the whole vocabulary: max_logprobs=-1, logprobs=-1)")
        return row.to(self.dtype)

    def greedy(
        self,
        batch: Sequence[Sequence[int]],
        max_new_tokens: int,
        keep_steps: int = 0,
        forced: Sequence[Sequence[int]] | None = None,
        limits: Sequence[int] | None = None,
        stops: Sequence[StopRule | None] | None = None,
    ) -> list[Decoded]:
        """Greedy decoding of a batch (see `base.Backend.greedy`).

        Full-vocabulary logits are fetched only when a dump keeps steps or a replay forces tokens;
        a plain evaluation leaves `first_logits` None (generated cases are judged from their text;
        need_logits cases go through `last_logits`).
        """
        rows = len(batch)
        results = [Decoded([], [], None) for _ in range(rows)]
        todo = [row for row in range(rows) if forced is None or forced[row]]
        full = keep_steps > 0 or forced is not None
        params = []
        for row in todo:
            if forced is not None:
                params.append(self._params(len(forced[row]), True, forced[row]))
            else:
                limit = min(limits[row], max_new_tokens) if limits is not None else max_new_tokens
                params.append(self._params(limit, full))
        if not todo:
            return results
        outputs = self._generate([batch[row] for row in todo], params)
        for row, output in zip(todo, outputs, strict=True):
            completion = output.outputs[0]
            ids = [int(t) for t in completion.token_ids]
            if forced is None and stops is not None and stops[row] is not None:
                ids = _cut_at_stop(ids, stops[row])
            result = results[row]
            result.output_ids = ids
            if full:
                flat = completion.logprobs
                wanted = len(ids) if forced is not None else min(keep_steps, len(ids))
                steps = [self._row(flat, t) for t in range(max(wanted, 1 if ids else 0))]
                if steps:
                    result.first_logits = steps[0].float().clone()
                result.step_logits = steps[:keep_steps]
                if forced is not None:
                    result.own_ids = [int(step.argmax()) for step in steps]
                    if ids != [int(t) for t in forced[row]]:
                        raise RuntimeError(f"vLLM did not follow the forced tokens: {ids} != {list(forced[row])}")
        return results

    def last_logits(self, batch: Sequence[Sequence[int]]) -> list[Any]:
        """One step per sequence; the raw logits that predict its next token (model dtype, CPU)."""
        outputs = self._generate(batch, [self._params(1, True) for _ in batch])
        return [self._row(output.outputs[0].logprobs, 0) for output in outputs]

    def prefill_logits(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[Any]:
        """Replay in one pass: `prompt_logprobs=-1` over prompt + continuation; the raw logits that
        predict each continuation token (positions len(prompt)-1 ... end-1)."""
        ids = [*prompt, *continuation]
        output = self._generate([ids], [self._params(1, False, prompt_logits=True)])[0]
        flat = output.prompt_logprobs  # entry j scores token j from the positions before it (entry 0 is empty)
        return [self._row(flat, len(prompt) + t) for t in range(len(continuation))]

    def versions(self) -> dict[str, str]:
        """logitsdump's, torch's, transformers', vLLM's (and vllm-ascend's, where installed) versions."""
        import importlib.metadata

        import torch
        import transformers
        import vllm

        from logitsdump import __version__

        found = {"logitsdump": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                 "vllm": vllm.__version__}
        for extra in ("vllm-ascend", "torch-npu"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[extra.replace("-", "_")] = importlib.metadata.version(extra)
        return found

    def provenance(self) -> Provenance:
        """Model path, device, versions, the model folder, tokenizer and generation settings in effect, and
        the engine's settings (graphs or eager, prefix cache, chunked prefill, tensor parallel size)."""
        details = describe_model(self.model_path, self.tokenizer, use_chat_template=self.config.use_chat_template,
                                 settings=self.settings, eos_ids=self.eos_ids)
        details["engine"] = engine_record(self.engine_arguments, self.llm)
        return Provenance(model_path=str(self.model_path), device=self.device.torch_device, versions=self.versions(),
                          details=details)


#: Engine arguments the provenance records (those that change how the same request is computed).
RECORDED_ENGINE_ARGUMENTS = ("enforce_eager", "enable_prefix_caching", "enable_chunked_prefill",
                             "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
                             "max_model_len", "max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype",
                             "compilation_config", "seed")


def engine_record(arguments: dict[str, Any], llm: Any = None) -> dict[str, Any]:
    """The recorded engine arguments, and what the engine says it runs where it says (chunked prefill)."""
    record = {name: arguments.get(name) for name in RECORDED_ENGINE_ARGUMENTS if name in arguments}
    with contextlib.suppress(AttributeError):
        record["chunked_prefill_enabled"] = bool(llm.llm_engine.vllm_config.scheduler_config.chunked_prefill_enabled)
    return json.loads(json.dumps(record, default=str))


def _cut_at_stop(ids: list[int], stop: StopRule) -> list[int]:
    """`ids` up to and including the first token after which `stop` holds."""
    for end in range(1, len(ids) + 1):
        if stop(ids[:end]):
            return ids[:end]
    return ids
