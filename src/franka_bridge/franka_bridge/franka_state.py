"""Franka robot-state facts the relays need, without ROS (also imported by the ROS 1 relay in
tools/ros1/, so: numpy only, Python 3.8 syntax).

* ``robot_mode``: franka_ros ``franka_msgs/FrankaState`` and franka_ros2
  ``franka_msgs/msg/FrankaRobotState`` share libfranka's numbering (OTHER 0, IDLE 1, MOVE 2,
  GUIDING 3, REFLEX 4, USER_STOPPED 5, AUTOMATIC_ERROR_RECOVERY 6).
* ``O_T_EE``: the end-effector pose in the base frame as a 4x4 homogeneous matrix, 16 numbers in
  column-major order (libfranka's convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ROBOT_MODE_OTHER = 0
ROBOT_MODE_IDLE = 1
ROBOT_MODE_MOVE = 2
ROBOT_MODE_GUIDING = 3
ROBOT_MODE_REFLEX = 4
ROBOT_MODE_USER_STOPPED = 5
ROBOT_MODE_AUTOMATIC_ERROR_RECOVERY = 6

#: Modes in which the robot does not follow the controller and needs error recovery: a reflex
#: (collision, limit violation) and the operator's stop (recovery fails while it is pressed and
#: is retried by the bridge's rate limit).
ERROR_MODES = frozenset({ROBOT_MODE_REFLEX, ROBOT_MODE_USER_STOPPED})


def robot_mode_is_error(robot_mode: int) -> bool:
    """Whether the robot reports an error/reflex state (see ERROR_MODES)."""
    return int(robot_mode) in ERROR_MODES


def pose_from_o_t_ee(o_t_ee: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Column-major 4x4 ``O_T_EE`` -> position [3] and unit quaternion [4] (w, x, y, z)."""
    m = np.asarray(o_t_ee, dtype=np.float64)
    if m.shape != (16,) or not np.all(np.isfinite(m)):
        raise ValueError("O_T_EE must be 16 finite numbers")
    t = m.reshape(4, 4).T  # column-major -> row-major matrix
    r = t[:3, :3]
    # Shepperd's method: pivot on the largest of w, x, y, z for numerical stability.
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    candidates = (trace, r[0, 0], r[1, 1], r[2, 2])
    k = int(np.argmax(candidates))
    if k == 0:
        s = 2.0 * math.sqrt(max(1.0 + trace, 1e-300))
        q = (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    elif k == 1:
        s = 2.0 * math.sqrt(max(1.0 + r[0, 0] - r[1, 1] - r[2, 2], 1e-300))
        q = ((r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s)
    elif k == 2:
        s = 2.0 * math.sqrt(max(1.0 + r[1, 1] - r[0, 0] - r[2, 2], 1e-300))
        q = ((r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s)
    else:
        s = 2.0 * math.sqrt(max(1.0 + r[2, 2] - r[0, 0] - r[1, 1], 1e-300))
        q = ((r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s)
    quat = np.array(q)
    return t[:3, 3].copy(), quat / np.linalg.norm(quat)
