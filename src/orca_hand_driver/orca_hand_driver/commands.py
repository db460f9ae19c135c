"""Joint commands: validation of untrusted input, clamping, per-cycle rate limit, watchdog.

Everything here is pure (time is passed in), so the safety rules are tested without a bus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CommandError", "CommandShaper", "parse_command"]


class CommandError(ValueError):
    """A command that must not move the hand (the reason is the message)."""


def parse_command(names: Sequence[str], positions: Sequence[float],
                  joint_names: Sequence[str]) -> dict[int, float]:
    """Validate a JointState-like command → {joint index: position (rad)}.

    Positions are given by joint name, any subset; with no names, all joints in the model's
    order. Unknown or repeated names, NaN/inf, and lengths that do not match are refused: the
    whole message is rejected, nothing of it is used.
    """
    names = list(names)
    positions = list(positions)
    if not names:
        if len(positions) != len(joint_names):
            raise CommandError(f"no joint names and {len(positions)} positions (need names, or all {len(joint_names)} joints in order)")
        names = list(joint_names)
    if len(names) != len(positions):
        raise CommandError(f"{len(names)} names but {len(positions)} positions")
    index = {name: k for k, name in enumerate(joint_names)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise CommandError(f"unknown joint names {unknown}")
    if len(set(names)) != len(names):
        raise CommandError("a joint is named twice")
    values = {}
    for name, value in zip(names, positions, strict=True):
        value = float(value)
        if not math.isfinite(value):
            raise CommandError(f"non-finite position for {name}")
        values[index[name]] = value
    return values


@dataclass
class ShapedTarget:
    positions: np.ndarray
    """What is sent this cycle (rad)."""
    holding: bool
    """True while the watchdog (or a fault) holds the measured position."""
    clamped: bool
    """Some requested target was outside its joint range."""
    rate_limited: bool


class CommandShaper:
    """Turns the latest valid command into the per-cycle target the servos get.

    - Each requested position is clamped to its joint's range.
    - The sent target moves at most ``max_step_rad`` per cycle toward it (no jumps, whatever
      the policy sends).
    - Watchdog: no valid command for ``timeout_s`` → hold the position *measured* when the
      watchdog fired (not the last target: the hand may be blocked by an object, holding a
      stale target would keep squeezing), until the next valid command.
    """

    def __init__(self, lower: np.ndarray, upper: np.ndarray, max_step_rad: float, timeout_s: float) -> None:
        if not (max_step_rad > 0 and timeout_s > 0):
            raise ValueError("max_step_rad and timeout_s must be positive")
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.max_step = float(max_step_rad)
        self.timeout_s = float(timeout_s)
        self.requested: np.ndarray | None = None
        self.sent: np.ndarray | None = None
        self.last_command_time: float | None = None
        self.holding = True
        self.watchdog_trips = 0

    def start(self, measured: np.ndarray) -> None:
        """Begin (activation): hold where the hand is until a command arrives."""
        self.sent = np.clip(np.asarray(measured, float), self.lower, self.upper)
        self.requested = self.sent.copy()
        self.last_command_time = None
        self.holding = True

    def hold(self, measured: np.ndarray) -> None:
        """Hold the measured position now (faults, deactivation); a new command resumes."""
        self.start(measured)

    def command(self, values: dict[int, float], now: float) -> None:
        if self.requested is None:
            raise CommandError("not active")
        for k, value in values.items():
            self.requested[k] = value
        self.last_command_time = now
        self.holding = False

    def next_target(self, measured: np.ndarray, now: float) -> ShapedTarget:
        assert self.sent is not None and self.requested is not None
        if not self.holding and (self.last_command_time is None or now - self.last_command_time > self.timeout_s):
            self.hold(measured)
            self.watchdog_trips += 1
        clamped_request = np.clip(self.requested, self.lower, self.upper)
        clamped = bool(np.any(clamped_request != self.requested))
        step = np.clip(clamped_request - self.sent, -self.max_step, self.max_step)
        rate_limited = bool(np.any(step != clamped_request - self.sent))
        self.sent = self.sent + step
        return ShapedTarget(self.sent.copy(), self.holding, clamped, rate_limited)
