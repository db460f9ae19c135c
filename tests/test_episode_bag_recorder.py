"""The graph's recorder node over DDS: one bag per START..END from an authorised node."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from sernf_interfaces.msg import EpisodeEvent

pytestmark = pytest.mark.ros


def bag_topics(bag: Path) -> dict[str, int]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return {c.topic: c.msgcount for c in reader.connections}


class Operator:
    """Episode events and hand states from named nodes, in the test's own context."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes = {}
        for name in ("policy", "intruder"):
            node = Node(name, context=self.context)
            self.nodes[name] = (node, node.create_publisher(EpisodeEvent, "/sernf/episode", 10))
            self.executor.add_node(node)
        sensor = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.joints = self.nodes["policy"][0].create_publisher(JointState, "/orca_hand/joint_states", sensor)
        self.start = self.nodes["policy"][0].create_client(Trigger, "/recorder/start_episode")
        self.end = self.nodes["policy"][0].create_client(Trigger, "/recorder/end_episode")
        self.recorder_status: dict[str, str] = {}
        self.nodes["policy"][0].create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(": recorder"):
                self.recorder_status = {kv.key: kv.value for kv in status.values}

    def event(self, sender: str, episode_id: str, kind: int, reason: str = "") -> None:
        self.nodes[sender][1].publish(EpisodeEvent(episode_id=episode_id, event=kind, reason=reason))

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def call(self, client, timeout: float = 30.0):
        assert self.spin_until(client.service_is_ready, timeout)
        future = client.call_async(Trigger.Request())
        assert self.spin_until(future.done, timeout)
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        for node, _ in self.nodes.values():
            node.destroy_node()
        rclpy.shutdown(context=self.context)


def test_recorder_writes_one_bag_per_authorised_episode(processes, tmp_path):
    out = tmp_path / "bags"
    recorder = processes.python("recorder", "-m", "sernf_data.episode_bag_recorder_node", "--ros-args",
                                "-p", f"out_dir:={out}", "-p", "episode_authorities:=[/policy]")
    op = Operator()
    try:
        # Matched both ways before anything is published (DDS discovery under load).
        node = op.nodes["policy"][0]
        assert op.spin_until(lambda: node.count_subscribers("/sernf/episode") >= 1
                             and node.count_subscribers("/orca_hand/joint_states") >= 1, 60.0), processes.log(recorder)
        op.event("intruder", "forged", EpisodeEvent.START)
        op.event("policy", "ep/../1", EpisodeEvent.START)  # ids come from the network: no path tricks
        bag = out / "ep_.._1"

        def publish_until(predicate, timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while not predicate() and time.monotonic() < deadline:
                op.joints.publish(JointState(name=["wrist"], position=[0.1]))
                op.spin_until(lambda: False, 0.1)
            return predicate()

        assert publish_until(bag.exists, 60.0), processes.log(recorder)
        # A few states reach the open bag, then the episode ends.
        publish_until(lambda: False, 1.0)
        op.event("policy", "ep/../1", EpisodeEvent.END, "success retrieve=1 cut=0")
        assert op.spin_until(lambda: "saved" in processes.log(recorder), 60.0), processes.log(recorder)
        topics = bag_topics(bag)
        assert topics["/sernf/episode"] == 2 and topics.get("/orca_hand/joint_states", 0) >= 1, topics
        assert not (out / "forged").exists()
        assert "not among episode_authorities" in processes.log(recorder)
        # /diagnostics counts the refusal and says how many events waited for discovery.
        assert op.spin_until(lambda: op.recorder_status.get("events_refused") == "1", 10.0), op.recorder_status
        assert op.recorder_status["events_awaiting_sender_discovery"] == "0", op.recorder_status
        assert int(op.recorder_status["events_held_for_sender_discovery"]) >= 0
        # The operator's services (teleoperated demonstrations) go through the same path.
        started = op.call(op.start)
        assert started.success, started.message
        assert op.spin_until(lambda: len(list(out.glob("demo_*"))) == 1, 60.0), processes.log(recorder)
        assert not op.call(op.start).success  # one at a time
        assert op.call(op.end).success
        assert op.spin_until(lambda: processes.log(recorder).count("saved") == 2, 60.0), processes.log(recorder)
        assert bag_topics(next(out.glob("demo_*")))["/sernf/episode"] == 2
        assert not op.call(op.end).success  # nothing recording
    finally:
        op.close()


def test_recorder_config_sender_discovery_timeout() -> None:
    from sernf_data.episode_bag_recorder_node import EpisodeBagRecorderConfig

    assert EpisodeBagRecorderConfig(out_dir="/tmp/x", sender_discovery_timeout_s=0.0).sender_discovery_timeout_s == 0
    with pytest.raises(ValueError, match="sender_discovery_timeout_s"):
        EpisodeBagRecorderConfig(out_dir="/tmp/x", sender_discovery_timeout_s=-1.0)
    with pytest.raises(ValueError, match="sender_discovery_timeout_s"):
        EpisodeBagRecorderConfig(out_dir="/tmp/x", sender_discovery_timeout_s=float("nan"))
