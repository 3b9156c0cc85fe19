"""Measuring every file pair of a comparison, in msit's order, with flat memory.

One worker: in the calling thread. Few pairs: a thread pool with at most
2 x workers pairs in flight. Many pairs: worker processes that read and measure
batches of pairs themselves and send back only the small `Step` records. Every
pair is measured by the same code whatever the pool, so the results do not
depend on it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from logitsdump.compare.kernels import Workspace, bitwise_equal, scan
from logitsdump.compare.metrics import PERTURBATION_TOKENS, Thresholds, check_pair, pair_metrics
from logitsdump.compare.pairing import FilePair
from logitsdump.compare.records import Step
from logitsdump.errors import FileFormatError
from logitsdump.procguard import die_with_parent
from logitsdump.tensorio import ReadBuffer, load_logits

#: Below this many pairs, threads (no start-up cost); from it on, worker processes (no GIL).
PROCESS_MIN_PAIRS = 256
#: Pairs per task sent to a worker process (amortises the hand-off; results are small records).
BATCH = 16


def measure_all(pairs: Sequence[FilePair], thresholds: Thresholds, topk: int, workers: int | None) -> Iterator[Step]:
    """One `Step` per pair, in the order of `pairs`; `workers` None: the CPU count, at most 8."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers == 1:
        scratch = Scratch()
        for pair in pairs:
            yield measure_pair(pair, thresholds, topk, scratch)
        return
    context = _process_context() if len(pairs) >= PROCESS_MIN_PAIRS else None
    if context is not None:
        yield from _measure_in_processes(pairs, thresholds, topk, workers, context)
        return
    scratch = Scratch()
    pending: deque[Future[Step]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logitscmp") as pool:
        for pair in pairs:
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
            pending.append(pool.submit(measure_pair, pair, thresholds, topk, scratch))
        while pending:
            yield pending.popleft().result()


def _process_context() -> multiprocessing.context.BaseContext | None:
    """`fork` where it is safe and cheap (Linux, no other Python thread running); else None (threads).

    `fork` starts a worker in milliseconds and the workers inherit the loaded
    modules; with other threads running, a forked child could inherit a held lock.
    """
    if sys.platform != "linux" or threading.active_count() > 1:
        return None
    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def _measure_in_processes(
    pairs: Sequence[FilePair],
    thresholds: Thresholds,
    topk: int,
    workers: int,
    context: multiprocessing.context.BaseContext,
) -> Iterator[Step]:
    pending: deque[Future[list[Step]]] = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_start,
                             initargs=(os.getpid(),)) as pool:
        try:
            for start in range(0, len(pairs), BATCH):
                if len(pending) >= 2 * workers:
                    yield from pending.popleft().result()
                pending.append(pool.submit(_measure_batch, pairs[start : start + BATCH], thresholds, topk))
            while pending:
                yield from pending.popleft().result()
        except BaseException:  # SIGINT/SIGTERM (KeyboardInterrupt), an error, or the consumer stopped early
            _stop_workers(pool)
            raise


def _worker_start(parent: int) -> None:
    """In each worker process: die with the parent (SIGKILL of compare leaves no worker behind); leave
    SIGINT to the parent, which stops the workers with SIGTERM (the default action: no traceback)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel the work not started and end the worker processes now (not after their queued batches)."""
    for future in list(getattr(pool, "_pending_work_items", {}).values()):
        future.future.cancel()
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            process.terminate()
    # wait for the pool's manager thread (quick: its workers are gone): one still running at interpreter exit
    # races Python 3.11's exit hook on the pool's wake-up pipe ("OSError: Bad file descriptor" after our one line)
    pool.shutdown(wait=True, cancel_futures=True)


_PROCESS_SCRATCH: Scratch | None = None


def _measure_batch(pairs: Sequence[FilePair], thresholds: Thresholds, topk: int) -> list[Step]:
    """A worker process's task: measure some pairs with the process's own buffers."""
    global _PROCESS_SCRATCH
    if _PROCESS_SCRATCH is None:
        _PROCESS_SCRATCH = Scratch()
    return [measure_pair(pair, thresholds, topk, _PROCESS_SCRATCH) for pair in pairs]


class Scratch(threading.local):
    """Per-thread read buffers and metric workspace: no large allocation per pair."""

    def __init__(self) -> None:
        self.golden = ReadBuffer()
        self.mine = ReadBuffer()
        self.workspace = Workspace()


def measure_pair(pair: FilePair, thresholds: Thresholds, topk: int, scratch: Scratch | None = None) -> Step:
    """Load one pair and measure it; problems become the step's reason, never an exception."""
    base = Step(pair.file_name, pair.key, pair.token_id, subject=pair.subject or "")
    if pair.problem or pair.golden is None or pair.mine is None:
        return replace(base, reason=pair.problem, unavailable=True)
    scratch = scratch or Scratch()
    golden, golden_error = _load(pair.golden, scratch.golden)
    mine, my_error = _load(pair.mine, scratch.mine)
    if golden is None or mine is None:
        reasons = [f"golden_data unreadable: {golden_error}."] if golden_error else []
        reasons += [f"my_data unreadable: {my_error}."] if my_error else []
        return replace(base, reason=" ".join(reasons), unavailable=True)
    if golden.shape != mine.shape:
        return replace(base, reason=check_pair(golden, mine))
    g_scan, m_scan = scan(golden, max(topk, 2, PERTURBATION_TOKENS)), scan(mine, max(topk, 2))
    problem = check_pair(golden, mine, (g_scan.finite, m_scan.finite))
    if problem or g_scan.top is None or m_scan.top is None:
        return replace(base, reason=problem, same_values=bitwise_equal(golden, mine))
    metrics = pair_metrics(golden, mine, thresholds, topk, scratch.workspace, tops=(g_scan.top, m_scan.top))
    return replace(base, metrics=metrics, same_values=metrics.identical)


def _load(path: Path, buffer: ReadBuffer) -> tuple[np.ndarray | None, str]:
    try:
        return load_logits(path, buffer=buffer), ""
    except FileFormatError as err:
        return None, str(err)
