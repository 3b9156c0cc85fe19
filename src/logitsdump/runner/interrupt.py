"""Stopping an evaluation on SIGINT/SIGTERM within seconds, also in the middle of a long forward pass.

Inside `stop_on_signals()`, the first SIGINT or SIGTERM is recorded. Outside a model's forward pass it
raises `Stop` at once (like Ctrl-C); inside one (`forward_pass()`), the next decoder layer raises it
(`watch_layers` puts a check before each layer), so the model is left at a layer boundary rather
than at whatever bytecode the signal happened to land on. A second signal raises at once anywhere.
`Stop` derives from KeyboardInterrupt, so no `except Exception` swallows it and every `finally`
(temporary files of fsutil included) runs on the way out; leaving `stop_on_signals()` it becomes
`EvalInterrupted`, a one-line error with exit status 128 + the signal's number (130, 143), as `dump`
reports its own interruption (launch.Interrupted).

Python runs signal handlers between bytecodes of the main thread only: one native operation (say, an
attention kernel over a million tokens) is not interrupted before it returns. The task's input length
guard (decoding.fit_input) bounds those operations.
"""

from __future__ import annotations

import contextlib
import gc
import signal
from collections.abc import Iterator
from typing import Any

from logitsdump.errors import UserError

#: The signals that stop an evaluation.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop(KeyboardInterrupt):
    """Raised inside the evaluation when a stopping signal arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class EvalInterrupted(UserError):
    """The evaluation was stopped by SIGINT/SIGTERM (exit status 128 + the signal's number)."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name}: the evaluation stopped; files already complete are kept, none is "
            "left half-written",
            exit_code=128 + signum,
        )
        self.signum = signum


class _State:
    """The signal received (None: none yet) and how deep we are in forward passes."""

    pending: int | None = None
    in_forward: int = 0


_state = _State()


def _on_signal(signum: int, _frame: Any) -> None:
    first = _state.pending is None
    if first:
        _state.pending = signum
    if first and _state.in_forward:
        return  # the next layer's check raises
    raise Stop(_state.pending)


def check() -> None:
    """Raise `Stop` when a stopping signal has arrived (called before each decoder layer)."""
    if _state.pending is not None:
        raise Stop(_state.pending)


@contextlib.contextmanager
def forward_pass() -> Iterator[None]:
    """Around a model call: a first signal waits for the next layer check, or the end of the call."""
    _state.in_forward += 1
    try:
        yield
    finally:
        _state.in_forward -= 1
    check()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Handle SIGINT/SIGTERM as above for the body; `Stop` leaves it as `EvalInterrupted`.

    Outside the main thread (where Python cannot set handlers) the body runs unchanged.
    """
    try:
        previous = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    _state.pending, _state.in_forward = None, 0
    try:
        yield
    except Stop as stop:
        # The process is about to end: keep the interpreter's last garbage collections off the heap that
        # torch and transformers built (measured: 2-3 s of the exit on a busy machine, 0.4 s frozen).
        gc.freeze()
        raise EvalInterrupted(stop.signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state.pending = None


def watch_layers(model: Any) -> int:
    """Check for a stopping signal before each layer of `model` (a torch module): every module held in
    a `ModuleList` (a transformer's decoder layers, experts). Returns how many layers are watched."""
    import torch

    layers = [layer for holder in model.modules() if isinstance(holder, torch.nn.ModuleList) for layer in holder]
    for layer in layers:
        layer.register_forward_pre_hook(_check_hook)
    return len(layers)


def _check_hook(_module: Any, _args: Any) -> None:
    check()
