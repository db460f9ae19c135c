"""Which slices of the action vector drive which device, their limits, and the hold action.

The scissors robot's action (paper appendix E3; docs/design.md §4) is::

    a = [ dx, dy, dz, qw, qx, qy, qz | q_hand_0 .. q_hand_{n-1} ]
          arm: relative pose, a delta   hand: absolute joint position targets
          in the *current* EE frame     (radians), published as sensor_msgs/JointState
          -> /franka/relative_pose_command -> /orca_hand/joint_command

Either device may be absent (``arm_index`` / ``hand_index`` = -1) and they may come in any
order, but together they must cover ``[0, A)`` exactly.

**Clipping** (docs/design.md §2 "drivers report what they did"): the command that is published, and
the action the replay stores, is the *clipped* one:

* arm: the quaternion is normalized (and made ``qw >= 0``, the same rotation) because a network
  output is never exactly unit; the translation is scaled down to at most
  ``arm_max_translation_m`` (direction kept) and the rotation angle to at most
  ``arm_max_rotation_rad`` (axis kept). A near-zero quaternion (no rotation can be read from
  it) becomes the identity: fail safe, no motion.
* hand: each joint is clipped to ``[lower, upper]``, then moved at most ``hand_max_step_rad``
  away from the previous hand command (a rate limit: a new chunk never makes the hand jump).

**Hold** (the action that keeps the robot where it is): zero translation, identity rotation,
and for the hand the *last commanded* joint targets when there are any, else the measured joint
positions. Why the command rather than the measurement: a position-controlled hand holding an
object has its target inside the object; commanding the measured (contact) positions would
release the grip force, so "hold" would drop the scissors.

Pure numpy (no ROS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ARM_DIM", "ARM_DIM_NAMES", "ActionSpace", "ActionSpaceConfig", "ClipReport"]

ARM_DIM = 7
"""Relative EE pose: translation xyz (m) + rotation quaternion wxyz."""

ARM_DIM_NAMES = ("arm_dx", "arm_dy", "arm_dz", "arm_qw", "arm_qx", "arm_qy", "arm_qz")
"""Names of the arm's action dims (the joint_names of /sernf/action_chunk)."""

# Below this norm a quaternion carries no usable rotation (the network output collapsed).
_MIN_QUAT_NORM = 1e-3


