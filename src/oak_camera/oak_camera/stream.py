"""The capture loop: read frames from a camera connection, convert them, keep statistics, and
when the camera is lost, reopen it (by the same MxId) with backoff until it is back.

No ROS here: the node gives the loop a ``connect`` function (device or replay) and callbacks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from oak_camera.device import DEVICE_LOST_ERRORS, CameraConnection
from oak_camera.frames import CapturedFrame, frame_to_array, intrinsics_mismatch
from oak_camera.intrinsics import Intrinsics
from oak_camera.stats import StreamStats

__all__ = ["CameraStream", "StreamState"]


@dataclass
class StreamState:
    """What diagnostics report (read from other threads; replaced, never mutated in place)."""

    status: str = "closed"
    """closed | open (configured, not streaming) | streaming | lost (reconnecting)"""
    reason: str = ""
    """Why the camera was lost / the last reopen attempt failed."""
    disconnects: int = 0
    reconnects: int = 0
    reconnect_attempts: int = 0
    """Failed reopen attempts in the current outage."""
    next_attempt_in_s: float = 0.0


class CameraStream:
    """Owns the camera connection from ``open`` (configure) to ``close`` (cleanup)."""

    def __init__(self, connect: Callable[[], CameraConnection], on_frame: Callable[[CapturedFrame], None],
                 on_event: Callable[[str, str], None], frame_timeout_s: float = 1.0,
                 reconnect_initial_s: float = 0.5, reconnect_max_s: float = 5.0,
                 poll_s: float = 0.1) -> None:
        self._connect = connect
        self._on_frame = on_frame
        self._on_event = on_event  # (level "info" | "warn" | "error", text)
        self.frame_timeout_s = frame_timeout_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.poll_s = poll_s
        self.stats = StreamStats()
        self.state = StreamState()
        self.connection: CameraConnection | None = None
        self.device_id = ""
        self.description = ""
        self.intrinsics: Intrinsics | None = None
        self._lock = threading.Lock()  # connection handover between the loop and close()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreported_drops = 0
        self._intrinsics_checked = False
        self.intrinsics_warning = ""
        """Set when depthai's own frame intrinsics disagree with the published ones."""
        self._last_drop_report = -float("inf")

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the camera (raises the reason when it cannot: configure is then refused)."""
        connection = self._connect()
        self._adopt(connection)
        self._set_state(status="open", reason="")

    def start(self) -> None:
        """Start streaming (the first start of the opened connection, then the loop thread)."""
        if self._thread is not None:
            return
        assert self.connection is not None, "open() first"
        self.connection.start()
        self._stop.clear()
        self._set_state(status="streaming")
        self._thread = threading.Thread(target=self._loop, name="oak-capture", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)
        self._thread = None
        self._release()
        self._set_state(status="closed")

    # -- internals ------------------------------------------------------------------------------
    def _set_state(self, **changes) -> None:
        values = dict(self.state.__dict__)
        values.update(changes)
        self.state = StreamState(**values)

    def _adopt(self, connection: CameraConnection) -> None:
        with self._lock:
            self.connection = connection
        self.device_id = connection.device_id
        self.description = connection.description
        self.intrinsics = connection.intrinsics
        self._intrinsics_checked = False

    def _release(self) -> None:
        with self._lock:
            connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except DEVICE_LOST_ERRORS as exc:  # closing a device that is already gone
                self._on_event("warn", f"closing the camera: {exc}")

    def _loop(self) -> None:
        last_frame = time.monotonic()
        while not self._stop.is_set():
            connection = self.connection
            if connection is None:
                if self._reopen():
                    last_frame = time.monotonic()
                continue
            try:
                frame = connection.next_frame(self.poll_s)
            except DEVICE_LOST_ERRORS as exc:
                if self._stop.is_set():
                    break
                self._lost(f"{type(exc).__name__}: {exc}")
                continue
            now = time.monotonic()
            if frame is None:
                if now - last_frame > self.frame_timeout_s:
                    self._lost(f"no frame for {now - last_frame:.1f} s")
                continue
            last_frame = now
            self._deliver(frame, now)

    def _deliver(self, frame, receive_s: float) -> None:
        try:
            image, order = frame_to_array(frame)
        except ValueError as exc:  # a malformed frame is skipped, and said so
            self._on_event("warn", f"frame {frame.getSequenceNum()} skipped: {exc}")
            return
        if not self._intrinsics_checked and self.intrinsics is not None:
            self._intrinsics_checked = True
            self.intrinsics_warning = intrinsics_mismatch(frame, self.intrinsics) or ""
            if self.intrinsics_warning:
                self._on_event("warn", self.intrinsics_warning)
        capture_s = frame.getTimestamp().total_seconds()
        sequence = int(frame.getSequenceNum())
        gap = self.stats.on_frame(sequence, capture_s, receive_s)
        if gap:
            # One line per second at most: a saturated USB link drops frames continuously.
            self._unreported_drops += gap
            if receive_s - self._last_drop_report >= 1.0:
                self._on_event("warn", f"{self._unreported_drops} frame(s) dropped "
                                       f"(sequence gap before frame {sequence})")
                self._unreported_drops = 0
                self._last_drop_report = receive_s
        self._on_frame(CapturedFrame(
            image=image, channel_order=order, sequence=sequence,
            capture_steady_ns=int(round(capture_s * 1e9)), receive_steady_ns=int(round(receive_s * 1e9)),
            device_time_ns=int(round(frame.getTimestampDevice().total_seconds() * 1e9))))

    def _lost(self, reason: str) -> None:
        self._release()
        self.stats.restart_sequence()
        self._set_state(status="lost", reason=f"camera {self.device_id} lost: {reason}",
                        disconnects=self.state.disconnects + 1, reconnect_attempts=0,
                        next_attempt_in_s=self.reconnect_initial_s)
        self._on_event("error", f"camera {self.device_id} lost ({reason}); reconnecting")
        self._stop.wait(self.reconnect_initial_s)

    def _reopen(self) -> bool:
        try:
            connection = self._connect()
        except (*DEVICE_LOST_ERRORS, OSError, ValueError) as exc:
            attempts = self.state.reconnect_attempts + 1
            wait = min(self.reconnect_initial_s * 2 ** attempts, self.reconnect_max_s)
            self._set_state(reason=f"camera {self.device_id} lost: reopen failed: {exc}",
                            reconnect_attempts=attempts, next_attempt_in_s=wait)
            self._on_event("warn", f"reopen attempt {attempts} failed: {exc}; next in {wait:.1f} s")
            self._stop.wait(wait)
            return False
        try:
            connection.start()
        except DEVICE_LOST_ERRORS as exc:
            connection.close()
            self._on_event("warn", f"reopened camera failed to start: {exc}")
            self._stop.wait(self.reconnect_initial_s)
            return False
        if self._stop.is_set():
            connection.close()
            return False
        self._adopt(connection)
        self._set_state(status="streaming", reason="", reconnects=self.state.reconnects + 1,
                        reconnect_attempts=0, next_attempt_in_s=0.0)
        self._on_event("info", f"camera {self.device_id} back ({connection.description}); streaming")
        return True
