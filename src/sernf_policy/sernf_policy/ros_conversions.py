"""Message <-> numpy conversions for the policy node (the only non-node module with messages).

Everything arriving here is untrusted (docs/design.md §4): converters raise ``ValueError`` with a reason
instead of guessing. Images are converted with numpy (cv_bridge is not available everywhere,
docs/design.md §3). Poses are ``[x, y, z, qw, qx, qy, qz]`` (the action's quaternion order, wxyz).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Pose, PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from sernf_data.ros.diagnostics import diagnostic_array
from sernf_data.ros.stamps import seconds_to_time, time_to_seconds

__all__ = [
    "OBSERVATION_TYPES",
    "chunk_to_trajectory",
    "diagnostic_array",
    "float_array_to_vector",
    "hand_command",
    "image_to_rgb",
    "joint_positions",
    "pose_to_array",
    "relative_pose_command",
    "seconds_to_time",
    "time_to_seconds",
]

OBSERVATION_TYPES = ("image", "joint_state", "pose", "pose_with_covariance", "float_array")
"""Observation topic kinds the node can subscribe to (parameter ``observation_types``):
sensor_msgs/Image, sensor_msgs/JointState (positions), geometry_msgs/PoseStamped,
geometry_msgs/PoseWithCovarianceStamped, std_msgs/Float32MultiArray (a plain vector, e.g. the
simulator's privileged object state)."""

# Channel order of the 8-bit colour encodings we accept, as indices into the message's
# channels that give R, G, B.
_RGB_CHANNELS = {"rgb8": (3, (0, 1, 2)), "bgr8": (3, (2, 1, 0)), "rgba8": (4, (0, 1, 2)), "bgra8": (4, (2, 1, 0))}


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8 / bgr8 / rgba8 / bgra8) -> ``[h, w, 3]`` uint8 RGB (a copy)."""
    if msg.encoding not in _RGB_CHANNELS:
        raise ValueError(f"image encoding {msg.encoding!r} is not one of {sorted(_RGB_CHANNELS)}")
    channels, order = _RGB_CHANNELS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels ({height}x{width})")
    if step < width * channels:
        raise ValueError(f"image step {step} < width {width} x {channels} channels")
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size < height * step:
        raise ValueError(f"image data has {data.size} bytes, expected {height} x {step}")
    # Rows may be padded (step > width * channels): view row by row, then drop the padding.
    rows = data[: height * step].reshape(height, step)[:, : width * channels]
    pixels = rows.reshape(height, width, channels)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def joint_positions(msg: JointState, names: Sequence[str]) -> np.ndarray:
    """Positions of ``names`` (in that order) from a JointState, float64.

    With names in the message they are matched by name (drivers may order joints differently);
    a message without names must carry exactly ``len(names)`` positions in order.
    """
    positions = np.asarray(msg.position, dtype=np.float64)
    if not msg.name:
        if positions.shape != (len(names),):
            raise ValueError(f"unnamed joint state has {positions.size} positions, expected {len(names)}")
        return positions
    if len(msg.name) != positions.size:
        raise ValueError(f"joint state has {len(msg.name)} names but {positions.size} positions")
    index = {name: i for i, name in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"joint state lacks joints {missing}")
    return positions[[index[n] for n in names]]


def pose_to_array(pose: Pose) -> np.ndarray:
    """geometry_msgs/Pose -> ``[x, y, z, qw, qx, qy, qz]`` float64."""
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z], dtype=np.float64)


def float_array_to_vector(msg: Float32MultiArray) -> np.ndarray:
    """std_msgs/Float32MultiArray -> its data as a flat float64 vector (layout ignored)."""
    data = np.asarray(msg.data, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"float array has no data (size {data.size})")
    return data


def relative_pose_command(delta: np.ndarray, stamp: Time, frame_id: str) -> PoseStamped:
    """Arm action ``[dx, dy, dz, qw, qx, qy, qz]`` -> PoseStamped (delta in the current EE frame)."""
    delta = np.asarray(delta, dtype=np.float64)
    if delta.shape != (7,):
        raise ValueError(f"relative pose must be [7], got {list(delta.shape)}")
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in delta[:3])
    q = msg.pose.orientation
    q.w, q.x, q.y, q.z = (float(v) for v in delta[3:])
    return msg


def hand_command(positions: np.ndarray, names: Sequence[str], stamp: Time) -> JointState:
    """Hand joint targets -> JointState (positions only)."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(names),):
        raise ValueError(f"hand command must be [{len(names)}], got {list(positions.shape)}")
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = positions.tolist()
    return msg


def chunk_to_trajectory(
    chunk: np.ndarray, names: Sequence[str], first_action_stamp: Time, period_s: float
) -> JointTrajectory:
    """Chunk ``[H, A]`` -> JointTrajectory: joint_names = action dim names, one point per action.

    ``header.stamp`` is when the chunk's first action is planned to execute (decision time +
    P control periods); point ``k`` has ``time_from_start = k * period``.
    """
    chunk = np.asarray(chunk, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] != len(names):
        raise ValueError(f"chunk must be [H, {len(names)}], got {list(chunk.shape)}")
    msg = JointTrajectory()
    msg.header.stamp = first_action_stamp
    msg.joint_names = list(names)
    for k, action in enumerate(chunk):
        point = JointTrajectoryPoint()
        point.positions = action.tolist()
        nanoseconds = int(round(k * period_s * 1e9))
        point.time_from_start = Duration(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)
        msg.points.append(point)
    return msg
