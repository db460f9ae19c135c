"""Stream statistics: frame rate, frames dropped (device sequence numbers), latency."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["StreamSnapshot", "StreamStats"]


@dataclass(frozen=True)
class StreamSnapshot:
    frames: int
    """Frames received since start."""
    dropped: int
    """Frames missing from the device's sequence numbers (never reached the host)."""
    sequence_restarts: int
    """Times the sequence went backwards (the device restarted its pipeline: a reconnection)."""
    rate_hz: float
    """Received frames per second over the last ``window_s`` (0 when none arrived)."""
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    """Capture (host-synced device timestamp) to reception on the host, over the last frames;
    NaN before the first frame."""

    @property
    def drop_ratio(self) -> float:
        total = self.frames + self.dropped
        return self.dropped / total if total else 0.0


class StreamStats:
    """Counts and windows, fed one frame at a time by the capture thread and read by the
    diagnostics timer (a lock keeps the windows consistent between the two)."""

    def __init__(self, window_s: float = 2.0, latency_window: int = 300) -> None:
        self.window_s = window_s
        self.frames = 0
        self.dropped = 0
        self.sequence_restarts = 0
        self._last_sequence: int | None = None
        self._receive_times: deque[float] = deque()
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._lock = threading.Lock()

    def on_frame(self, sequence: int, capture_s: float, receive_s: float) -> int:
        """Record one frame; returns how many frames were dropped just before it."""
        with self._lock:
            return self._on_frame(sequence, capture_s, receive_s)

    def _on_frame(self, sequence: int, capture_s: float, receive_s: float) -> int:
        gap = 0
        if self._last_sequence is not None:
            if sequence > self._last_sequence:
                gap = sequence - self._last_sequence - 1
            else:
                # A new pipeline on the device numbers from 0 again; what was lost during the
                # outage is not in the sequence numbers (the outage itself is reported).
                self.sequence_restarts += 1
        self._last_sequence = sequence
        self.dropped += gap
        self.frames += 1
        self._receive_times.append(receive_s)
        self._latencies.append(receive_s - capture_s)
        self._trim(receive_s)
        return gap

    def restart_sequence(self) -> None:
        """The stream was reopened: the next frame starts a new sequence (no gap counted)."""
        with self._lock:
            self._last_sequence = None

    def _trim(self, now_s: float) -> None:
        while self._receive_times and self._receive_times[0] < now_s - self.window_s:
            self._receive_times.popleft()

    def snapshot(self, now_s: float) -> StreamSnapshot:
        with self._lock:
            self._trim(now_s)
            times = list(self._receive_times)
            latencies = list(self._latencies)
            counts = (self.frames, self.dropped, self.sequence_restarts)
        rate = 0.0
        if len(times) >= 2 and times[-1] > times[0]:
            rate = (len(times) - 1) / (times[-1] - times[0])
        if latencies:
            lat = np.asarray(latencies) * 1e3
            p50, p95, worst = (float(np.percentile(lat, 50)), float(np.percentile(lat, 95)),
                               float(lat.max()))
        else:
            p50 = p95 = worst = float("nan")
        return StreamSnapshot(*counts, rate, p50, p95, worst)
