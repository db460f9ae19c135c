"""Test-side peer of policy_node: publishes observations, records commands and announcements.

Used by tests/test_policy_node.py. Runs its own rclpy context and executor thread so the test
body can sleep and poll. All received messages are stored with their arrival time
(time.monotonic) so tests can check rates and gaps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from sernf_interfaces.msg import CheckpointAvailable, EpisodeEvent, ReplayEpisode, RewardEvent

HAND_JOINTS = ("index_flex", "thumb_flex")
HAND_LOWER = (-0.5, -0.5)
HAND_UPPER = (1.5, 1.5)
ACTION_DIM = 7 + len(HAND_JOINTS)
T, P, H = 2, 3, 6
RATE_HZ = 10.0


def tiny_policy(seed: int = 0, horizon: int = H) -> Any:
    """A small random Policy over the test's observations (pose 7 + hand joints 2), A = 9."""
    import torch

    from sernf_policy.encoders import EncoderConfig
    from sernf_policy.policy import Policy, PolicyConfig

    torch.manual_seed(seed)
    config = PolicyConfig.create(
        {"ee_pose": {"kind": "lowdim", "shape": [7]}, "hand": {"kind": "lowdim", "shape": [len(HAND_JOINTS)]}},
        action_dim=ACTION_DIM, obs_history=T, prefix_len=P, horizon=horizon,
        encoder=EncoderConfig(token_dim=32),
        flow=dict(num_layers=2, hidden_dim=32, num_heads=2, seed=seed),
        critic=dict(d_model=32, num_heads=2, num_layers=1, ff_dim=32, num_bins=11),
        num_samples=4,
    )
    policy = Policy(config)
    # Small raw actions: arm deltas of a few mm, hand targets inside the limits.
    low = np.array([-0.005] * 3 + [0.99, -0.02, -0.02, -0.02] + [0.1, 0.1], np.float32)
    high = np.array([0.005] * 3 + [1.0, 0.02, 0.02, 0.02] + [0.6, 0.6], np.float32)
    policy.fit_normalizers(np.stack([low, high]))
    return policy


def node_params(checkpoint: str, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "checkpoint": checkpoint,
        "control_rate_hz": RATE_HZ,
        "observation_keys": ["ee_pose", "hand"],
        "observation_types": ["pose", "joint_state"],
        "observation_topics": ["/franka/ee_pose", "/orca_hand/joint_states"],
        "stale_after_s": 0.2,
        "arm_index": 0,
        "hand_index": 7,
        "hand_joint_names": list(HAND_JOINTS),
        "hand_lower": list(HAND_LOWER),
        "hand_upper": list(HAND_UPPER),
        "diagnostics_period_s": 0.5,
        "torch_num_threads": 1,
        "reward_grace_s": 0.3,
    }
    params.update(overrides)
    return params


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"policy": {"ros__parameters": params}}))
    return path


@dataclass
class Received:
    """Messages with their arrival times."""

    items: list[tuple[float, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, msg: Any) -> None:
        with self.lock:
            self.items.append((time.monotonic(), msg))

    def since(self, t0: float) -> list[tuple[float, Any]]:
        with self.lock:
            return [(t, m) for t, m in self.items if t >= t0]

    def times(self, t0: float = 0.0, t1: float = float("inf")) -> np.ndarray:
        with self.lock:
            return np.array([t for t, _ in self.items if t0 <= t <= t1])

    def last(self) -> tuple[float, Any] | None:
        with self.lock:
            return self.items[-1] if self.items else None

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)


