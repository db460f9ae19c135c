"""The bridge's decisions, without ROS: relative commands -> safe equilibrium poses.

The node feeds it measured poses, commands, the robot's error signal and the clock (monotonic
seconds); it answers with the equilibrium pose to publish, the delta actually applied, or the
reason a command was refused. Nothing here blocks or talks to the network.

Modes:

* ``INACTIVE`` — lifecycle not active; nothing is forwarded.
* ``HOLDING`` — active, the equilibrium is a *latched* measured pose (after activation, after the
  command watchdog fired, after a reflex was cleared). Latched, not tracked: an equilibrium that
  followed the measured pose would let the arm sag or be pushed away without resistance.
* ``FORWARDING`` — active, commands are composed into equilibrium poses.
* ``REFLEX`` — the robot reports an error: commands are refused and the equilibrium tracks the
  measured pose (the robot is stopped by its reflex; when control resumes the controller must
  not jump back to a target from before the reflex). Error recovery may be requested.
* ``AWAITING_RESUME`` — the error is gone; the bridge holds until ``resume()`` (or resumes by
  itself with ``auto_resume_after_recovery``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np

from franka_bridge.config import FrankaBridgeConfig
from franka_bridge.pose_math import (
    clip_delta,
    clip_to_cone,
    clip_to_workspace,
    compose,
    hemisphere_aligned,
    quaternion_norm_error,
    relative,
    rotation_angle,
)

__all__ = ["BridgeCore", "CommandOutcome", "Mode", "Pose"]


class Mode(enum.Enum):
    INACTIVE = "inactive"
    HOLDING = "holding"
    FORWARDING = "forwarding"
    REFLEX = "reflex"
    AWAITING_RESUME = "awaiting_resume"


@dataclass(frozen=True)
class Pose:
    """A pose in the base frame: position ``[3]`` (m), unit quaternion ``[4]`` (w, x, y, z)."""

    position: np.ndarray
    orientation: np.ndarray
    frame_id: str = ""


@dataclass(frozen=True)
class CommandOutcome:
    """What became of one command: the new equilibrium and the applied delta, or a refusal."""

    accepted: bool
    reason: str = ""
    """Why it was refused (empty when accepted)."""
    target: Pose | None = None
    """The equilibrium to publish (accepted commands)."""
    executed_translation: np.ndarray | None = None
    """The delta actually applied, in the same convention as the command (EE frame)."""
    executed_rotation: np.ndarray | None = None
    limits: tuple[str, ...] = ()
    """Which limits changed the command: 'translation', 'rotation', 'workspace', 'cone',
    'step' (the safe target was more than one step from the base)."""
    hemisphere_flipped: bool = False


@dataclass
class _Counters:
    accepted: int = 0
    refused: int = 0
    clipped: int = 0
    watchdog_holds: int = 0
    reflexes: int = 0
    recovery_calls: int = 0
    recovery_failures: int = 0
    invalid_poses: int = 0
    refusals_by_reason: dict[str, int] = field(default_factory=dict)


class BridgeCore:
    """State and decisions of the bridge (see the module docstring). Times are monotonic
    seconds supplied by the caller."""

    def __init__(self, config: FrankaBridgeConfig) -> None:
        self.cfg = config
        self.mode = Mode.INACTIVE
        self.counters = _Counters()
        self._low = np.asarray(config.workspace_low, dtype=np.float64)
        self._high = np.asarray(config.workspace_high, dtype=np.float64)
        ref = np.asarray(config.reference_orientation, dtype=np.float64)
        self._reference = ref / np.linalg.norm(ref)
        self.measured: Pose | None = None
        self.measured_at: float | None = None
        self.target: Pose | None = None
        self._last_published_q: np.ndarray | None = None
        self.last_command_at: float | None = None
        self.error_present = False
        self._recovery_in_flight = False
        self._recovery_attempts = 0  # in the current reflex
        self._last_recovery_call: float | None = None

    # -- robot state --------------------------------------------------------------------------
    def on_pose(self, position: np.ndarray, orientation: np.ndarray, frame_id: str, now: float) -> str:
        """A measured pose; returns '' when taken, else why it was ignored."""
        p = np.asarray(position, dtype=np.float64)
        q = np.asarray(orientation, dtype=np.float64)
        reason = ""
        if p.shape != (3,) or q.shape != (4,) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            reason = "measured pose has NaN/inf"
        elif quaternion_norm_error(q) > self.cfg.quaternion_norm_tolerance:
            reason = f"measured pose quaternion norm {np.linalg.norm(q):.4f} is not 1"
        elif self.cfg.pose_frame and frame_id != self.cfg.pose_frame:
            reason = f"measured pose frame {frame_id!r} is not {self.cfg.pose_frame!r}"
        if reason:
            self.counters.invalid_poses += 1
            return reason
        self.measured = Pose(p, q / np.linalg.norm(q), frame_id)
        self.measured_at = now
        return ""

    def pose_age(self, now: float) -> float:
        """Seconds since the last valid measured pose (inf if none)."""
        return float("inf") if self.measured_at is None else now - self.measured_at

    def pose_problem(self, now: float) -> str:
        """Why the measured pose cannot be used now ('' if it can)."""
        if self.measured is None:
            return "no measured robot pose received yet"
        age = self.pose_age(now)
        if age > self.cfg.pose_timeout_s:
            return f"measured robot pose is stale ({age * 1e3:.0f} ms > {self.cfg.pose_timeout_s * 1e3:.0f} ms)"
        return ""

    def on_error_signal(self, error: bool, now: float) -> str:
        """The robot's error/reflex flag; returns a log line when the state changed, else ''."""
        if error and not self.error_present:
            self.error_present = True
            self.counters.reflexes += 1
            self._recovery_attempts = 0
            if self.mode is not Mode.INACTIVE:
                self.mode = Mode.REFLEX
                self._track_measured(now)
            return "robot reports an error/reflex: forwarding stopped, equilibrium follows the measured pose"
        if not error and self.error_present:
            self.error_present = False
            if self.mode in (Mode.REFLEX, Mode.AWAITING_RESUME):
                if self.cfg.auto_resume_after_recovery:
                    self._latch_measured(now)
                    self.mode = Mode.HOLDING
                    return "robot error cleared: resuming (auto_resume_after_recovery)"
                self.mode = Mode.AWAITING_RESUME
                return "robot error cleared: holding until ~/resume is called"
            return "robot error cleared"
        return ""

    # -- error recovery -----------------------------------------------------------------------
    def recovery_due(self, now: float) -> bool:
        """Whether to call error recovery now: only while an error is present, one call in
        flight at most, at most max_recovery_attempts per reflex, recovery_min_interval_s
        apart."""
        if not self.error_present or self._recovery_in_flight:
            return False
        if self._recovery_attempts >= self.cfg.max_recovery_attempts:
            return False
        return self._last_recovery_call is None or now - self._last_recovery_call >= self.cfg.recovery_min_interval_s

    def recovery_started(self, now: float) -> None:
        self._recovery_in_flight = True
        self._recovery_attempts += 1
        self._last_recovery_call = now
        self.counters.recovery_calls += 1

    def recovery_finished(self, succeeded: bool) -> None:
        """The recovery call ended. Success alone does not resume: the robot's error signal
        clearing does (the robot, not the action result, is the authority)."""
        self._recovery_in_flight = False
        if not succeeded:
            self.counters.recovery_failures += 1

    @property
    def recovery_in_flight(self) -> bool:
        return self._recovery_in_flight

    def resume(self, now: float) -> tuple[bool, str]:
        """Operator request to forward commands again after a reflex."""
        if self.error_present:
            return False, "the robot still reports an error; recover it first"
        if self.mode is not Mode.AWAITING_RESUME:
            return False, f"nothing to resume (mode: {self.mode.value})"
        problem = self.pose_problem(now)
        if problem:
            return False, f"cannot resume: {problem}"
        self._latch_measured(now)
        self.mode = Mode.HOLDING
        return True, "resumed: holding the measured pose until the next command"

    # -- lifecycle ------------------------------------------------------------------------------
    def activate(self, now: float) -> tuple[bool, str]:
        """Start: the equilibrium becomes the measured pose (needs a fresh one)."""
        problem = self.pose_problem(now)
        if problem:
            return False, problem
        self._latch_measured(now)
        self.last_command_at = None
        self.mode = Mode.REFLEX if self.error_present else Mode.HOLDING
        return True, ""

    def deactivate(self, now: float) -> Pose | None:
        """Stop forwarding; returns the hold pose to publish once (the measured pose if fresh)."""
        self.mode = Mode.INACTIVE
        if not self.pose_problem(now):
            self._latch_measured(now)
            return self.target
        return None

    # -- commands -------------------------------------------------------------------------------
    def on_command(self, translation: np.ndarray, rotation: np.ndarray, frame_id: str, now: float) -> CommandOutcome:
        """Validate, compose in the current EE frame, clip; a refusal changes nothing."""
        reason = self._command_problem(translation, rotation, frame_id, now)
        if reason:
            self.counters.refused += 1
            key = reason.split(":")[0].split("(")[0].strip()
            self.counters.refusals_by_reason[key] = self.counters.refusals_by_reason.get(key, 0) + 1
            return CommandOutcome(False, reason)
        translation = np.asarray(translation, dtype=np.float64)
        dq = np.asarray(rotation, dtype=np.float64)
        dq = dq / math.sqrt(float(np.dot(dq, dq)))
        base = self._base_pose()
        limits: list[str] = []
        if math.sqrt(float(np.dot(translation, translation))) > self.cfg.max_translation_m:
            limits.append("translation")
        if rotation_angle(dq) > self.cfg.max_rotation_rad:
            limits.append("rotation")
        dp, dq, _ = clip_delta(translation, dq, self.cfg.max_translation_m, self.cfg.max_rotation_rad)
        p, q = compose(base.position, base.orientation, dp, dq)
        p, outside = clip_to_workspace(p, self._low, self._high)
        if outside:
            limits.append("workspace")
        q, off_cone = clip_to_cone(q, self._reference, self.cfg.max_orientation_deviation_rad)
        if off_cone:
            limits.append("cone")
        # The safe target must still be one step from the base: a base outside the workspace or
        # the cone (an arm pushed there) is brought back a step per command, never in one jump.
        dp, dq = relative(base.position, base.orientation, p, q)
        dp, dq, stepped = clip_delta(dp, dq, self.cfg.max_translation_m, self.cfg.max_rotation_rad)
        if stepped and (outside or off_cone):
            limits.append("step")
        p, q = compose(base.position, base.orientation, dp, dq)
        q, flipped = hemisphere_aligned(q, self._last_published_q)
        self.target = Pose(p, q, base.frame_id)
        self._last_published_q = q
        self.mode = Mode.FORWARDING
        self.last_command_at = now
        self.counters.accepted += 1
        if limits:
            self.counters.clipped += 1
        return CommandOutcome(True, "", self.target, dp, dq, tuple(limits), flipped)

    def _command_problem(self, translation: np.ndarray, rotation: np.ndarray, frame_id: str, now: float) -> str:
        if self.mode is Mode.INACTIVE:
            return "bridge is not active"
        if self.error_present or self.mode is Mode.REFLEX:
            return "robot in reflex/error: waiting for error recovery"
        if self.mode is Mode.AWAITING_RESUME:
            return "reflex cleared: waiting for ~/resume"
        t = np.asarray(translation, dtype=np.float64)
        r = np.asarray(rotation, dtype=np.float64)
        if t.shape != (3,) or r.shape != (4,) or not (np.all(np.isfinite(t)) and np.all(np.isfinite(r))):
            return "command has NaN/inf"
        if quaternion_norm_error(r) > self.cfg.quaternion_norm_tolerance:
            return (f"command rotation is not a unit quaternion: norm {np.linalg.norm(r):.4f} "
                    f"(tolerance {self.cfg.quaternion_norm_tolerance})")
        if self.cfg.command_frame and frame_id != self.cfg.command_frame:
            return f"command frame_id {frame_id!r} is not {self.cfg.command_frame!r}"
        return self.pose_problem(now)

    def _base_pose(self) -> Pose:
        """What 'the current EE frame' is: the last equilibrium while the arm is near it (so
        consecutive commands chain, as the simulated task does), else the measured pose."""
        measured = self.measured
        assert measured is not None  # checked by _command_problem
        target = self.target
        if target is None:
            return measured
        distance = float(np.linalg.norm(measured.position - target.position))
        _, dq = relative(target.position, target.orientation, measured.position, measured.orientation)
        if distance < self.cfg.reanchor_distance_m and rotation_angle(dq) < self.cfg.reanchor_angle_rad:
            return Pose(target.position, target.orientation, measured.frame_id)
        return measured

    # -- periodic -------------------------------------------------------------------------------
    def tick(self, now: float) -> tuple[Pose | None, str]:
        """Watchdog and hold loop: the equilibrium to (re)publish now (None: nothing to
        publish) and a log line when something happened."""
        note = ""
        if self.mode is Mode.INACTIVE:
            return None, ""
        if self.mode in (Mode.REFLEX, Mode.AWAITING_RESUME):
            self._track_measured(now)
        elif self.mode is Mode.FORWARDING and self.last_command_at is not None \
                and now - self.last_command_at > self.cfg.command_timeout_s:
            self.counters.watchdog_holds += 1
            self.mode = Mode.HOLDING
            if self._latch_measured(now):
                note = (f"no command for {now - self.last_command_at:.2f} s "
                        f"(> {self.cfg.command_timeout_s} s): equilibrium set to the measured pose")
            else:
                note = (f"no command for {now - self.last_command_at:.2f} s and "
                        f"{self.pose_problem(now)}: keeping the last equilibrium")
        return self.target, note

    def _latch_measured(self, now: float) -> bool:
        if self.pose_problem(now):
            return False
        assert self.measured is not None
        q, _ = hemisphere_aligned(self.measured.orientation, self._last_published_q)
        self.target = Pose(self.measured.position.copy(), q, self.measured.frame_id)
        self._last_published_q = q
        return True

    def _track_measured(self, now: float) -> None:
        self._latch_measured(now)
