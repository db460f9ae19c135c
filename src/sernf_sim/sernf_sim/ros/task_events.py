"""Episode and reward announcements of the simulated task (``/sernf/episode``, ``/sernf/reward``),
as sim_robot_node and sim_world publish them."""

from __future__ import annotations

from typing import Any

from rclpy.node import Node

from sernf_interfaces.msg import EpisodeEvent, RewardEvent

__all__ = ["TaskEventPublisher"]


class TaskEventPublisher:
    """Publishes START/END/ABORT events and sparse sim rewards on the graph's task topics."""

    def __init__(self, node: Node, episode_topic: str = "/sernf/episode", reward_topic: str = "/sernf/reward") -> None:
        self.episode_pub = node.create_publisher(EpisodeEvent, episode_topic, 10)
        self.reward_pub = node.create_publisher(RewardEvent, reward_topic, 10)

    def episode(self, stamp: Any, episode_id: str, event: int, reason: str) -> None:
        msg = EpisodeEvent()
        msg.header.stamp = stamp
        msg.episode_id = episode_id
        msg.event = event
        msg.reason = reason
        self.episode_pub.publish(msg)

    def reward(self, stamp: Any, value: float, subtask: str) -> None:
        event = RewardEvent()
        event.header.stamp = stamp
        event.value = float(value)
        event.subtask = subtask
        event.source = RewardEvent.SOURCE_SIM
        self.reward_pub.publish(event)
