"""Demonstration bags with an analytic trajectory, written with ``rosbags`` (sqlite3 or MCAP).

Every stream is a function of time whose resampled value is known exactly: joints and EE
position linear in time (linear interpolation is exact), the EE orientation a constant-rate
rotation about z (slerp is exact), image frames numbered by their index, arm commands constant
deltas, hand commands linear in time. Receive times lag the header stamps by ``RECEIVE_LAG``
so a converter that used receive times would get other values.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from sernf_data.bag2zarr import format_end_reason
from sernf_data.bag_types import typestore

T0 = 1_700_000_000.0
RECEIVE_LAG = 0.3
H, W = 6, 8
OMEGA = 0.4  # rad/s about z
ARM_STEP = np.array([0.001, 0.0, 0.0])  # translation of each executed arm delta (EE x)
ARM_ANGLE = 0.01  # rotation about EE x of each executed arm delta


def joints(t: np.ndarray | float) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64) - T0
    return np.stack([0.1 + 0.2 * t, -0.3 * t, 0.05 * t + 1.0], axis=-1)


def ee_position(t):
    t = np.asarray(t, dtype=np.float64) - T0
    return np.stack([0.4 + 0.01 * t, 0.02 * t, 0.3 - 0.005 * t], axis=-1)


def ee_quat_wxyz(t):
    angle = OMEGA * (np.asarray(t, dtype=np.float64) - T0)
    return np.stack([np.cos(angle / 2), 0 * angle, 0 * angle, np.sin(angle / 2)], axis=-1)


def hand_target(t):
    t = np.asarray(t, dtype=np.float64) - T0
    return np.stack([0.5 * t, 0.2 + 0.1 * t, -0.1 * t], axis=-1)


def frame(index: int) -> np.ndarray:
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[..., 0] = index % 256
    image[..., 1] = np.arange(W)[None, :] * 10
    image[..., 2] = np.arange(H)[:, None] * 20
    return image


@dataclass
class DemoBag:
    """Rates and extent of one synthetic demonstration."""

    duration: float = 2.0
    joint_hz: float = 50.0
    pose_hz: float = 40.0
    camera_hz: float = 30.0
    command_hz: float = 30.0
    episodes: list[tuple[float, float, str]] = field(default_factory=lambda: [
        (0.05, 1.95, format_end_reason("operator", {"retrieve": True, "cut": False}, "alice"))])
    rewards: list[tuple[float, float, str]] = field(default_factory=lambda: [(1.23, 1.0, "retrieve")])
    compressed_camera: bool = True
    encoding: str = "rgb8"
    drop_topics: tuple[str, ...] = ()
    joint_gap: tuple[float, float] | None = None  # no joint messages in this interval
    backwards_at: int | None = None  # swap the stamps of joint messages i and i+1


def _stamp(ts, t):
    sec = math.floor(t)
    return ts.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=round((t - sec) * 1e9) % 1_000_000_000)


def _header(ts, t, frame_id=""):
    return ts.types["std_msgs/msg/Header"](stamp=_stamp(ts, t), frame_id=frame_id)


def _pose(ts, t, xyz, wxyz, frame_id="base"):
    types = ts.types
    pose = types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
        orientation=types["geometry_msgs/msg/Quaternion"](
            x=float(wxyz[1]), y=float(wxyz[2]), z=float(wxyz[3]), w=float(wxyz[0])),
    )
    return types["geometry_msgs/msg/PoseStamped"](header=_header(ts, t, frame_id), pose=pose)


def _joint_state(ts, t, names, positions):
    return ts.types["sensor_msgs/msg/JointState"](
        header=_header(ts, t), name=list(names), position=np.asarray(positions, dtype=np.float64),
        velocity=np.zeros(0), effort=np.zeros(0))


def _times(hz, duration):
    return T0 + np.arange(0.0, duration + 1e-9, 1.0 / hz) + 0.0037  # off the 10 Hz grid


def write_demo_bag(path: Path, demo: DemoBag | None = None, storage: str = "mcap") -> Path:
    """Write one bag; returns its path."""
    demo = demo or DemoBag()
    ts = typestore()
    types = ts.types
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    messages: list[tuple[str, str, float, object]] = []
    jt = _times(demo.joint_hz, demo.duration)
    if demo.joint_gap:
        jt = jt[(jt - T0 < demo.joint_gap[0]) | (jt - T0 > demo.joint_gap[1])]
    jvals = joints(jt)
    header_t = jt.copy()
    if demo.backwards_at is not None:  # received in order, stamped out of order
        i = demo.backwards_at
        header_t[[i, i + 1]] = header_t[[i + 1, i]]
    for t, stamp, q in zip(jt, header_t, jvals, strict=True):
        messages.append(("/orca_hand/joint_states", "sensor_msgs/msg/JointState", t,
                         _joint_state(ts, stamp, ["j0", "j1", "j2"], q)))
    for t in _times(demo.pose_hz, demo.duration):
        messages.append(("/franka/ee_pose", "geometry_msgs/msg/PoseStamped", t,
                         _pose(ts, t, ee_position(t), ee_quat_wxyz(t))))
    for i, t in enumerate(_times(demo.camera_hz, demo.duration)):
        image = frame(i)
        raw = image[..., ::-1] if demo.encoding == "bgr8" else image
        messages.append(("/cameras/front/image_raw", "sensor_msgs/msg/Image", t, types["sensor_msgs/msg/Image"](
            header=_header(ts, t, "front"), height=H, width=W, encoding=demo.encoding, is_bigendian=0,
            step=W * 3, data=np.ascontiguousarray(raw).reshape(-1))))
        if demo.compressed_camera:
            buf = io.BytesIO()
            iio.imwrite(buf, image, extension=".png")
            messages.append(("/cameras/under/image_raw/compressed", "sensor_msgs/msg/CompressedImage", t,
                             types["sensor_msgs/msg/CompressedImage"](
                                 header=_header(ts, t, "under"), format="rgb8; png compressed rgb8",
                                 data=np.frombuffer(buf.getvalue(), dtype=np.uint8))))
    half = ARM_ANGLE / 2
    delta_quat = (math.cos(half), math.sin(half), 0.0, 0.0)
    for t in _times(demo.command_hz, demo.duration):
        messages.append(("/franka_bridge/executed_command", "geometry_msgs/msg/PoseStamped", t,
                         _pose(ts, t, ARM_STEP, delta_quat, "ee")))
        messages.append(("/orca_hand_driver/executed_command", "sensor_msgs/msg/JointState", t,
                         _joint_state(ts, t, ["j0", "j1", "j2"], hand_target(t))))
    for start, end, reason in demo.episodes:
        for t, kind, why in ((T0 + start, 0, ""), (T0 + end, 1, reason)):
            messages.append(("/sernf/episode", "sernf_interfaces/msg/EpisodeEvent", t,
                             types["sernf_interfaces/msg/EpisodeEvent"](
                                 header=_header(ts, t), episode_id="demo", event=kind, reason=why)))
    for at, value, subtask in demo.rewards:
        t = T0 + at
        messages.append(("/sernf/reward", "sernf_interfaces/msg/RewardEvent", t,
                         types["sernf_interfaces/msg/RewardEvent"](
                             header=_header(ts, t), value=value, subtask=subtask, source=1)))
    messages = [m for m in messages if m[0] not in demo.drop_topics]
    messages.sort(key=lambda m: m[2])
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for topic, msgtype, _, _ in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=ts)
        for topic, msgtype, t, msg in messages:
            receive_ns = int(round((t + RECEIVE_LAG) * 1e9))
            writer.write(connections[topic], receive_ns, ts.serialize_cdr(msg, msgtype))
    return path
