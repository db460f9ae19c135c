"""sernf-record over real DDS (the rclpy + rosbags back-end) -> bag -> sernf-bag2zarr.

The test publishes a demonstration's streams as the drivers and a camera would (joint states,
EE pose, executed commands, images: best-effort sensor QoS where the drivers use it), with
values that are linear functions of their header stamps. Whatever DDS delays or drops under
load, the converted episode must hold those functions at the step times (linear interpolation
is exact on them), the latest image frame at or before each step, and the operator's labels.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header

from sernf_data.bag2zarr import ConversionConfig, convert_bags
from sernf_data.ros.stamps import seconds_to_time
from sernf_data.store import EpisodeStore
from sernf_interfaces.msg import EpisodeEvent

pytestmark = pytest.mark.ros
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
T_REF = time.time()


def joints(t):
    return np.array([0.1 + 0.02 * (t - T_REF), -0.03 * (t - T_REF)])


def hand(t):
    return np.array([0.5 + 0.01 * (t - T_REF), 0.2])


class Demonstrator:
    """Publishes the demonstration streams at 30 Hz from a background thread."""

    def __init__(self, before_streams: Callable[[Node], None] | None = None) -> None:
        """``before_streams(node)`` runs before any stream publisher exists (e.g. to match a
        subscription to the recorder first)."""
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("demo_streams", context=self.context)
        n = self.node
        if before_streams is not None:
            before_streams(n)
        self.joint_pub = n.create_publisher(JointState, "/orca_hand/joint_states", BEST_EFFORT)
        self.pose_pub = n.create_publisher(PoseStamped, "/franka/ee_pose", BEST_EFFORT)
        self.image_pub = n.create_publisher(Image, "/cameras/front/image_raw", BEST_EFFORT)
        self.hand_cmd = n.create_publisher(JointState, "/orca_hand_driver/executed_command", 10)
        self.arm_cmd = n.create_publisher(PoseStamped, "/franka_bridge/executed_command", 10)
        self.frames: list[tuple[float, int]] = []
        self._index = 0
        n.create_timer(1 / 30, self._tick)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _tick(self) -> None:
        t = time.time()
        stamp = seconds_to_time(t)
        js = JointState(name=["a", "b"], position=joints(t).tolist())
        js.header.stamp = stamp
        self.joint_pub.publish(js)
        cmd = JointState(name=["a", "b"], position=hand(t).tolist())
        cmd.header.stamp = stamp
        self.hand_cmd.publish(cmd)
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.pose.position.x = 0.3 + 0.01 * (t - T_REF)
        pose.pose.orientation.w = 1.0
        self.pose_pub.publish(pose)
        delta = PoseStamped()
        delta.header.stamp = stamp
        delta.pose.position.z = 0.001
        delta.pose.orientation.w = 1.0
        self.arm_cmd.publish(delta)
        image = Image(height=4, width=4, encoding="rgb8", step=12)
        image.header.stamp = stamp
        image.data = bytes([self._index % 256]) * 48
        self.image_pub.publish(image)
        self.frames.append((t, self._index))
        self._index += 1

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def test_recorded_demonstration_converts_to_the_published_streams(processes, tmp_path):
    demonstrator = Demonstrator()
    try:
        recorder = processes.python(
            "record", "-m", "sernf_data.record", "--out", str(tmp_path / "bags"), "--rosbags",
            "--cameras", "front", "--subtasks", "retrieve,cut", "--label", "retrieve=1,cut=0",
            "--operator", "carol", "--duration", "3", "--settle", "3")
        deadline = time.monotonic() + 120
        while recorder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert recorder.returncode == 0, processes.log(recorder)
    finally:
        demonstrator.close()
    (bag,) = sorted((tmp_path / "bags").iterdir())
    config = ConversionConfig(image_topics={"front_rgb": "/cameras/front/image_raw"})
    report = convert_bags([bag], tmp_path / "demos.zarr", config)
    assert not report.skipped, report.skipped
    store = EpisodeStore(tmp_path / "demos.zarr")
    (episode_id,) = store.episode_ids()
    steps, meta = store.read_episode(episode_id)
    assert meta["subtask_success"] == {"retrieve": True, "cut": False} and meta["operator"] == "carol"
    assert 10 <= len(steps["timestamp"]) <= 40, len(steps["timestamp"])  # ~3 s at 10 Hz
    grid = steps["timestamp"]
    np.testing.assert_allclose(steps["hand_joints"], np.stack([joints(t) for t in grid]), atol=1e-5)
    np.testing.assert_allclose(steps["ee_pose"][:, 0], 0.3 + 0.01 * (grid - T_REF), atol=1e-5)
    np.testing.assert_allclose(steps["ee_pose"][:, 3], 1.0, atol=1e-6)
    frame_t = np.array([t for t, _ in demonstrator.frames])
    for k, t in enumerate(grid):
        # The frame shown is one published at or before t_k (best-effort may drop some).
        shown = int(steps["front_rgb"][k, 0, 0, 0])
        published_before = [i % 256 for ft, i in demonstrator.frames if ft <= t + 1e-6]
        assert shown in published_before[-10:], (k, shown)
        assert frame_t.size
    # Hand action: a target executed at or before t_k + dt (linear in its stamp).
    assert np.all(steps["action"][:, 7] <= 0.5 + 0.01 * (grid + 0.1 - T_REF) + 1e-5)


def test_recorder_waits_for_the_streams_and_for_the_end_of_an_episode_inside_it(processes, tmp_path):
    """START only once the streams' publishers are matched (they come up after the recorder);
    an episode that starts inside the recording and ends just after its END (a simulator's,
    whose reliable END may be resent late) still lands in the bag, so that span is the episode."""
    recorder = processes.python(
        "record", "-m", "sernf_data.record", "--out", str(tmp_path / "bags"), "--rosbags",
        "--cameras", "front", "--subtasks", "retrieve,cut", "--label", "retrieve=1,cut=1",
        "--operator", "carol", "--duration", "3", "--settle", "0")
    deadline = time.monotonic() + 60
    while "demonstration 1/1" not in processes.log(recorder) and time.monotonic() < deadline:
        assert recorder.poll() is None, processes.log(recorder)
        time.sleep(0.1)
    time.sleep(1.5)  # the recorder now waits for publishers that do not exist yet
    events: list[EpisodeEvent] = []

    def listen_to_the_recorder(node: Node) -> None:
        # The recorder sends START (reliable, volatile) as soon as it has matched the streams: our
        # subscription must be matched to its event publisher before the streams exist, or
        # START races our subscription's discovery and is lost.
        subscription = node.create_subscription(EpisodeEvent, "/sernf/episode", events.append, 10)
        deadline = time.monotonic() + 30
        while subscription.get_publisher_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert subscription.get_publisher_count() >= 1, "the recorder's /sernf/episode publisher never matched"

    streams_up = time.time()
    demonstrator = Demonstrator(before_streams=listen_to_the_recorder)
    publish_event = demonstrator.node.create_publisher(EpisodeEvent, "/sernf/episode", 10).publish

    def event(kind: int, prefix: str) -> EpisodeEvent | None:
        return next((e for e in events if e.event == kind and e.episode_id.startswith(prefix)), None)

    def wait_for(predicate, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not predicate() and time.monotonic() < end:
            time.sleep(0.02)
        assert predicate(), processes.log(recorder)

    try:
        wait_for(lambda: event(EpisodeEvent.START, "demo_") is not None)
        nested_start = time.time()
        publish_event(EpisodeEvent(header=Header(stamp=seconds_to_time(nested_start)),
                                   episode_id="sim-1", event=EpisodeEvent.START, reason="layout_0"))
        wait_for(lambda: event(EpisodeEvent.END, "demo_") is not None)
        # Stamped before the recording's END, delivered a second after it (a late resend).
        end = event(EpisodeEvent.END, "demo_").header.stamp
        time.sleep(1.0)
        publish_event(EpisodeEvent(header=Header(stamp=seconds_to_time(end.sec + end.nanosec * 1e-9 - 0.2)),
                                   episode_id="sim-1", event=EpisodeEvent.END, reason="success"))
        wait_for(lambda: recorder.poll() is not None)
        assert recorder.returncode == 0, processes.log(recorder)
    finally:
        demonstrator.close()
    start = event(EpisodeEvent.START, "demo_").header.stamp
    assert start.sec + start.nanosec * 1e-9 >= streams_up, "START before the streams' publishers existed"
    (bag,) = sorted((tmp_path / "bags").iterdir())
    report = convert_bags([bag], tmp_path / "demos.zarr", ConversionConfig(image_topics={"front_rgb": "/cameras/front/image_raw"}))
    assert not report.skipped, report.skipped
    store = EpisodeStore(tmp_path / "demos.zarr")
    (episode_id,) = store.episode_ids()
    meta = store.read_episode(episode_id)[1]
    assert meta["extra"]["t_start"] >= nested_start - 1e-6, (meta["extra"], nested_start)  # the inner span
    assert meta["extra"]["end_reason"] == "success"
    assert meta["subtask_success"] == {"retrieve": True, "cut": True} and meta["operator"] == "carol"
