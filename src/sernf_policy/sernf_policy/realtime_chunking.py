"""Real-time action chunking: the action queue between inference and the control loop.

Timing contract (docs/design.md §6, paper Fig. 7; ``P`` prefix actions, ``H`` chunk length)::

    decision at step t      queue = a_t .. a_{t+P-1}        (the prefix, already planned)
    inference (<= P ticks)  a_t .. a_{t+P-1} keep executing  (execution never waits)
    chunk arrives           queue = prefix rest + a_{t+P} .. a_{t+P+H-1}
    next decision at t+H    exactly P actions remain queued  -> they are the next prefix

The control loop calls, once per tick and in this order::

    if scheduler.decision_due():
        request = scheduler.begin_decision(hold_action)   # prefix [P, A] for the policy
        ... hand (observation history, request.prefix) to a worker thread ...
    action = scheduler.tick()        # the action for this step, or HOLD (queue ran dry)

and the worker calls ``scheduler.submit(chunk, request.request_id)`` when inference is done
(``scheduler.fail(request_id)`` if it failed).

Rules the queue keeps (so what the policy was told is always what the robot does):

* **Prefix = queue.** A decision is due when no request is in flight and at most ``P`` actions
  remain queued. If fewer than ``P`` remain (the very first decision, or after a late chunk),
  the queue is topped up with the caller's *hold action* until it holds exactly ``P``; the
  prefix sent to the policy is then exactly the ``P`` queued actions, and they will be executed.
* **Late-chunk splicing.** A chunk is planned for steps ``t+P .. t+P+H-1``. If it arrives
  after step ``t+P`` was due (the queue ran dry and ``d`` ticks were held), the first ``d``
  actions of the chunk belong to time that has already passed: they are dropped and the rest
  (``a_{t+P+d} ..``) is queued, so every queued action keeps the time slot it was planned for
  and the next decision stays on the wall-clock grid (at the step where ``P`` remain). If
  ``d >= H`` the whole chunk is stale and discarded; a new decision is due at once.
  (Alternative considered: execute the whole chunk shifted by ``d``. Rejected: it silently
  re-times the plan and makes the next prefix a plan for slots the policy never saw.)
* **Stale requests are refused.** ``submit`` only accepts the request currently in flight;
  after :meth:`reset` (episode end, safety stop) or :meth:`fail` a late answer is ignored.
* **HOLD, never jump.** When the queue is empty, :meth:`tick` returns :data:`HOLD` and counts
  an *overrun*; the caller substitutes its hold action (zero relative motion, keep the hand's
  target). Nothing here extrapolates or repeats a motion command.

Pure Python/numpy (no ROS), thread-safe (one lock around all state), deterministic: time is
counted in control ticks; the injected ``clock`` only measures inference latency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "HOLD",
    "ChunkScheduler",
    "ChunkTimingConfig",
    "InferenceRequest",
    "SchedulerStats",
    "SubmitResult",
]


class _Hold:
    """Type of :data:`HOLD` (a singleton so ``tick() is HOLD`` reads naturally)."""

    _instance: _Hold | None = None

    def __new__(cls) -> _Hold:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "HOLD"

    def __bool__(self) -> bool:
        # HOLD is a sentinel, not a value: refuse "if action:" style checks.
        raise TypeError("compare with 'is HOLD' instead of using HOLD as a bool")


HOLD = _Hold()
"""Returned by :meth:`ChunkScheduler.tick` when no planned action exists for this step."""


@dataclass(frozen=True)
class ChunkTimingConfig:
    """Sizes of the action queue (docs/design.md §6)."""

    P: int
    """Prefix length: actions already queued (not yet executed) when a decision is made; also
    how many ticks inference may take without the queue running dry."""

    H: int
    """Chunk length: actions predicted per decision; a decision comes every ``H`` ticks."""

    action_dim: int
    """``A``: size of one action vector."""

    def __post_init__(self) -> None:
        for name in ("P", "H", "action_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"ChunkTimingConfig.{name} must be an int, got {value!r}")
        if self.P < 0:
            raise ValueError(f"ChunkTimingConfig.P must be >= 0, got {self.P}")
        if self.H < 1:
            raise ValueError(f"ChunkTimingConfig.H must be >= 1, got {self.H}")
        if self.action_dim < 1:
            raise ValueError(f"ChunkTimingConfig.action_dim must be >= 1, got {self.action_dim}")


@dataclass(frozen=True)
class InferenceRequest:
    """What the policy must be asked at a decision (a copy; safe to hand to another thread)."""

    request_id: int
    """Identifies the request in :meth:`ChunkScheduler.submit`."""
    decision_step: int
    """``t``: the control step at which the decision was made (o_t is the newest observation)."""
    prefix: np.ndarray
    """``[P, A]`` float32: the queued actions ``a_t .. a_{t+P-1}``, oldest first."""
    requested_at: float
    """Clock time of the request (for the latency measurement)."""

    @property
    def first_chunk_step(self) -> int:
        """Step of the chunk's first action: ``t + P``."""
        return self.decision_step + int(self.prefix.shape[0])


