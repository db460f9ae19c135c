"""Accumulates one online episode at the control rate, ready for ``EpisodeStore.append_episode``.

Per control step ``i`` (one tick, time ``t_i``) the recorder stores:

* ``o_i``: the observation the policy saw at the tick (each key, spec dtype),
* ``a_i``: the action *executed* at that tick, i.e. the clipped command that was published
  (docs/design.md §2), hold actions included,
* ``timestamp``: ``t_i`` (float64 seconds, the node's ROS clock),
* ``reward``: the sum of the :class:`RewardEvent` values whose *stamp* (when the reward was
  earned, not when it arrived) falls in the step's window ``[t_i, t_{i+1})``: the reward
  received after executing ``a_i`` (replay layout). The last step's window runs to the end of
  the episode (at least one control period), so a reward earned by the final action counts.
  Rewards stamped before the episode started are not this episode's and are dropped; a reward
  stamped between the start and the first tick goes to step 0.

Reward events may arrive out of order and after the steps they belong to (different topics,
network latency), so they are kept as events and assigned to steps only in :meth:`finish`; a
caller may :meth:`close` the episode (no more steps) and still add late rewards before
finishing it.

``finish(metadata)`` returns ``(steps, metadata)`` as ``EpisodeStore.append_episode`` takes them:
flat ``steps`` (each observation key ``[L, ...]``, ``"action"`` ``[L, A]`` float32, ``"reward"``
``[L]`` float32, ``"timestamp"`` ``[L]`` float64) and metadata with ``id``, ``source``
(``"online"``), ``subtask_success`` (configured subtasks, plus any named by a reward; a subtask
succeeded when it received a positive reward), ``success``, ``terminated`` and ``extra``.

Pure numpy; thread-safe (rewards come from a subscription, steps from the control timer).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EpisodeRecorder", "EpisodeRecorderConfig", "EpisodeSummary", "RewardEvent", "RewardSpec"]


@dataclass(frozen=True)
class RewardSpec:
    """What rewards a task can earn: reward events outside it are refused, never recorded.

    The paper's tasks have sparse subtask rewards (scissors: grasp, then cut; the simulated
    hand task: grasp, then place), value 1 each, earned at most once per episode. A reward of
    1000, a subtask the task does not have, or a second "cut" in one episode is not a
    labelling slip to be averaged away: it would teach the critic a return the task cannot
    give, so it is refused with a reason.
    """

    subtasks: tuple[str, ...] = ()
    """Subtasks a reward may name; empty: any name (and none) is accepted. When set, a reward
    must name one of them."""
    value_min: float = 0.0
    """Smallest accepted value."""
    value_max: float = 1.0
    """Largest accepted value."""
    once_per_subtask: bool = True
    """A subtask earns at most one reward per episode (further ones are refused)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "subtasks", tuple(str(t) for t in self.subtasks))
        if not (math.isfinite(self.value_min) and math.isfinite(self.value_max) and self.value_min <= self.value_max):
            raise ValueError(f"RewardSpec: need finite value_min <= value_max, got {self.value_min}, {self.value_max}")

    def check(self, event: RewardEvent) -> str:
        """'' if ``event`` fits the spec (ignoring once-per-episode), else why not."""
        if not math.isfinite(event.value) or not self.value_min <= event.value <= self.value_max:
            return f"value {event.value!r} outside [{self.value_min:g}, {self.value_max:g}]"
        if self.subtasks and event.subtask not in self.subtasks:
            return f"subtask {event.subtask!r} is not one of the task's {list(self.subtasks)}"
        return ""


