"""The old home of the HF backend, kept so that `from logitsdump.runner.backend import ...` still works.

New code imports from `runner.backends` (the protocol and the registry),
`runner.backends.huggingface` (the HF backend) and `runner.device` (device choice).
"""

from __future__ import annotations

from logitsdump.runner.backends.base import Decoded
from logitsdump.runner.backends.huggingface import HFBackend
from logitsdump.runner.device import Device, choose_device, npu_available

__all__ = ["Decoded", "Device", "HFBackend", "choose_device", "npu_available"]
