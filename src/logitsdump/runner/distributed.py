"""Running under torchrun: which rank this is, how the work is shared, and gathering results.

Modes (world size W from torchrun's WORLD_SIZE, `--tp` from the command line):
- single: W == 1. One process; with `--device auto` and several CUDA devices
  visible, the model is spread over them (`device_map="auto"`).
- data parallel: `--tp 1`, W > 1. Every rank loads a full replica and takes every
  W-th batch; rank 0 merges the results in dataset order and writes the files.
- tensor parallel: `--tp W`. The model is split across the ranks by transformers'
  `tp_plan="auto"`; every rank runs every batch; only rank 0 writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from logitsdump.errors import ConfigError, UserError

T = TypeVar("T")

#: torch.distributed backend per device kind.
BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


@dataclass(frozen=True)
class World:
    """This process's place among torchrun's workers."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    tp: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_parallel(self) -> bool:
        return self.distributed and self.tp == 1

    @property
    def tensor_parallel(self) -> bool:
        return self.distributed and self.tp == self.world_size

    def my_share(self, items: Sequence[T]) -> list[T]:
        """The items this rank works on: every W-th from its rank in data parallel, else all."""
        if self.data_parallel:
            return list(items[self.rank :: self.world_size])
        return list(items)

    @property
    def writes_outputs(self) -> bool:
        """Rank 0 writes the result files; in data parallel every rank writes its own logits files."""
        return self.is_main

    @property
    def writes_logits(self) -> bool:
        return self.is_main or self.data_parallel


def _int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an int, found {raw!r}") from None


def detect_world(tp: int, environ: Mapping[str, str] | None = None) -> World:
    """The World from torchrun's variables; checks that `--tp` fits the world size."""
    environ = os.environ if environ is None else environ
    world_size = _int_env(environ, "WORLD_SIZE", 1)
    world = World(
        rank=_int_env(environ, "RANK", 0),
        world_size=world_size,
        local_rank=_int_env(environ, "LOCAL_RANK", 0),
        tp=tp,
    )
    if world_size > 1 and tp not in (1, world_size):
        raise ConfigError(
            f"--tp {tp} with {world_size} processes: use --tp 1 (data parallel: one replica per process) "
            f"or --tp {world_size} (tensor parallel: one model split across all processes); "
            "data parallel over tensor-parallel groups is not supported"
        )
    return world


def init_process_group(world: World, device_kind: str) -> None:
    """Join torchrun's process group with the backend that fits the device (gloo, nccl, hccl)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend=BACKENDS.get(device_kind, "gloo"))


def shutdown(world: World) -> None:
    if not world.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def gather_to_main(world: World, value: Any) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank 0 (None elsewhere)."""
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * world.world_size if world.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def raise_if_any_failed(world: World, error: BaseException | None) -> None:
    """Collective: every rank learns whether any rank failed, and all raise the first failure's message."""
    if not world.distributed:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    message = None
    if error is not None:
        message = f"{type(error).__name__}: {error}" if not isinstance(error, UserError) else str(error)
    messages: list[str | None] = [None] * world.world_size
    dist.all_gather_object(messages, message)
    failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
    if error is not None and not isinstance(error, UserError):
        raise error  # this rank's own bug keeps its traceback
    if failed:
        rank, text = failed[0]
        raise UserError(f"rank {rank} of {world.world_size} failed: {text}")
