"""TransientWorker: ThreadPoolExecutor(1) semantics, and its thread (with the OpenMP pool torch
gave that thread) ends when the queue runs empty."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import CancelledError

import pytest
import torch

from sernf_policy.transient_worker import TransientWorker


def _wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _worker_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}-")]


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_runs_tasks_in_order_and_delivers_results_and_exceptions():
    worker = TransientWorker("order")
    seen: list[int] = []

    def task(i: int) -> int:
        time.sleep(0.01 * (5 - i))  # later tasks are quicker: only the queue keeps the order
        seen.append(i)
        return i * i

    futures = [worker.submit(task, i) for i in range(5)]
    failing = worker.submit(lambda: 1 / 0)
    assert [f.result(timeout=10) for f in futures] == [0, 1, 4, 9, 16]
    assert seen == [0, 1, 2, 3, 4]
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)
    worker.shutdown(wait=False)


def test_the_thread_ends_when_idle_and_a_new_one_starts_on_demand():
    worker = TransientWorker("idle")
    release = threading.Event()
    first = worker.submit(release.wait, 10)
    assert len(_worker_threads("idle")) == 1
    release.set()
    assert first.result(timeout=10) is True
    assert _wait_until(lambda: not _worker_threads("idle")), "the worker thread did not end when idle"
    assert worker.submit(lambda: threading.current_thread().name).result(timeout=10) == "idle-2"
    assert worker.threads_started == 2
    worker.shutdown(wait=False)


def test_shutdown_cancels_queued_tasks_and_refuses_new_ones():
    worker = TransientWorker("stop")
    started, release = threading.Event(), threading.Event()

    def blocking() -> bool:
        started.set()
        return release.wait(10)

    running = worker.submit(blocking)
    assert started.wait(10)
    queued = worker.submit(lambda: "never")
    worker.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(CancelledError):
        queued.result(timeout=1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        worker.submit(lambda: None)
    release.set()
    assert running.result(timeout=10) is True  # the running task finishes
    assert _wait_until(lambda: not _worker_threads("stop")), "the worker thread did not end"


def test_the_openmp_pool_of_the_workers_thread_goes_with_it():
    """Parallel torch operators give the worker's thread an OpenMP pool (extra OS threads); once
    the queue is empty the OS thread count is back where it was: a persistent pool would make
    another thread's parallel regions slower (see transient_worker's docstring)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, x = torch.randn(512, 512), torch.randn(2_000_000)
        worker = TransientWorker("omp")
        baseline = _os_threads()
        hold = threading.Event()

        def parallel_work() -> None:
            # An elementwise op far above torch's parallel grain (32,768 elements) runs on
            # torch's own OpenMP team whatever OMP_NUM_THREADS says (the suite sets it to 1,
            # and MKL's matmuls then stay on one thread in a new thread); a matmul as well.
            for _ in range(5):
                (x * 2.0).sum()
                a @ a
            hold.wait(10)

        done = worker.submit(parallel_work)
        # The worker's thread and at least one OpenMP worker of its own.
        assert _wait_until(lambda: _os_threads() >= baseline + 2), (_os_threads(), baseline)
        hold.set()
        done.result(timeout=10)
        assert _wait_until(lambda: _os_threads() <= baseline), (
            f"{_os_threads()} OS threads after the worker went idle, {baseline} before")
        worker.shutdown(wait=False)
    finally:
        torch.set_num_threads(previous)