@dataclass(frozen=True)
class ActionSpaceConfig:
    """Layout and limits of the action vector."""

    arm_index: int = 0
    """First index of the 7 arm dims (relative pose: xyz + quaternion wxyz); -1: no arm."""

    hand_index: int = -1
    """First index of the hand joint targets; -1: no hand."""

    hand_joint_names: tuple[str, ...] = ()
    """Hand joint names in action order (the JointState names of the hand command)."""

    hand_lower: tuple[float, ...] = ()
    """Lower joint limits (rad), one per hand joint."""

    hand_upper: tuple[float, ...] = ()
    """Upper joint limits (rad), one per hand joint."""

    arm_max_translation_m: float = 0.02
    """Largest translation one action may command (m per control step; 0.2 m/s at 10 Hz)."""

    arm_max_rotation_rad: float = 0.1
    """Largest rotation angle one action may command (rad per control step)."""

    hand_max_step_rad: float = 0.3
    """Largest change of a hand joint target between consecutive commands (rad); 0 disables."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hand_joint_names", tuple(str(n) for n in self.hand_joint_names))
        object.__setattr__(self, "hand_lower", tuple(float(x) for x in self.hand_lower))
        object.__setattr__(self, "hand_upper", tuple(float(x) for x in self.hand_upper))
        for name in ("arm_index", "hand_index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"ActionSpaceConfig.{name} must be an int >= -1, got {value!r}")
        if self.arm_index < 0 and self.hand_index < 0:
            raise ValueError("ActionSpaceConfig needs an arm or a hand (both indices are -1)")
        n = len(self.hand_joint_names)
        if self.hand_index >= 0:
            if n == 0:
                raise ValueError("ActionSpaceConfig.hand_joint_names is empty but hand_index >= 0")
            if len(set(self.hand_joint_names)) != n or any(not s for s in self.hand_joint_names):
                raise ValueError("ActionSpaceConfig.hand_joint_names must be unique and non-empty")
            if len(self.hand_lower) != n or len(self.hand_upper) != n:
                raise ValueError(
                    f"ActionSpaceConfig: {n} hand joints but {len(self.hand_lower)} lower / "
                    f"{len(self.hand_upper)} upper limits"
                )
            lower, upper = np.array(self.hand_lower), np.array(self.hand_upper)
            if not (np.isfinite(lower).all() and np.isfinite(upper).all() and (lower <= upper).all()):
                raise ValueError("ActionSpaceConfig: hand limits must be finite with lower <= upper")
        elif n or self.hand_lower or self.hand_upper:
            raise ValueError("ActionSpaceConfig: hand joints/limits given but hand_index is -1")
        for name in ("arm_max_translation_m", "arm_max_rotation_rad", "hand_max_step_rad"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"ActionSpaceConfig.{name} must be finite and >= 0, got {value}")
        if self.arm_max_rotation_rad > np.pi:
            raise ValueError("ActionSpaceConfig.arm_max_rotation_rad must be <= pi")
        # The device slices must tile [0, A) exactly: a dim no device reads would be a silent
        # hole in the command, an overlap would drive two devices from one number.
        covered = []
        if self.arm_index >= 0:
            covered += range(self.arm_index, self.arm_index + ARM_DIM)
        if self.hand_index >= 0:
            covered += range(self.hand_index, self.hand_index + n)
        if sorted(covered) != list(range(len(covered))):
            raise ValueError(
                f"ActionSpaceConfig: arm (index {self.arm_index}, {ARM_DIM} dims) and hand "
                f"(index {self.hand_index}, {n} dims) must cover 0..A-1 exactly once"
            )

    @property
    def action_dim(self) -> int:
        """``A``."""
        return (ARM_DIM if self.arm_index >= 0 else 0) + (
            len(self.hand_joint_names) if self.hand_index >= 0 else 0
        )


@dataclass(frozen=True)
class ClipReport:
    """What clipping changed (for logs and diagnostics)."""

    translation_clipped: bool = False
    rotation_clipped: bool = False
    quaternion_degenerate: bool = False
    hand_limit_clipped: int = 0
    """Hand joints that were outside their limits."""
    hand_rate_limited: int = 0
    """Hand joints whose step was limited."""

    @property
    def any(self) -> bool:
        return bool(
            self.translation_clipped or self.rotation_clipped or self.quaternion_degenerate
            or self.hand_limit_clipped or self.hand_rate_limited
        )


class ActionSpace:
    """Splits, clips and holds action vectors for the configured devices."""

    def __init__(self, config: ActionSpaceConfig) -> None:
        self.config = config
        c = config
        self.arm = slice(c.arm_index, c.arm_index + ARM_DIM) if c.arm_index >= 0 else None
        self.hand = (
            slice(c.hand_index, c.hand_index + len(c.hand_joint_names)) if c.hand_index >= 0 else None
        )
        self._lower = np.asarray(c.hand_lower, np.float32)
        self._upper = np.asarray(c.hand_upper, np.float32)

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def names(self) -> list[str]:
        """One name per action dim, in action order."""
        names = [""] * self.action_dim
        if self.arm is not None:
            names[self.arm] = ARM_DIM_NAMES
        if self.hand is not None:
            names[self.hand] = self.config.hand_joint_names
        return names

    def clip(
        self, action: np.ndarray, previous_hand: np.ndarray | None = None
    ) -> tuple[np.ndarray, ClipReport]:
        """The command to publish for ``action`` ``[A]`` (a float32 copy) and what changed.

        ``previous_hand`` ``[n]``: the last published hand targets, for the rate limit.
        Raises ``ValueError`` on a wrong shape or non-finite values (the caller holds).
        """
        action = np.array(action, dtype=np.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action must be [A] = [{self.action_dim}], got {list(action.shape)}")
        if not np.isfinite(action).all():
            raise ValueError("action contains non-finite values")
        report: dict[str, object] = {}
        if self.arm is not None:
            action[self.arm], arm_report = _clip_relative_pose(
                action[self.arm], self.config.arm_max_translation_m, self.config.arm_max_rotation_rad
            )
            report.update(arm_report)
        if self.hand is not None:
            hand = action[self.hand]
            clipped = np.clip(hand, self._lower, self._upper)
            report["hand_limit_clipped"] = int(np.count_nonzero(clipped != hand))
            step = self.config.hand_max_step_rad
            if previous_hand is not None and step > 0:
                previous = np.asarray(previous_hand, np.float32)
                if previous.shape != clipped.shape:
                    raise ValueError(
                        f"previous_hand must be [{clipped.shape[0]}], got {list(previous.shape)}"
                    )
                limited = np.clip(clipped, previous - step, previous + step)
                # Stay inside the limits even if the previous target was outside them.
                limited = np.clip(limited, self._lower, self._upper)
                report["hand_rate_limited"] = int(np.count_nonzero(limited != clipped))
                clipped = limited
            action[self.hand] = clipped
        return action, ClipReport(**report)  # type: ignore[arg-type]

    def hold(
        self, last_command: np.ndarray | None = None, hand_positions: np.ndarray | None = None
    ) -> np.ndarray:
        """The hold action ``[A]``: no arm motion; hand keeps its last target (see module doc).

        ``last_command`` ``[A]``: the last published (clipped) action; ``hand_positions``
        ``[n]``: measured joint positions, used only when there is no last command. Raises
        ``ValueError`` if the robot has a hand and neither is known (no safe target exists).
        """
        hold = np.zeros(self.action_dim, np.float32)
        if self.arm is not None:
            hold[self.arm] = (0, 0, 0, 1, 0, 0, 0)
        if self.hand is not None:
            if last_command is not None:
                target = np.asarray(last_command, np.float32)[self.hand]
            elif hand_positions is not None:
                target = np.asarray(hand_positions, np.float32)
            else:
                raise ValueError("no hand target to hold: neither a last command nor joint positions")
            if target.shape != (len(self.config.hand_joint_names),) or not np.isfinite(target).all():
                raise ValueError(f"hand hold target must be finite [{self.hand.stop - self.hand.start}]")
            hold[self.hand] = np.clip(target, self._lower, self._upper)
        return hold

    def hand_part(self, action: np.ndarray) -> np.ndarray | None:
        """The hand targets of ``action`` (None without a hand)."""
        return None if self.hand is None else np.asarray(action, np.float32)[self.hand].copy()


def _clip_relative_pose(
    pose: np.ndarray, max_translation: float, max_rotation: float
) -> tuple[np.ndarray, dict[str, object]]:
    """Clip a relative pose ``[7]`` (xyz + quaternion wxyz); returns (pose, report fields)."""
    report: dict[str, object] = {}
    out = pose.astype(np.float64)
    translation = out[:3]
    norm = float(np.linalg.norm(translation))
    if norm > max_translation:
        out[:3] = translation * (max_translation / norm) if norm > 0 else 0.0
        report["translation_clipped"] = True
    quat = out[3:]
    qnorm = float(np.linalg.norm(quat))
    if qnorm < _MIN_QUAT_NORM:
        quat = np.array([1.0, 0.0, 0.0, 0.0])
        report["quaternion_degenerate"] = True
    else:
        quat = quat / qnorm
    if quat[0] < 0:
        quat = -quat  # same rotation; qw >= 0 gives the short way round (angle <= pi)
    vector_norm = float(np.linalg.norm(quat[1:]))
    angle = 2.0 * np.arctan2(vector_norm, quat[0])
    if angle > max_rotation:
        axis = quat[1:] / vector_norm
        half = 0.5 * max_rotation
        quat = np.concatenate([[np.cos(half)], axis * np.sin(half)])
        report["rotation_clipped"] = True
    out[3:] = quat
    return out.astype(np.float32), report
