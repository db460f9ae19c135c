"""The Franka controller's side of the arm's device boundary, as the simulated arms serve it.

Both simulated arms (``sim_arm_node``: a free spring-damper body; ``sim_world_node``: the
MuJoCo world's hand on its weld) answer ``franka_bridge`` exactly as franka's Cartesian
impedance controller stack does: the same topics, message types, error flag and error-recovery
action (``sernf_sim.ros.franka_controller.FrankaControllerServer`` serves them). This module is
the ROS-free part: the parameters both nodes declare and what a simulated arm must offer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["ControlledArm", "FrankaControllerConfig"]


@dataclass
class FrankaControllerConfig:
    """Parameters of the simulated Franka controller interface (topics, frames, recovery)."""

    equilibrium_topic: str = "/franka/equilibrium_pose"
    """Subscribed equilibrium pose (the impedance controller's input)."""
    pose_topic: str = "/franka_robot_state_broadcaster/current_pose"
    """Published measured EE pose (franka_ros2 state broadcaster's convenience topic)."""
    error_topic: str = "/franka/robot_error"
    """Published std_msgs/Bool: true while the arm is in a reflex."""
    recovery_action: str = "/action_server/error_recovery"
    """Served franka_msgs/action/ErrorRecovery (franka_ros2's name)."""
    recovery_request_topic: str = "/franka/error_recovery_request"
    """std_msgs/Empty recovery requests (what the ROS 1 relay behind ros1_bridge takes); ''
    disables."""
    frame_id: str = "base"
    """frame_id of the published pose (and the expected one of equilibria; '' accepts any)."""
    error_publish_rate_hz: float = 20.0
    """Rate of the error flag (also published at once on every change)."""
    recovery_duration_s: float = 0.5
    """How long an error recovery takes (franka: 0.4-16 s)."""
    canonical_quaternion: bool = False
    """Publish the pose quaternion with w >= 0, as converters from a rotation matrix (franka's
    O_T_EE) may: its sign then jumps when the orientation crosses w = 0."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.error_publish_rate_hz) and self.error_publish_rate_hz > 0):
            raise ValueError(f"error_publish_rate_hz must be a positive number, got {self.error_publish_rate_hz}")
        if not (math.isfinite(self.recovery_duration_s) and self.recovery_duration_s >= 0):
            raise ValueError(f"recovery_duration_s must be >= 0, got {self.recovery_duration_s}")


class ControlledArm(Protocol):
    """What the controller interface needs of a simulated arm (``ImpedanceArm`` and the world's
    ``WeldArm`` offer it). Poses are in the robot base frame, quaternions (w, x, y, z)."""

    error: bool
    reflexes: int
    recoveries: int
    recoveries_without_error: int
    equilibria_received: int
    equilibria_ignored: int

    def set_equilibrium(self, position: np.ndarray, orientation: np.ndarray) -> bool:
        """A new equilibrium; False (ignored) during a reflex."""
        ...

    def inject_reflex(self) -> None:
        """Stop and report an error until recovered."""
        ...

    def recover(self) -> None:
        """Clear the error (counted when there was none)."""
        ...
