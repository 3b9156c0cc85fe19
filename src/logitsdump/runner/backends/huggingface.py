"""The HF transformers backend: loading a local causal LM, and greedy decoding with raw logits.

Decoding is our own loop over the model's forward pass with a KV cache, not
`generate()`: every step's raw logits (what the model computed, before any
logits processor) come out of the same code path for evaluation and for the
dump, and batch size 1 gives bit-identical logits whichever of the two asked.
torch and transformers are imported when a model loads, not with this module.
"""

from __future__ import annotations

import os
import pickle
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
from logitsdump.runner.interrupt import forward_pass, watch_layers
from logitsdump.runner.sampling import TokenChooser, read_generation_config, resolve_settings

log = get_logger("backend")


class HFBackend(TokenizerMethods):
    """A local HF transformers causal LM, greedy decoding on one device."""

    def __init__(self, config: ModelConfig, device: Device, *, tensor_parallel: bool = False) -> None:
        import torch
        import transformers

        for name, value in config.env.items():
            os.environ[name] = value  # modeltest exports the model YAML's env before loading
        self.config = config
        self.device = device
        self.model_path = resolve_model_path(config)
        self.dtype = getattr(torch, TORCH_NAMES[config.data_type])
        self.settings = resolve_settings(config.generation, read_generation_config(self.model_path))
        self.chooser = None if self.settings.argmax else TokenChooser(self.settings)
        transformers.utils.logging.disable_progress_bar()
        try:
            self.tokenizer = load_tokenizer(self.model_path, config)
            dtype_kw = "dtype" if _transformers_major_minor() >= (4, 56) else "torch_dtype"
            placement: dict[str, Any] = {}
            if tensor_parallel:
                placement = {"tp_plan": "auto"}
            elif device.spread:
                placement = {"device_map": "auto"}
            if config.attn_implementation:  # our extension of the model YAML (a control arm's other kernel)
                placement["attn_implementation"] = config.attn_implementation
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                self.model_path,
                trust_remote_code=config.trust_remote_code,
                local_files_only=True,
                **{dtype_kw: self.dtype},
                **placement,
            )
        except pickle.UnpicklingError as err:  # torch's weights_only loader refused a pickle that would run code
            refused = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), type(err).__name__)
            raise ConfigError(
                f"cannot load the model from {self.model_path}: torch's safe loader refused its pickled weights "
                f"({refused}); use safetensors weights from a trusted source"
            ) from err
        except (OSError, ValueError, NotImplementedError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            what = " with tensor parallelism (--tp = world size)" if tensor_parallel else ""
            raise ConfigError(f"cannot load the model from {self.model_path}{what}: {first_line}") from err
        if not (tensor_parallel or device.spread):
            self.model.to(device.torch_device)
        self.model.eval()
        watch_layers(self.model)  # SIGINT/SIGTERM stop a forward pass at the next decoder layer
        self.input_device = str(self.model.get_input_embeddings().weight.device)
        self._forward_kwargs = _forward_kwarg_names(self.model)
        self.eos_ids = eos_ids((getattr(self.model, "generation_config", None), self.model.config), self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = next(iter(sorted(self.eos_ids)), 0)

    @property
    def vocab_size(self) -> int:
        """Rows of the output embedding."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _batch(self, batch: Sequence[Sequence[int]]):
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        return input_ids.to(self.input_device), mask.to(self.input_device)

    def last_logits(self, batch: Sequence[Sequence[int]]) -> list[Any]:
        """One forward pass; the raw last-position logits [vocab] of each sequence (model dtype, CPU)."""
        import torch

        input_ids, mask = self._batch(batch)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode(), forward_pass():
            out = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                **self._keep_last_only(),
            )
        last = out.logits[:, -1, :].to("cpu")
        return [last[row].clone() for row in range(len(batch))]

    def greedy(
        self,
        batch: Sequence[Sequence[int]],
        max_new_tokens: int,
        keep_steps: int = 0,
        forced: Sequence[Sequence[int]] | None = None,
        limits: Sequence[int] | None = None,
        stops: Sequence[StopRule | None] | None = None,
    ) -> list[Decoded]:
        """Greedy decoding of a left-padded batch, stopping each row at EOS or `max_new_tokens`.

        Keeps the raw logits of the first `keep_steps` steps of each row (for the dump)
        and always step 0's logits as float32 (for need_logits judging).
        With `forced` (replay), row r feeds `forced[r][t]` at step t instead of its own
        argmax, through the same decode path, and stops when its forced tokens run out;
        its `own_ids` record what it would have chosen.
        Without `forced`, row r also stops after `limits[r]` tokens, or once `stops[r](ids)`
        holds for its generated ids (a task's stopping rule, the stopping token kept).
        """
        import torch

        input_ids, mask = self._batch(batch)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = len(batch)
        results = [Decoded([], [], None) for _ in range(rows)]
        finished = [forced is not None and not forced[row] for row in range(rows)]
        past = None
        step_input = input_ids
        with torch.inference_mode():
            for step in range(max_new_tokens):
                cache_name = self._forward_kwargs["cache"]
                with forward_pass():
                    out = self.model(
                        input_ids=step_input,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=True,
                        **({cache_name: past} if past is not None else {}),
                        **self._keep_last_only(),
                    )
                past = getattr(out, cache_name)
                logits = out.logits[:, -1, :]
                next_ids = logits.argmax(dim=-1)
                cpu_logits = logits.to("cpu") if (step < keep_steps or step == 0) else None
                chosen = next_ids.tolist()
                if forced is None and self.chooser is not None:  # sampling or a repetition penalty
                    chosen = self.chooser.choose(logits, [[*batch[r], *results[r].output_ids] for r in range(rows)])
                for row in range(rows):
                    if finished[row]:
                        continue
                    result = results[row]
                    if step == 0:
                        result.first_logits = cpu_logits[row].float().clone()
                    if step < keep_steps:
                        result.step_logits.append(cpu_logits[row].clone())
                    if forced is not None:
                        result.own_ids.append(int(chosen[row]))
                        chosen[row] = int(forced[row][step])
                        finished[row] = step + 1 >= len(forced[row])
                    result.output_ids.append(int(chosen[row]))
                    if forced is None and (
                        chosen[row] in self.eos_ids
                        or (limits is not None and len(result.output_ids) >= limits[row])
                        or (stops is not None and stops[row] is not None and stops[row](result.output_ids))
                    ):
                        finished[row] = True
                if all(finished):
                    break
                step_ids = torch.tensor(
                    [self.pad_id if finished[row] else chosen[row] for row in range(rows)],
                    dtype=torch.long,
                    device=input_ids.device,
                )
                step_input = step_ids[:, None]
                mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=mask.device)], dim=1)
                positions = positions[:, -1:] + 1
        return results

    def prefill_logits(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[Any]:
        """Replay in one forward pass: the raw logits (model dtype, CPU) that predict each token of
        `continuation` after `prompt` (the logits at positions len(prompt)-1 ... end-1)."""
        import torch

        ids = list(prompt) + list(continuation[:-1])
        input_ids, mask = self._batch([ids])
        with torch.inference_mode(), forward_pass():
            out = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        rows = out.logits[0, len(prompt) - 1 :, :].to("cpu")
        return [rows[t].clone() for t in range(len(continuation))]

    def _keep_last_only(self) -> dict[str, int]:
        """Ask the model for the last position's logits only, where it supports that."""
        name = self._forward_kwargs["keep"]
        return {name: 1} if name else {}

    def versions(self) -> dict[str, str]:
        """logitsdump's, torch's and transformers' versions."""
        import torch
        import transformers

        from logitsdump import __version__

        return {"logitsdump": __version__, "torch": torch.__version__, "transformers": transformers.__version__}

    def provenance(self) -> Provenance:
        """Model path, device, versions, and the model folder, tokenizer and generation settings in effect."""
        import torch

        details = describe_model(self.model_path, self.tokenizer, use_chat_template=self.config.use_chat_template,
                                 settings=self.settings, eos_ids=self.eos_ids)
        details["engine"] = {"attn_implementation": getattr(self.model.config, "_attn_implementation", None),
                             "num_threads": torch.get_num_threads()}
        return Provenance(model_path=str(self.model_path), device=self.device.torch_device, versions=self.versions(),
                          details=details)


def _transformers_major_minor() -> tuple[int, int]:
    import transformers

    parts = transformers.__version__.split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def _forward_kwarg_names(model: Any) -> dict[str, str | None]:
    """The forward() argument names of this transformers version for the KV cache and
    for keeping only the last logits (`cache`/`past_key_values`, `logits_to_keep`/...)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)
    return {"cache": cache, "keep": keep}
