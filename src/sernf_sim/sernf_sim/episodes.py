"""Episode bookkeeping of the simulated hand task, shared by sim_robot_node and sim_world.

Both announce episodes and rewards the same way (``/sernf/episode``, ``/sernf/reward``): the
episode id ``sim-<seed>-<n>``, the start reason (``reset`` for a random layout,
``test_config_<i>`` for a fixed one), the end reason (the task's termination reason), and the
subtask of the k-th reward of an episode (the task's two-stage sparse reward: grasp, then
place). This module holds those rules and the automatic reset's timing, without ROS.
"""

from __future__ import annotations

from dataclasses import dataclass

from sernf_sim.hand_pick_place.config import HandEpisodeConfig, test_configs

__all__ = ["SUBTASKS", "EpisodeBook", "end_reason", "layout"]

SUBTASKS = ("grasp", "place")
"""Subtask of the k-th reward of an episode (two-stage sparse reward)."""


def layout(reset_config: int) -> tuple[list[HandEpisodeConfig] | None, str]:
    """The layouts for ``env.reset(configs=...)`` and the START reason of ``reset_config``
    (-1: random, 0..9: a fixed test configuration)."""
    configs = test_configs()
    if not (-1 <= reset_config < len(configs)):
        raise ValueError(f"reset_config must be -1 or 0..{len(configs) - 1}, got {reset_config}")
    if reset_config < 0:
        return None, "reset"
    return [configs[reset_config]], f"test_config_{reset_config}"


def end_reason(termination_reason: str, truncated: bool) -> str:
    """The END reason: the task's termination reason, else what ended the episode."""
    return str(termination_reason) or ("time_limit" if truncated else "terminated")


@dataclass
class EpisodeBook:
    """Which episode runs, its id, its rewards so far, and when the next one starts."""

    seed: int = 0
    episode: int = 0
    """Episodes started so far (the current one's number)."""
    running: bool = False
    rewards_in_episode: int = 0
    reset_at: float | None = None
    """Time (s, the caller's clock) at which the next episode should start; None: not planned."""

    @property
    def episode_id(self) -> str:
        return f"sim-{self.seed}-{self.episode:05d}"

    def start(self) -> None:
        """A new episode begins (call after aborting a running one)."""
        self.episode += 1
        self.running = True
        self.rewards_in_episode = 0
        self.reset_at = None

    def reward_subtask(self) -> str:
        """The subtask of the next reward of this episode (counts it)."""
        subtask = SUBTASKS[min(self.rewards_in_episode, len(SUBTASKS) - 1)]
        self.rewards_in_episode += 1
        return subtask

    def end(self, now: float, auto_reset: bool, reset_delay_s: float) -> None:
        """The episode ended at ``now``; plan the next start when ``auto_reset``."""
        self.running = False
        if auto_reset:
            self.reset_at = now + reset_delay_s

    def reset_due(self, now: float) -> bool:
        return not self.running and self.reset_at is not None and now >= self.reset_at