@dataclass(frozen=True)
class SubmitResult:
    """Outcome of :meth:`ChunkScheduler.submit`."""

    accepted: bool
    """True if (part of) the chunk was queued."""
    queued: int
    """Chunk actions queued."""
    dropped: int
    """Chunk actions dropped because their time slot had passed (late chunk)."""
    latency_s: float
    """Clock time from the request to this submit."""
    reason: str = ""
    """Why the chunk was refused or trimmed (empty when it was queued whole)."""


@dataclass(frozen=True)
class SchedulerStats:
    """Counters for diagnostics (a consistent snapshot)."""

    step: int
    """Ticks executed so far (the next tick executes this step)."""
    queue_depth: int
    """Planned actions waiting."""
    in_flight: bool
    """A request is waiting for its chunk."""
    overruns: int
    """Ticks that found the queue empty (returned HOLD)."""
    decisions: int
    """Requests started."""
    chunks_accepted: int
    """Chunks (fully or partly) queued."""
    actions_dropped: int
    """Chunk actions dropped by late-chunk splicing (plus whole stale chunks)."""
    last_latency_s: float
    """Latency of the last accepted chunk (NaN before the first)."""


class ChunkScheduler:
    """The action queue of real-time chunking; see the module docstring for the rules."""

    def __init__(
        self, config: ChunkTimingConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        # Queued actions, each [A] float32; the head is executed at step self._step.
        self._queue: deque[np.ndarray] = deque()
        self._step = 0
        self._in_flight: InferenceRequest | None = None
        self._next_request_id = 1
        self._overruns = 0
        self._decisions = 0
        self._chunks_accepted = 0
        self._actions_dropped = 0
        self._last_latency = float("nan")

    # ------------------------------------------------------------------ control loop side

    def decision_due(self) -> bool:
        """True when a new decision should start now (no request in flight, <= P queued)."""
        with self._lock:
            return self._in_flight is None and len(self._queue) <= self.config.P

    def begin_decision(self, hold_action: np.ndarray) -> InferenceRequest:
        """Start a decision at the current step; returns the request for the policy.

        ``hold_action`` ``[A]`` tops the queue up to ``P`` actions when fewer remain (first
        decision: the prefix is ``P`` hold actions). Raises ``RuntimeError`` if no decision is
        due (a request is in flight, or more than ``P`` actions are queued).
        """
        hold = self._as_action(hold_action, "hold_action")
        with self._lock:
            if self._in_flight is not None:
                raise RuntimeError(
                    f"request {self._in_flight.request_id} is still in flight; no new decision"
                )
            if len(self._queue) > self.config.P:
                raise RuntimeError(
                    f"{len(self._queue)} actions queued > P={self.config.P}: no decision due"
                )
            while len(self._queue) < self.config.P:
                self._queue.append(hold.copy())
            prefix = (
                np.stack(list(self._queue)).astype(np.float32)
                if self.config.P
                else np.zeros((0, self.config.action_dim), np.float32)
            )
            request = InferenceRequest(
                request_id=self._next_request_id,
                decision_step=self._step,
                prefix=prefix,
                requested_at=self._clock(),
            )
            self._next_request_id += 1
            self._decisions += 1
            self._in_flight = request
            return request

    def tick(self) -> np.ndarray | _Hold:
        """Advance one control step: the queued action for it (a copy), or :data:`HOLD`."""
        with self._lock:
            self._step += 1
            if self._queue:
                return self._queue.popleft().copy()
            self._overruns += 1
            return HOLD

    # ---------------------------------------------------------------------- worker side

    def submit(self, chunk: np.ndarray, request_id: int) -> SubmitResult:
        """Queue the chunk ``[H, A]`` answering ``request_id`` (late chunks are spliced).

        Raises ``ValueError`` for a chunk of the wrong shape or with non-finite values (the
        request then stays in flight; call :meth:`fail`).
        """
        chunk = np.asarray(chunk, dtype=np.float32)
        expected = (self.config.H, self.config.action_dim)
        if chunk.shape != expected:
            raise ValueError(f"chunk must be [H, A] = {list(expected)}, got {list(chunk.shape)}")
        if not np.isfinite(chunk).all():
            raise ValueError("chunk contains non-finite values")
        with self._lock:
            now = self._clock()
            request = self._in_flight
            if request is None or request.request_id != request_id:
                current = None if request is None else request.request_id
                return SubmitResult(
                    False, 0, 0, float("nan"),
                    f"request {request_id} is not the one in flight ({current}); chunk ignored",
                )
            latency = now - request.requested_at
            self._in_flight = None
            # The chunk's first action is planned for step t+P; the head of the queue is
            # executed at step self._step + (actions still queued ahead of the chunk slot).
            # Slots before self._step have already been executed (as HOLD) -> drop them.
            late = max(0, self._step - request.first_chunk_step)
            self._last_latency = latency
            if late >= self.config.H:
                self._actions_dropped += self.config.H
                return SubmitResult(
                    False, 0, self.config.H, latency,
                    f"chunk arrived {late} ticks late (>= H={self.config.H}); discarded",
                )
            # Invariant check: with no overrun the queue still holds the rest of the prefix,
            # i.e. exactly the slots step..t+P-1; with an overrun it is empty.
            expected_depth = max(0, request.first_chunk_step - self._step)
            if len(self._queue) != expected_depth:
                # Only reset() empties the queue without ending the request, and reset() also
                # clears the request; reaching this means the rules above were broken.
                raise AssertionError(
                    f"queue depth {len(self._queue)} != {expected_depth} expected for request "
                    f"{request_id}"
                )
            for action in chunk[late:]:
                self._queue.append(action.copy())
            self._chunks_accepted += 1
            self._actions_dropped += late
            reason = f"chunk {late} ticks late: dropped its first {late} actions" if late else ""
            return SubmitResult(True, self.config.H - late, late, latency, reason)

    def fail(self, request_id: int) -> bool:
        """Give up on ``request_id`` (inference failed); a new decision becomes due."""
        with self._lock:
            if self._in_flight is not None and self._in_flight.request_id == request_id:
                self._in_flight = None
                return True
            return False

    # --------------------------------------------------------------------------- control

    def reset(self) -> None:
        """Forget the queue and any request in flight (episode boundary, safety stop).

        The step counter and the counters keep running (they are diagnostics); a chunk for
        the cancelled request is refused when it arrives.
        """
        with self._lock:
            self._queue.clear()
            self._in_flight = None

    def queued(self) -> np.ndarray:
        """``[n, A]`` copy of the queued actions, next first."""
        with self._lock:
            if not self._queue:
                return np.zeros((0, self.config.action_dim), np.float32)
            return np.stack(list(self._queue))

    def stats(self) -> SchedulerStats:
        with self._lock:
            return SchedulerStats(
                step=self._step,
                queue_depth=len(self._queue),
                in_flight=self._in_flight is not None,
                overruns=self._overruns,
                decisions=self._decisions,
                chunks_accepted=self._chunks_accepted,
                actions_dropped=self._actions_dropped,
                last_latency_s=self._last_latency,
            )

    def _as_action(self, action: np.ndarray, name: str) -> np.ndarray:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.config.action_dim,):
            raise ValueError(f"{name} must be [A] = [{self.config.action_dim}], got {list(action.shape)}")
        if not np.isfinite(action).all():
            raise ValueError(f"{name} contains non-finite values")
        return action
