"""Where the model runs: `--device` (auto, cpu, cuda[:N], npu[:N]) to a `Device`.

Framework-neutral: every backend receives the `Device` chosen here. torch is
imported only when a device is chosen.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from logitsdump.errors import ConfigError


@dataclass(frozen=True)
class Device:
    """Where the model runs: the torch device string and modeltest's folder label."""

    torch_device: str
    label: str  # "GPU", "NPU" or "CPU": the {dev} of the output layout
    #: spread the model over all visible CUDA devices (one process, several GPUs, `--device auto`)
    spread: bool = False

    @property
    def kind(self) -> str:
        """cpu, cuda or npu."""
        return self.torch_device.split(":")[0]


def npu_available() -> bool:
    """True when torch_npu is installed and an NPU answers."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch
    import torch_npu  # noqa: F401  (registers torch.npu)

    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def choose_device(request: str = "auto", local_rank: int | None = None) -> Device:
    """`auto`: CUDA, else NPU (torch_npu), else CPU. Or an explicit cpu / cuda[:N] / npu[:N].

    Under torchrun (`local_rank` given) each process takes the device of its local rank.
    A single process with several CUDA devices and `auto` spreads the model over them.
    """
    import torch

    request = (request or "auto").strip().lower()
    if local_rank is not None and request in ("cuda", "npu"):
        request = f"{request}:{local_rank}"
    if request == "auto":
        if torch.cuda.is_available():
            if local_rank is not None:
                return Device(f"cuda:{local_rank}", "GPU")
            return Device("cuda:0", "GPU", spread=torch.cuda.device_count() > 1)
        if npu_available():
            return Device(f"npu:{local_rank or 0}", "NPU")
        return Device("cpu", "CPU")
    kind, _, number = request.partition(":")
    if number and not number.isdigit():
        raise ConfigError(f"--device {request!r}: expected cpu, cuda, cuda:N, npu or npu:N")
    if kind == "cpu":
        return Device("cpu", "CPU")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
        return Device(f"cuda:{number or 0}", "GPU")
    if kind == "npu":
        if not npu_available():
            raise ConfigError("--device npu: torch_npu is not installed or no NPU is available")
        return Device(f"npu:{number or 0}", "NPU")
    raise ConfigError(f"--device {request!r}: expected auto, cpu, cuda, cuda:N, npu or npu:N")
