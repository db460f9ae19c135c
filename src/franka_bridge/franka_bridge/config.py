"""Parameters of the franka_bridge node (each field becomes a ROS parameter with this default).

Topic defaults follow the project's topic table (``/franka/...``) and franka_ros2 where the
robot side owns the name (the state broadcaster's pose, the error-recovery action server); the
robot parameter file ``config/robot/franka_bridge.yaml`` sets the controller's own topic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FrankaBridgeConfig"]


@dataclass
class FrankaBridgeConfig:
    """Parameters of franka_bridge (declared as ROS parameters with these defaults)."""

    command_topic: str = "/franka/relative_pose_command"
    """Relative end-effector commands (geometry_msgs/PoseStamped): position = translation (m)
    and orientation = rotation delta (unit quaternion), both in the current EE frame."""
    command_frame: str = "panda_EE"
    """Required header.frame_id of the commands (the EE frame the deltas are in); '' accepts
    any frame_id."""
    target_topic: str = "/franka/equilibrium_pose"
    """Published absolute equilibrium pose (PoseStamped, base frame): the Cartesian impedance
    controller's input. franka_ros2 / franka_ros example controller:
    /cartesian_impedance_example_controller/equilibrium_pose."""
    pose_topic: str = "/franka_robot_state_broadcaster/current_pose"
    """Measured end-effector pose (PoseStamped, base frame). franka_ros2: the state
    broadcaster's current_pose (best-effort QoS); ROS 1 + ros1_bridge: a PoseStamped relayed
    from franka_states (see docs/robot/franka.md)."""
    pose_frame: str = ""
    """Required header.frame_id of the measured pose (the robot base, e.g. 'fr3_link0' or
    'panda_link0'); '' accepts the pose's own frame. The equilibrium is published in it."""
    ee_pose_topic: str = "/franka/ee_pose"
    """Republished measured EE pose for the policy (PoseStamped)."""
    ee_pose_max_rate_hz: float = 100.0
    """Republish at most this often (the state broadcaster may publish at 1 kHz; the policy
    reads the latest pose at its 10 Hz); 0 republishes every pose."""
    error_topic: str = "/franka/robot_error"
    """std_msgs/Bool, true while the robot is in a reflex / error state (a relay of
    franka_ros2's robot_state.robot_mode or ROS 1 franka_states.robot_mode provides it); ''
    disables reflex handling."""
    recovery_interface: str = "action"
    """How error recovery is requested: 'action' (franka_msgs/action/ErrorRecovery, franka_ros2),
    'topic' (std_msgs/Empty on recovery_request_topic: a ROS 1 relay behind ros1_bridge calls
    franka_ros' actionlib recovery) or 'none' (an operator recovers the robot)."""
    recovery_action: str = "/action_server/error_recovery"
    """franka_msgs/action/ErrorRecovery server name (franka_ros2's action_server node)."""
    recovery_request_topic: str = "/franka/error_recovery_request"
    """std_msgs/Empty requests for recovery_interface 'topic'."""
    episode_topic: str = "/sernf/episode"
    """sernf_interfaces/EpisodeEvent topic: when a reflex starts, an ABORT with the reason goes
    out here, so the running episode ends at once and is kept out of training until a person
    labels it (the policy node lists this node in its device_fault_sources). '' disables."""
    max_translation_m: float = 0.02
    """Largest translation per command (m); longer deltas are scaled down (direction kept)."""
    max_rotation_rad: float = 0.1
    """Largest rotation per command (rad); larger rotations are scaled down (axis kept)."""
    workspace_low: tuple[float, ...] = (0.25, -0.45, 0.05)
    """Lower corner of the box the target position must lie in (m, base frame)."""
    workspace_high: tuple[float, ...] = (0.80, 0.45, 0.70)
    """Upper corner of the box the target position must lie in (m, base frame)."""
    reference_orientation: tuple[float, ...] = (0.0, 1.0, 0.0, 0.0)
    """Centre of the allowed orientation cone, quaternion (w, x, y, z) in the base frame
    (default: the Franka hand pointing down)."""
    max_orientation_deviation_rad: float = 1.2
    """Half-angle of the orientation cone around reference_orientation (rad); π disables it."""
    quaternion_norm_tolerance: float = 0.01
    """Commands and poses whose quaternion norm differs from 1 by more are refused."""
    reanchor_distance_m: float = 0.01
    """Commands compose on the last equilibrium while the measured EE is within this distance
    (and reanchor_angle_rad) of it, else on the measured pose (contact must not wind up the
    target); 0 always composes on the measured pose."""
    reanchor_angle_rad: float = 0.1
    """Rotation counterpart of reanchor_distance_m (rad)."""
    pose_timeout_s: float = 0.1
    """A measured pose older than this (receive time) is stale: commands are refused."""
    command_timeout_s: float = 0.3
    """No valid command for this long: the equilibrium is set to the measured pose (hold)."""
    activation_timeout_s: float = 2.0
    """How long activation waits for a fresh measured pose before it fails."""
    auto_resume_after_recovery: bool = False
    """After a reflex is cleared, forward commands again without a ~/resume call."""
    recovery_min_interval_s: float = 5.0
    """Smallest time between two error-recovery calls (franka recovery takes 0.4-16 s)."""
    max_recovery_attempts: int = 3
    """Recovery calls per reflex before the bridge waits for an operator (error still present)."""
    recovery_timeout_s: float = 20.0
    """A recovery call without a result after this long counts as failed."""
    hold_publish_rate_hz: float = 10.0
    """Rate of the watchdog / hold loop: checks timeouts and republishes the held equilibrium."""
    diagnostics_period_s: float = 1.0
    """Period of the /diagnostics status."""

    def __post_init__(self) -> None:
        positive = ("max_translation_m", "max_rotation_rad", "quaternion_norm_tolerance",
                    "pose_timeout_s", "command_timeout_s", "activation_timeout_s",
                    "recovery_timeout_s", "hold_publish_rate_hz", "diagnostics_period_s")
        for name in positive:
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ("reanchor_distance_m", "reanchor_angle_rad", "recovery_min_interval_s", "ee_pose_max_rate_hz"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.max_rotation_rad > math.pi:
            raise ValueError(f"max_rotation_rad must be <= pi, got {self.max_rotation_rad}")
        if not (0 < self.max_orientation_deviation_rad <= math.pi):
            raise ValueError(f"max_orientation_deviation_rad must be in (0, pi], got {self.max_orientation_deviation_rad}")
        if self.max_recovery_attempts < 1:
            raise ValueError(f"max_recovery_attempts must be >= 1, got {self.max_recovery_attempts}")
        low, high = np.asarray(self.workspace_low, float), np.asarray(self.workspace_high, float)
        if low.shape != (3,) or high.shape != (3,) or not np.all(np.isfinite(low)) or not np.all(np.isfinite(high)):
            raise ValueError(f"workspace_low/high must be 3 finite numbers each, got {self.workspace_low}, {self.workspace_high}")
        if not np.all(low < high):
            raise ValueError(f"workspace_low must be < workspace_high on every axis, got {self.workspace_low}, {self.workspace_high}")
        ref = np.asarray(self.reference_orientation, float)
        if ref.shape != (4,) or not np.all(np.isfinite(ref)) or abs(np.linalg.norm(ref) - 1.0) > 1e-3:
            raise ValueError(f"reference_orientation must be a unit quaternion (w, x, y, z), got {self.reference_orientation}")
        if self.recovery_interface not in ("action", "topic", "none"):
            raise ValueError(f"recovery_interface must be 'action', 'topic' or 'none', got {self.recovery_interface!r}")
        if self.recovery_interface == "action" and not self.recovery_action:
            raise ValueError("recovery_interface 'action' needs recovery_action")
        if self.recovery_interface == "topic" and not self.recovery_request_topic:
            raise ValueError("recovery_interface 'topic' needs recovery_request_topic")
        for name in ("command_topic", "target_topic", "pose_topic", "ee_pose_topic"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
