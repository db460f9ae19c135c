"""The ROS side of live labeling (the only module here that imports rclpy and messages).

``LiveLink`` runs one node, ``/rqt_sernf_rewards`` by default (a stable name, the same in rqt
and in ``sernf-label``, and the one the SROS2 policy enrolls: the policy node accepts
rewards and episode ends only from nodes listed in its ``reward_sources`` /
``episode_authorities``), in its own rclpy context, spun by a background thread. It publishes
operator rewards and episode ends and collects the policy node's /diagnostics; the Qt side
polls ``latest_status()`` from a timer, so no Qt object is touched from the ROS thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

from sernf_interfaces.msg import EpisodeEvent, RewardEvent

from .live_model import EpisodeEnd, OperatorReward, PolicyStatus, parse_policy_status

__all__ = ["LiveLink", "LiveLinkConfig"]


@dataclass(frozen=True)
class LiveLinkConfig:
    """Names of the live labeling node and its topics (DESIGN topic defaults)."""

    node_name: str = "rqt_sernf_rewards"
    """Node name; the policy node's reward_sources / episode_authorities must list /<name>."""
    namespace: str = ""
    """Node namespace ('' = root)."""
    reward_topic: str = "/sernf/reward"
    """sernf_interfaces/RewardEvent output."""
    episode_topic: str = "/sernf/episode"
    """sernf_interfaces/EpisodeEvent output (END / ABORT)."""
    diagnostics_topic: str = "/diagnostics"
    """Where the policy node reports episode, step, latency, log-likelihood and Q."""

    def __post_init__(self) -> None:
        for name in ("node_name", "reward_topic", "episode_topic", "diagnostics_topic"):
            if not getattr(self, name):
                raise ValueError(f"LiveLinkConfig.{name} must not be empty")


class LiveLink:
    """Publishes operator rewards / episode ends; keeps the newest policy status."""

    def __init__(self, config: LiveLinkConfig | None = None) -> None:
        self.config = config or LiveLinkConfig()
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self.node = rclpy.create_node(self.config.node_name, namespace=self.config.namespace or None,
                                      context=self._context)
        # Reliable and kept for late joiners: a reward must reach the recorder.
        qos = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.VOLATILE)
        self._reward_pub = self.node.create_publisher(RewardEvent, self.config.reward_topic, qos)
        self._episode_pub = self.node.create_publisher(EpisodeEvent, self.config.episode_topic, 10)
        self._diag_sub = self.node.create_subscription(
            DiagnosticArray, self.config.diagnostics_topic, self._on_diagnostics, 10)
        self._lock = threading.Lock()
        self._status: PolicyStatus | None = None
        self._status_at: float | None = None  # time.monotonic() of the newest status
        self.error = ""
        """Why the ROS thread stopped ('' while it runs)."""
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="rqt_sernf_rewards-ros", daemon=True)
        self._thread.start()

    @property
    def fully_qualified_name(self) -> str:
        return self.node.get_fully_qualified_name()

    def reward_subscribers(self) -> int:
        return self._reward_pub.get_subscription_count()

    def send_reward(self, reward: OperatorReward) -> RewardEvent:
        msg = RewardEvent()
        msg.header.stamp = self.node.get_clock().now().to_msg()  # the moment the operator pressed
        msg.value = float(reward.value)
        msg.subtask = reward.subtask
        msg.source = RewardEvent.SOURCE_OPERATOR
        self._reward_pub.publish(msg)
        self.node.get_logger().info(f"operator reward {reward.value:g} ({reward.subtask or 'no subtask'})")
        return msg

    def end_episode(self, end: EpisodeEnd) -> EpisodeEvent:
        msg = EpisodeEvent()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.episode_id = end.episode_id
        msg.event = EpisodeEvent.ABORT if end.abort else EpisodeEvent.END
        msg.reason = end.reason
        self._episode_pub.publish(msg)
        self.node.get_logger().info(f"{'ABORT' if end.abort else 'END'} episode {end.episode_id or '(running)'}: "
                                    f"{end.reason}")
        return msg

    def latest_status(self) -> PolicyStatus | None:
        with self._lock:
            return self._status

    def status_age_s(self) -> float | None:
        """Seconds since the newest policy status arrived; None before the first."""
        with self._lock:
            return None if self._status_at is None else time.monotonic() - self._status_at

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self._context.ok():
            rclpy.shutdown(context=self._context)
        self._thread.join(timeout=5.0)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            parsed = parse_policy_status(status.name, status.hardware_id, _level(status.level),
                                         status.message, values)
            if parsed is not None:
                with self._lock:
                    self._status = parsed
                    self._status_at = time.monotonic()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except ExternalShutdownException:
            return
        except Exception as exc:  # noqa: BLE001 - shown on the page (link_state), never silent
            self.error = f"{type(exc).__name__}: {exc}"
            self.node.get_logger().error(f"ROS thread stopped: {self.error}")


def _level(level: bytes | int) -> int:
    return level[0] if isinstance(level, bytes | bytearray) else int(level)
