"""Real ROS 2 over DDS: two nodes in separate processes exchange our message types."""

from __future__ import annotations

import time

import pytest
import rclpy
from builtin_interfaces.msg import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from sernf_interfaces.msg import ReplayEpisode

pytestmark = pytest.mark.ros


def _trajectory() -> JointTrajectory:
    msg = JointTrajectory()
    msg.joint_names = [f"a{i}" for i in range(3)]
    for k in range(4):
        point = JointTrajectoryPoint()
        point.positions = [0.1 * k + i for i in range(3)]
        point.time_from_start = Duration(sec=0, nanosec=100_000_000 * (k + 1))
        msg.points.append(point)
    return msg


def _replay() -> ReplayEpisode:
    msg = ReplayEpisode()
    msg.episode_id = "ep-000042"
    msg.uri = "memory://replay/online"
    msg.num_steps = 123
    msg.episode_return = 2.0
    msg.source = "online"
    msg.subtask_names = ["grasp", "place"]
    msg.subtask_success = [True, False]
    return msg


def test_two_processes_exchange_trajectory_and_replay_episode(processes):
    echo = processes.python("echo", "tests/ros_smoke_echo.py")
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("smoke_sender", context=context)
    received: dict[str, object] = {}
    try:
        traj_pub = node.create_publisher(JointTrajectory, "/smoke/trajectory", 10)
        replay_pub = node.create_publisher(ReplayEpisode, "/smoke/replay", 10)
        node.create_subscription(
            JointTrajectory, "/smoke/trajectory_echo", lambda m: received.setdefault("traj", m), 10)
        node.create_subscription(
            ReplayEpisode, "/smoke/replay_echo", lambda m: received.setdefault("replay", m), 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 60.0
        # Keep publishing until the echo has matched and answered: discovery takes a moment.
        while len(received) < 2 and time.monotonic() < deadline:
            assert echo.poll() is None, processes.log(echo)
            traj_pub.publish(_trajectory())
            replay_pub.publish(_replay())
            executor.spin_once(timeout_sec=0.2)
        executor.shutdown()
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)

    assert set(received) == {"traj", "replay"}, f"echo log:\n{processes.log(echo)}"
    traj, replay = received["traj"], received["replay"]
    assert traj.joint_names == ["a0", "a1", "a2"]
    assert [list(p.positions) for p in traj.points] == [list(p.positions) for p in _trajectory().points]
    assert traj.points[3].time_from_start.nanosec == 400_000_000
    assert replay.episode_id == "ep-000042" and replay.num_steps == 123
    assert replay.uri == "memory://replay/online" and replay.source == "online"
    assert list(replay.subtask_names) == ["grasp", "place"]
    assert list(replay.subtask_success) == [True, False]