@dataclass(frozen=True)
class EpisodeRecorderConfig:
    """How an episode is recorded."""

    control_period_s: float
    """Seconds between control ticks (1 / control rate): the length of the last step's
    reward window."""

    subtasks: tuple[str, ...] = ()
    """Subtask names reported for every episode (e.g. ``("grasp", "cut")``), success or not."""

    max_steps: int = 3000
    """Most steps one episode may hold (memory bound: images at 10 Hz add up); the caller
    ends the episode (truncated) when :attr:`EpisodeRecorder.full` becomes true."""

    source: str = "online"
    """Episode source written into the metadata ("online" for policy rollouts)."""

    reward_spec: RewardSpec | None = None
    """Rewards this task can earn; None: any finite reward is kept."""

    def __post_init__(self) -> None:
        period = float(self.control_period_s)
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"EpisodeRecorderConfig.control_period_s must be > 0, got {self.control_period_s!r}")
        object.__setattr__(self, "subtasks", tuple(str(s) for s in self.subtasks))
        if len(set(self.subtasks)) != len(self.subtasks) or any(not s for s in self.subtasks):
            raise ValueError(f"EpisodeRecorderConfig.subtasks must be unique non-empty names, got {self.subtasks}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"EpisodeRecorderConfig.max_steps must be an int >= 1, got {self.max_steps!r}")
        if self.source not in ("demo", "online", "distill"):
            raise ValueError(f"EpisodeRecorderConfig.source must be demo/online/distill, got {self.source!r}")


@dataclass(frozen=True)
class RewardEvent:
    """A sparse reward at a point in time (the core form of sernf_interfaces/RewardEvent)."""

    stamp: float
    """When the reward was earned (seconds, same clock as the step timestamps)."""
    value: float
    """Reward value."""
    subtask: str = ""
    """Subtask it belongs to; empty if none."""


@dataclass(frozen=True)
class EpisodeSummary:
    """What the announcement of a committed episode needs (sernf_interfaces/ReplayEpisode)."""

    episode_id: str
    num_steps: int
    episode_return: float
    subtask_names: tuple[str, ...]
    subtask_success: tuple[bool, ...]
    success: bool
    terminated: bool

    @classmethod
    def of(cls, steps: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> EpisodeSummary:
        """Summary of a finished episode (``EpisodeRecorder.finish`` output)."""
        subtasks = metadata.get("subtask_success", {})
        names = tuple(sorted(subtasks))
        return cls(
            episode_id=str(metadata["id"]),
            num_steps=int(np.shape(steps["reward"])[0]),
            episode_return=float(np.asarray(steps["reward"], np.float64).sum()),
            subtask_names=names,
            subtask_success=tuple(bool(subtasks[n]) for n in names),
            success=bool(metadata["success"]),
            terminated=bool(metadata["terminated"]),
        )


@dataclass
class _Steps:
    obs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    action: list[np.ndarray] = field(default_factory=list)
    timestamp: list[float] = field(default_factory=list)


class EpisodeRecorder:
    """One episode; see the module docstring. Create a new recorder per episode."""

    def __init__(
        self,
        config: EpisodeRecorderConfig,
        episode_id: str,
        start_time: float,
        obs_keys: list[str] | tuple[str, ...],
        action_dim: int,
    ) -> None:
        if not obs_keys:
            raise ValueError("EpisodeRecorder needs at least one observation key")
        self.config = config
        self.episode_id = episode_id
        self.start_time = float(start_time)
        self.action_dim = int(action_dim)
        self._lock = threading.Lock()
        self._steps = _Steps(obs={k: [] for k in obs_keys})
        self._rewards: list[RewardEvent] = []
        self._end_time: float | None = None

    # ------------------------------------------------------------------------- recording

    @property
    def num_steps(self) -> int:
        with self._lock:
            return len(self._steps.action)

    @property
    def full(self) -> bool:
        """True once ``max_steps`` steps are recorded (no more are accepted)."""
        return self.num_steps >= self.config.max_steps

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._end_time is not None

    def add_step(self, timestamp: float, obs: Mapping[str, np.ndarray], action: np.ndarray) -> None:
        """Record step ``i``: the tick's time, observation ``o_i`` and executed action ``a_i``.

        Raises ``ValueError`` for bad input, ``RuntimeError`` when closed or full.
        """
        action = np.asarray(action, np.float32)
        if action.shape != (self.action_dim,) or not np.isfinite(action).all():
            raise ValueError(f"action must be finite [{self.action_dim}], got shape {list(action.shape)}")
        with self._lock:
            if self._end_time is not None:
                raise RuntimeError(f"episode {self.episode_id} is closed")
            if len(self._steps.action) >= self.config.max_steps:
                raise RuntimeError(f"episode {self.episode_id} is full ({self.config.max_steps} steps)")
            if set(obs) != set(self._steps.obs):
                raise ValueError(f"observation keys {sorted(obs)} != {sorted(self._steps.obs)}")
            if self._steps.timestamp and timestamp < self._steps.timestamp[-1]:
                raise ValueError(
                    f"timestamp {timestamp} goes backwards (last {self._steps.timestamp[-1]})"
                )
            for key, value in obs.items():
                self._steps.obs[key].append(np.array(value, copy=True))
            self._steps.action.append(action.copy())
            self._steps.timestamp.append(float(timestamp))

    def add_reward(self, event: RewardEvent) -> str:
        """Keep a reward event for assignment at :meth:`finish`; returns ``""`` or why it was
        refused now (non-finite value, or earned before the episode started)."""
        if not (math.isfinite(event.stamp) and math.isfinite(event.value)):
            return "non-finite stamp or value"
        if event.stamp < self.start_time:
            return f"earned at {event.stamp:.3f}, before the episode started ({self.start_time:.3f})"
        spec = self.config.reward_spec
        if spec is not None:
            problem = spec.check(event)
            if problem:
                return problem
        with self._lock:
            if self._end_time is not None:
                last = self._steps.timestamp[-1] + self.config.control_period_s if self._steps.timestamp else 0.0
                if event.stamp > max(self._end_time, last):
                    return f"earned at {event.stamp:.3f}, after the episode ended ({self._end_time:.3f})"
            if (spec is not None and spec.once_per_subtask and event.subtask
                    and any(r.subtask == event.subtask for r in self._rewards)):
                return f"subtask {event.subtask!r} was already rewarded in this episode (at most once)"
            self._rewards.append(event)
        return ""

    def close(self, end_time: float) -> None:
        """No more steps; rewards earned up to ``end_time`` (or one period after the last step,
        whichever is later) still count."""
        with self._lock:
            if self._end_time is None:
                self._end_time = float(end_time)

    # ---------------------------------------------------------------------------- output

    def finish(
        self, metadata: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Assign rewards to steps and build ``(steps, metadata)`` for ``append_episode``.

        ``metadata`` may give ``terminated`` (default False: truncated), ``operator``,
        ``extra`` (merged), and override ``success`` / ``subtask_success``. Closes the
        episode. Raises ``ValueError`` without steps. :meth:`EpisodeSummary.of` summarizes the
        result for the announcement.
        """
        metadata = dict(metadata or {})
        with self._lock:
            if self._end_time is None:
                self._end_time = (
                    self._steps.timestamp[-1] + self.config.control_period_s
                    if self._steps.timestamp else self.start_time
                )
            if not self._steps.action:
                raise ValueError(f"episode {self.episode_id} has no steps")
            times = np.asarray(self._steps.timestamp, np.float64)
            steps = {key: np.stack(values) for key, values in self._steps.obs.items()}
            steps["action"] = np.stack(self._steps.action).astype(np.float32)
            steps["timestamp"] = times
            rewards, end_time = list(self._rewards), self._end_time
        reward, dropped, subtask_success = self._assign_rewards(times, rewards, end_time)
        steps["reward"] = reward

        for name in self.config.subtasks:
            subtask_success.setdefault(name, False)
        subtask_success = {k: bool(v) for k, v in metadata.pop("subtask_success", subtask_success).items()}
        episode_return = float(reward.astype(np.float64).sum())
        if "success" in metadata:
            success = bool(metadata.pop("success"))
        elif subtask_success:
            success = all(subtask_success.values())
        else:
            # No subtasks declared or rewarded: a sparse-reward task succeeded iff it was rewarded.
            success = episode_return > 0
        terminated = bool(metadata.pop("terminated", False))
        extra = dict(metadata.pop("extra", {}) or {})
        extra.update({"rewards_dropped": dropped, "rewards_received": len(rewards)})
        out: dict[str, Any] = {
            "id": self.episode_id,
            "source": self.config.source,
            "success": success,
            "subtask_success": subtask_success,
            "terminated": terminated,
            "extra": extra,
        }
        if "operator" in metadata:
            out["operator"] = str(metadata.pop("operator"))
        if metadata:
            raise ValueError(f"unknown metadata keys {sorted(metadata)}; put them under 'extra'")
        return steps, out

    def _assign_rewards(
        self, times: np.ndarray, rewards: list[RewardEvent], end_time: float
    ) -> tuple[np.ndarray, int, dict[str, bool]]:
        """Sum each reward into the step whose window holds its stamp (module docstring)."""
        reward = np.zeros(times.shape[0], np.float64)
        last_window_end = max(end_time, float(times[-1]) + self.config.control_period_s)
        dropped = 0
        subtask_success: dict[str, bool] = {}
        for event in rewards:
            if event.stamp < self.start_time or event.stamp > last_window_end:
                dropped += 1
                continue
            # Index of the last step with t_i <= stamp; a stamp before the first tick -> step 0.
            i = max(int(np.searchsorted(times, event.stamp, side="right")) - 1, 0)
            reward[i] += event.value
            if event.subtask:
                subtask_success[event.subtask] = subtask_success.get(event.subtask, False) or event.value > 0
        return reward.astype(np.float32), dropped, subtask_success
