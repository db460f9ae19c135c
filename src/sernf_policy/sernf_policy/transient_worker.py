"""A one-thread executor whose thread exits whenever its queue runs empty.

Why not ``concurrent.futures.ThreadPoolExecutor(1)``: PyTorch's CPU build runs its parallel
operators and MKL's matmuls on GNU OpenMP (libgomp), and libgomp gives every OS thread that
starts a parallel region its own pool of worker threads, kept until that thread exits. Once the
process holds more such workers than it has CPUs, libgomp stops letting idle workers spin
before they sleep (its "throttled" spin count), so every parallel region afterwards pays a
futex wake-up. A policy node acts on one thread and loads checkpoints on another (a dry-run
chunk, optionally ``torch.compile`` warm-ups); with a persistent loader thread that second pool
never goes away, and the cube config's chunk took ~100 ms on a 2-core machine instead of
~62 ms for the rest of the process's life (``bench/inference_latency.py --node-threads``,
docs/performance.md). With this executor the loader's thread, and with it its OpenMP pool,
is gone once the checkpoint is loaded; acting is slower only while a load runs.

Tasks run one at a time in submission order, like ``ThreadPoolExecutor(1)``; ``submit`` and
``shutdown`` behave like theirs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["TransientWorker"]


class TransientWorker:
    """Runs submitted callables in order on one thread, started on demand and ended when idle."""

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._queue: deque[tuple[Future, Callable[..., Any], tuple, dict]] = deque()
        self._thread: threading.Thread | None = None
        self._shutdown = False
        self.threads_started = 0
        """How many threads this worker has started (one per busy period)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; its result or exception arrives in the returned future."""
        future: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"cannot submit to {self._thread_name!r} after shutdown")
            self._queue.append((future, fn, args, kwargs))
            if self._thread is None:
                self.threads_started += 1
                self._thread = threading.Thread(target=self._run, name=f"{self._thread_name}-{self.threads_started}",
                                                daemon=True)
                self._thread.start()
        return future

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None  # the next submit starts a new thread
                    return
                future, fn, args, kwargs = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - the future carries it to the caller, as in ThreadPoolExecutor
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new tasks; with ``cancel_futures`` cancel the queued ones; with ``wait`` join the
        running thread (which finishes its current task, and the queue unless cancelled)."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            thread = self._thread
        if wait and thread is not None:
            thread.join()
