"""Glove wrist pose → relative end-effector commands, with a clutch and a frame calibration.

Convention (the Franka bridge's and the simulator's): a command is (dp, dR) in the *current*
end-effector frame; the new commanded pose is R' = R·dR, p' = p + R·dp, chained onto the
previously commanded pose (the impedance equilibrium). So the mapper keeps that commanded
pose itself: on engage it starts at the measured EE pose, every step moves it by exactly the
delta sent, and it re-anchors to the measured pose when the two drift apart (contact holding
the arm back), as the bridge does, so nothing winds up.

Clutch: while disengaged nothing moves (zero deltas). On engage, the glove's current wrist pose
and the EE's current pose become the reference; afterwards the EE target is

    p* = p_ee0 + k · C (p_glove − p_glove0),     R* = C (R_glove R_glove0ᵀ) Cᵀ · R_ee0

with C the rotation from the glove world to the robot base frame (a yaw: both frames are
Z-up after ``frames``), k the motion scale. Disengage, move the hand back, engage again: the
operator re-centres without moving the robot. Each step's delta is limited in length and angle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from teleop_rokoko.frames import clamp_rotation_angle, rotation_angle, yaw_matrix

__all__ = ["ClutchGesture", "WristConfig", "WristMapper", "frame_yaw_from_hand"]


@dataclass
class WristConfig:
    """Wrist → end-effector mapping settings."""

    position_scale: float = 1.0
    """Robot metres per metre of operator wrist motion."""
    max_step_m: float = 0.01
    """Largest position delta per command (m); at 30 Hz 0.01 m is 0.3 m/s."""
    max_step_rad: float = 0.05
    """Largest rotation delta per command (rad)."""
    reanchor_distance_m: float = 0.01
    """Re-anchor the commanded pose to the measured one beyond this deviation (m)."""
    reanchor_angle_rad: float = 0.1
    """Re-anchor the commanded pose to the measured one beyond this deviation (rad)."""

    def __post_init__(self) -> None:
        for name in ("position_scale", "max_step_m", "max_step_rad", "reanchor_distance_m",
                     "reanchor_angle_rad"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")


class WristMapper:
    """Clutch + relative command generator (pure; the node feeds it poses)."""

    def __init__(self, config: WristConfig | None = None, frame_yaw_rad: float = 0.0):
        self.config = config or WristConfig()
        self.set_frame_yaw(frame_yaw_rad)
        self.engaged = False
        self._glove0: tuple[np.ndarray, np.ndarray] | None = None
        self._ee0: tuple[np.ndarray, np.ndarray] | None = None
        self._cmd: tuple[np.ndarray, np.ndarray] | None = None
        self.reanchors = 0

    def set_frame_yaw(self, yaw_rad: float) -> None:
        """Rotation from the glove world to the robot base frame (about +z)."""
        if not math.isfinite(yaw_rad):
            raise ValueError("frame yaw must be finite")
        self.frame_yaw_rad = float(yaw_rad)
        self._c = yaw_matrix(self.frame_yaw_rad)

    def engage(self, glove_pos: np.ndarray, glove_rot: np.ndarray, ee_pos: np.ndarray,
               ee_rot: np.ndarray) -> None:
        """Take the current glove and EE poses as the reference and start following."""
        self._glove0 = (np.array(glove_pos, dtype=np.float64), np.array(glove_rot, dtype=np.float64))
        self._ee0 = (np.array(ee_pos, dtype=np.float64), np.array(ee_rot, dtype=np.float64))
        self._cmd = (self._ee0[0].copy(), self._ee0[1].copy())
        self.engaged = True

    def disengage(self) -> None:
        self.engaged = False

    def target(self, glove_pos: np.ndarray, glove_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The EE pose the glove asks for (base frame); only while engaged."""
        if self._glove0 is None or self._ee0 is None:
            raise RuntimeError("not engaged")
        (g0p, g0r), (e0p, e0r) = self._glove0, self._ee0
        c = self._c
        target_p = e0p + self.config.position_scale * (c @ (np.asarray(glove_pos) - g0p))
        target_r = c @ (np.asarray(glove_rot) @ g0r.T) @ c.T @ e0r
        return target_p, target_r

    def step(self, glove_pos: np.ndarray, glove_rot: np.ndarray, ee_pos: np.ndarray | None = None,
             ee_rot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One command: (dp [3] in the current EE frame, dR [3, 3]); zero while disengaged."""
        if not self.engaged or self._cmd is None:
            return np.zeros(3), np.eye(3)
        cfg = self.config
        cmd_p, cmd_r = self._cmd
        if ee_pos is not None and ee_rot is not None:
            off_p = float(np.linalg.norm(np.asarray(ee_pos) - cmd_p))
            off_r = rotation_angle(cmd_r.T @ np.asarray(ee_rot))
            if off_p > cfg.reanchor_distance_m or off_r > cfg.reanchor_angle_rad:
                cmd_p, cmd_r = np.array(ee_pos, dtype=np.float64), np.array(ee_rot, dtype=np.float64)
                self.reanchors += 1
        target_p, target_r = self.target(glove_pos, glove_rot)
        dp = cmd_r.T @ (target_p - cmd_p)
        length = float(np.linalg.norm(dp))
        if length > cfg.max_step_m:
            dp *= cfg.max_step_m / length
        d_rot = clamp_rotation_angle(cmd_r.T @ target_r, cfg.max_step_rad)
        self._cmd = (cmd_p + cmd_r @ dp, cmd_r @ d_rot)
        return dp, d_rot

    @property
    def commanded_pose(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The pose the commands sent so far lead to (base frame), None before engaging."""
        return self._cmd


def frame_yaw_from_hand(palm_rotation: np.ndarray, robot_heading_rad: float = 0.0) -> float:
    """Yaw that maps the operator's hand direction (palm +x, projected on the floor) onto the
    robot base's ``robot_heading_rad`` (0: the robot's +x). The operator points the flat hand
    the way the robot's +x runs and triggers the frame calibration."""
    forward = np.asarray(palm_rotation)[:, 0]
    horizontal = math.hypot(forward[0], forward[1])
    if horizontal < 0.5:
        raise ValueError("the hand points too steeply up or down to read a heading; hold it level")
    heading = math.atan2(forward[1], forward[0])
    return math.remainder(robot_heading_rad - heading, 2.0 * math.pi)


class ClutchGesture:
    """Optional glove gesture for the clutch: thumb tip on the little fingertip, held for
    ``hold_s``, toggles; the fingers must part again (1.5 × threshold) before the next toggle."""

    def __init__(self, threshold_m: float = 0.025, hold_s: float = 0.7):
        if threshold_m <= 0 or hold_s <= 0:
            raise ValueError("threshold_m and hold_s must be > 0")
        self.threshold_m = threshold_m
        self.hold_s = hold_s
        self._since: float | None = None
        self._armed = True

    def update(self, human_points: np.ndarray, now_s: float) -> bool:
        """Feed one frame (``HumanHand.points``); True when the gesture fires."""
        distance = float(np.linalg.norm(human_points[9] - human_points[5]))  # little tip − thumb tip
        if distance > 1.5 * self.threshold_m:
            self._armed, self._since = True, None
            return False
        if distance > self.threshold_m or not self._armed:
            self._since = None
            return False
        if self._since is None:
            self._since = now_s
        if now_s - self._since >= self.hold_s:
            self._armed, self._since = False, None
            return True
        return False
