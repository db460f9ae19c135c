"""Latest observations per key, their freshness, and the T-step history at control ticks.

Sensors publish at their own rates (cameras 30 Hz, hand 40 Hz, cube pose 16 Hz); the policy's
history is ``o_{t-T+1..t}`` *at control ticks* (docs/architecture.md, "Observations"). So the
buffer keeps, per key, only the newest message and when it was received; each control tick
calls :meth:`ObservationBuffer.sample`, which appends the newest value of every key to the
history, but only when every key is present, valid and fresh (otherwise the caller must stop
commanding: docs/design.md §2/§4 "whatever arrives on a topic is untrusted").

Validation on arrival (:meth:`update`): shape equal to the spec's per-step shape, ``rgb`` images
exactly ``uint8`` (never cast: a float image in [0, 1] would silently become black), ``lowdim``
real numbers cast to float32 and finite. A rejected message marks its key *invalid* (with the
reason) until a good one arrives; the last good value is not used meanwhile.

Physical plausibility (:class:`KeyBounds`, from the spec's ``low``/``high``/``quaternion_at``
and the deployment's limits): every lowdim value must lie in its ``[low, high]`` box (joint
ranges with a margin, the workspace box, a catch-all magnitude), and a quaternion must have
unit norm within ``quaternion_tolerance``. A quaternion that is off by less than the tolerance
(float noise, a filter's drift) is *normalised*; one further off (e.g. ``(2, 2, 0, 0)`` or all
zeros) is *refused*: it is not a rotation that noise produced, so the sender is broken and
guessing the rotation it meant would be unsafe. A refused value marks the key invalid (hold).

Freshness has two clocks, and a key is stale when either says so:

* the *receive* time on the caller's monotonic clock: a sensor that stopped publishing;
* the *header stamp* against the node's clock (ROS time: wall clock, or the simulator's
  /clock), when the message has one: a sensor that keeps publishing old data (a replayed
  buffer, a stuck driver) or a message delayed in the network. This needs the machines'
  clocks synchronised (PTP/chrony on the robot PCs); a stamp of 0 (never set) is stale.

Pure numpy; thread-safe (subscription callbacks and the control timer may run concurrently).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KeyBounds", "ObservationBuffer", "ObservationBufferConfig"]


@dataclass(frozen=True)
class KeyBounds:
    """Physical limits of one lowdim key (see the module docstring)."""

    low: np.ndarray | None = None
    """[d] lower bounds (None: none)."""
    high: np.ndarray | None = None
    """[d] upper bounds (None: none)."""
    quaternion_at: int | None = None
    """Index of a (w, x, y, z) unit quaternion in the vector (None: none)."""
    quaternion_tolerance: float = 0.05
    """Largest accepted | |q| - 1 |; within it q is normalised, beyond it refused."""
    what: str = ""
    """Where the bounds come from (named in refusals), e.g. "hand joint limits +- 0.1 rad"."""

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value, np.float64).reshape(-1))
        if not (math.isfinite(self.quaternion_tolerance) and 0 < self.quaternion_tolerance < 1):
            raise ValueError(f"KeyBounds.quaternion_tolerance must be in (0, 1), got {self.quaternion_tolerance}")

    def apply(self, array: np.ndarray) -> tuple[np.ndarray | None, str]:
        """(the value, possibly with its quaternion normalised, '') or (None, why refused)."""
        for bound, name, bad in ((self.low, "below", np.less), (self.high, "above", np.greater)):
            if bound is None:
                continue
            if bound.shape != array.shape:
                return None, f"bounds have shape {list(bound.shape)}, value {list(array.shape)}"
            out = np.flatnonzero(bad(array, bound))
            if out.size:
                i = int(out[0])
                limit = "lower" if name == "below" else "upper"
                return None, (f"out of bounds: index {i} = {float(array[i]):.6g} is {name} its {limit} bound "
                              f"{float(bound[i]):.6g}{f' ({self.what})' if self.what else ''}")
        if self.quaternion_at is not None:
            q = array[self.quaternion_at:self.quaternion_at + 4].astype(np.float64)
            norm = float(np.linalg.norm(q))
            if not abs(norm - 1.0) <= self.quaternion_tolerance:
                return None, (f"quaternion at {self.quaternion_at} has norm {norm:.6g}, not 1 within "
                              f"{self.quaternion_tolerance:g} (refused, not normalised)")
            array = array.copy()
            array[self.quaternion_at:self.quaternion_at + 4] = (q / norm).astype(array.dtype)
        return array, ""


def bounds_from_spec(spec: Any, quaternion_tolerance: float = 0.05) -> KeyBounds | None:
    """The bounds an ObsKeySpec declares (None when it declares none)."""
    low, high, quat = getattr(spec, "low", None), getattr(spec, "high", None), getattr(spec, "quaternion_at", None)
    if low is None and high is None and quat is None:
        return None
    return KeyBounds(low, high, quat, quaternion_tolerance, what="observation spec")


@dataclass(frozen=True)
class ObservationBufferConfig:
    """History length and freshness limit."""

    history: int
    """``T``: observation steps the policy sees (o_{t-T+1..t}), one per control tick."""

    stale_after_s: float = 0.2
    """A key whose newest message is older than this (seconds since it was received) is
    stale; the control loop stops commanding until it is fresh again."""

    def __post_init__(self) -> None:
        if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f"ObservationBufferConfig.history must be an int >= 1, got {self.history!r}")
        if not (float(self.stale_after_s) > 0.0 and np.isfinite(self.stale_after_s)):
            raise ValueError(
                f"ObservationBufferConfig.stale_after_s must be a positive number, got {self.stale_after_s!r}"
            )


@dataclass
class _Slot:
    value: np.ndarray | None = None
    received: float = float("-inf")
    stamp: float | None = None
    """Header stamp of the newest value (seconds, node clock); None: the message had none."""
    invalid_reason: str = ""


class ObservationBuffer:
    """Per-key newest observation plus the control-rate history (see module docstring).

    ``spec`` maps key -> anything with ``kind`` (``"rgb"`` / ``"lowdim"``) and ``shape`` (per
    step), e.g. :class:`sernf_data.spec.ObsKeySpec`.
    """

    def __init__(self, spec: Mapping[str, Any], config: ObservationBufferConfig,
                 bounds: Mapping[str, KeyBounds] | None = None) -> None:
        if not spec:
            raise ValueError("ObservationBuffer needs at least one observation key")
        self.config = config
        self._bounds: dict[str, list[KeyBounds]] = {}
        for key, ks in spec.items():
            from_spec = bounds_from_spec(ks)
            self._bounds[key] = [from_spec] if from_spec is not None else []
        for key, extra in (bounds or {}).items():
            if key not in self._bounds:
                raise ValueError(f"bounds for unknown observation key {key!r}")
            self._bounds[key].append(extra)
        self._spec: dict[str, tuple[str, tuple[int, ...]]] = {}
        for key, ks in spec.items():
            kind, shape = str(ks.kind), tuple(int(s) for s in ks.shape)
            if kind not in ("rgb", "lowdim"):
                raise ValueError(f"observation key {key!r}: unknown kind {kind!r}")
            self._spec[key] = (kind, shape)
        self._lock = threading.Lock()
        self._slots = {key: _Slot() for key in self._spec}
        # One entry per control tick: dict key -> [*shape]; oldest first.
        self._history: deque[dict[str, np.ndarray]] = deque(maxlen=config.history)

    @property
    def keys(self) -> list[str]:
        return list(self._spec)

    # ------------------------------------------------------------------------- arrivals

    def update(self, key: str, value: Any, received: float, stamp: float | None = None) -> str:
        """Store a new observation for ``key``; returns ``""`` or why it was rejected.

        ``received``: arrival time on the caller's monotonic clock; ``stamp``: the message's
        header stamp on the node's clock (seconds), None for messages without a header.
        A rejected value marks the key invalid until the next good one.
        """
        if key not in self._spec:
            return f"unknown observation key {key!r}"
        array, reason = self._validate(key, value)
        for bounds in self._bounds[key] if not reason else ():
            array, reason = bounds.apply(array)
            if reason:
                break
        with self._lock:
            slot = self._slots[key]
            if reason:
                slot.value, slot.invalid_reason = None, reason
            else:
                slot.value, slot.received, slot.invalid_reason = array, float(received), ""
                slot.stamp = None if stamp is None else float(stamp)
        return reason

    def invalidate(self, key: str, reason: str) -> None:
        """Mark ``key`` invalid (e.g. a message that could not even be converted)."""
        with self._lock:
            slot = self._slots[key]
            slot.value, slot.invalid_reason = None, reason or "invalid"

    # ---------------------------------------------------------------------- inspection

    def problems(self, now: float, max_age: float | None = None, clock_now: float | None = None) -> dict[str, str]:
        """Key -> why it cannot be used now (missing, invalid, stale); empty when all good.

        ``now``: the monotonic clock of ``received``; ``clock_now``: the node's clock that
        header stamps are on (None: stamps are not checked)."""
        max_age = self.config.stale_after_s if max_age is None else float(max_age)
        out: dict[str, str] = {}
        with self._lock:
            for key, slot in self._slots.items():
                if slot.invalid_reason:
                    out[key] = f"invalid: {slot.invalid_reason}"
                elif slot.value is None:
                    out[key] = "missing: nothing received yet"
                else:
                    age = now - slot.received
                    if age > max_age:
                        out[key] = f"stale: last message {age:.3f} s old (> {max_age:.3f} s)"
                    elif clock_now is not None and slot.stamp is not None and clock_now - slot.stamp > max_age:
                        out[key] = (f"stale: header stamp {clock_now - slot.stamp:.3f} s old (> {max_age:.3f} s; "
                                    "received just now: old data, a delayed message or unsynchronised clocks)")
        return out

    def stale(self, now: float, max_age: float = 0.2) -> list[str]:
        """Keys that are missing, invalid or older than ``max_age`` seconds (sorted)."""
        return sorted(self.problems(now, max_age))

    def latest(self, key: str) -> np.ndarray | None:
        """Copy of the newest valid value of ``key`` (None when missing or invalid)."""
        with self._lock:
            value = self._slots[key].value
            return None if value is None else value.copy()

    # ------------------------------------------------------------------------- history

    def sample(self, now: float, clock_now: float | None = None) -> dict[str, str]:
        """Control tick: append the newest value of every key to the history.

        Returns :meth:`problems`; when it is non-empty nothing is appended (the history keeps
        only observations that were all good at their tick).
        """
        problems = self.problems(now, clock_now=clock_now)
        if problems:
            return problems
        with self._lock:
            # Values are never mutated in place (update() replaces them), so sharing is safe.
            self._history.append({key: slot.value for key, slot in self._slots.items()})
        return {}

    def history_length(self) -> int:
        with self._lock:
            return len(self._history)

    def history(self) -> dict[str, np.ndarray]:
        """``{key: [T, *shape]}`` oldest first; before ``T`` ticks the first sampled step is
        repeated at the front (episode-start padding). Raises ``RuntimeError`` if empty."""
        with self._lock:
            steps = list(self._history)
        if not steps:
            raise RuntimeError("no observation has been sampled yet")
        steps = [steps[0]] * (self.config.history - len(steps)) + steps
        return {key: np.stack([s[key] for s in steps]) for key in self._spec}

    def current(self) -> dict[str, np.ndarray]:
        """``{key: [*shape]}``: the newest sampled step (what a recorder stores for a tick)."""
        with self._lock:
            if not self._history:
                raise RuntimeError("no observation has been sampled yet")
            return {key: value.copy() for key, value in self._history[-1].items()}

    def reset_history(self) -> None:
        """Forget the history (episode start, after a safety stop); latest values stay."""
        with self._lock:
            self._history.clear()

    # ---------------------------------------------------------------------- validation

    def _validate(self, key: str, value: Any) -> tuple[np.ndarray | None, str]:
        kind, shape = self._spec[key]
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as exc:
            return None, f"not an array ({exc})"
        if array.shape != shape:
            return None, f"shape {list(array.shape)} != expected {list(shape)}"
        if kind == "rgb":
            if array.dtype != np.uint8:
                return None, f"rgb image dtype {array.dtype} != uint8"
            return np.ascontiguousarray(array), ""
        if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
            return None, f"dtype {array.dtype} is not a real number type"
        with np.errstate(over="ignore"):
            array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array))[0])
            return None, f"non-finite value at index {bad}"
        return array, ""