class Harness:
    """Observation publisher (10 Hz timer) + subscribers, spinning in a background thread."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("policy_node_test_peer", context=self.context)
        n = self.node
        self.pose_pub = n.create_publisher(PoseStamped, "/franka/ee_pose", qos_profile_sensor_data)
        self.joint_pub = n.create_publisher(JointState, "/orca_hand/joint_states", qos_profile_sensor_data)
        from sernf_policy.policy_node import CHECKPOINT_QOS

        # The learner's profile (transient local): the policy node subscribes with it.
        self.checkpoint_pub = n.create_publisher(CheckpointAvailable, "/sernf/checkpoint", CHECKPOINT_QOS)
        self.reward_pub = n.create_publisher(RewardEvent, "/sernf/reward", 10)
        self.episode_pub = n.create_publisher(EpisodeEvent, "/sernf/episode", 10)
        self.arm = Received()
        self.hand = Received()
        self.chunks = Received()
        self.diagnostics = Received()
        self.replay = Received()
        self.episodes = Received()
        n.create_subscription(PoseStamped, "/franka/relative_pose_command", self.arm.add, 50)
        n.create_subscription(JointState, "/orca_hand/joint_command", self.hand.add, 50)
        n.create_subscription(JointTrajectory, "/sernf/action_chunk", self.chunks.add, 50)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.add, 50)
        n.create_subscription(ReplayEpisode, "/sernf/replay", self.replay.add, 10)
        n.create_subscription(EpisodeEvent, "/sernf/episode", self.episodes.add, 10)
        self.start_client = n.create_client(Trigger, "/policy/start_episode")
        self.stop_client = n.create_client(Trigger, "/policy/stop_episode")
        # What the observation timer publishes: "good", "off", "nan_pose", "short_joints",
        # "joints_beyond_limits" (a finger pushed past its range, as a hard contact leaves it).
        self.mode = "good"
        self.last_obs_time = 0.0
        n.create_timer(1.0 / RATE_HZ, self._publish_observations)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except rclpy.executors.ExternalShutdownException:
                return

    def _publish_observations(self) -> None:
        if self.mode == "off":
            return
        stamp = self.node.get_clock().now().to_msg()
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.pose.position.x = float("nan") if self.mode == "nan_pose" else 0.4
        pose.pose.orientation.w = 1.0
        joints = JointState()
        joints.header.stamp = stamp
        if self.mode == "short_joints":
            joints.position = [0.2, 0.3, 0.4]  # unnamed, one joint too many
        else:
            joints.name = list(reversed(HAND_JOINTS))  # matched by name, not order
            joints.position = [0.3, 2.0 if self.mode == "joints_beyond_limits" else 0.2]
        self.pose_pub.publish(pose)
        self.joint_pub.publish(joints)
        self.last_obs_time = time.monotonic()

    # ------------------------------------------------------------------------------ helpers

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str,
                 log: Callable[[], str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        details = f"\n--- node log ---\n{log()}" if log else ""
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{details}")

    def diag(self) -> dict[str, str]:
        """Values of the newest policy DiagnosticStatus (empty before the first)."""
        with self.diagnostics.lock:
            for _, msg in reversed(self.diagnostics.items):
                for status in msg.status:
                    if status.hardware_id == "sernf_policy":
                        return {kv.key: kv.value for kv in status.values} | {"_message": status.message}
        return {}

    def call(self, client: Any, timeout: float = 10.0) -> Trigger.Response:
        if not client.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f"service {client.srv_name} not available")
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not future.done():
            raise AssertionError(f"service {client.srv_name} did not answer")
        return future.result()

    def announce_checkpoint(self, uri: str, step: int, sha256: str, stage: str = "online_rl", *,
                            run_id: str = "", config_sha256: str = "", key: Any = None,
                            signature: str | None = None) -> None:
        """Publish a CheckpointAvailable; ``key`` (an AnnouncementKey) signs it as the learner
        does; ``signature`` overrides the signature (forgeries)."""
        from sernf_policy.announcement_auth import CHECKPOINT_KIND, checkpoint_fields

        msg = CheckpointAvailable()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.uri, msg.step, msg.stage, msg.sha256 = uri, step, stage, sha256
        msg.run_id, msg.config_sha256 = run_id, config_sha256
        if key is not None:
            msg.key_id = key.key_id
            msg.signature = key.sign(CHECKPOINT_KIND, checkpoint_fields(
                uri=uri, step=step, stage=stage, sha256=sha256, run_id=run_id, config_sha256=config_sha256))
        if signature is not None:
            msg.signature = signature
        self.checkpoint_pub.publish(msg)

    def publish_reward(self, value: float, subtask: str) -> None:
        msg = RewardEvent()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.value, msg.subtask, msg.source = value, subtask, RewardEvent.SOURCE_OPERATOR
        self.reward_pub.publish(msg)

    def publish_episode(self, event: int, episode_id: str, reason: str = "") -> None:
        """An EpisodeEvent as a simulator or operator console sends it."""
        msg = EpisodeEvent(episode_id=episode_id, event=event, reason=reason)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.episode_pub.publish(msg)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)
