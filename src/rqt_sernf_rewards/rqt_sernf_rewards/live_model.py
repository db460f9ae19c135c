"""Live labeling during rollouts, without Qt or ROS: the operator's actions as plain values
(what the ROS link publishes) and the policy node's /diagnostics values as a status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["EpisodeEnd", "OperatorReward", "PolicyStatus", "link_state", "parse_policy_status"]

#: The policy node reports its control loop under this hardware id (policy_node.py).
POLICY_HARDWARE_ID = "sernf_policy"

#: The policy node reports at least once a second (``diagnostics_period_s``, default 1 s); a
#: panel with nothing newer than this is showing the past.
STATUS_STALE_AFTER_S = 3.0


@dataclass(frozen=True)
class OperatorReward:
    """A reward the operator gives now (RewardEvent, source OPERATOR, stamped at the press)."""

    value: float
    subtask: str = ""

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.value)):
            raise ValueError(f"reward value must be finite, got {self.value!r}")


@dataclass(frozen=True)
class EpisodeEnd:
    """END (success/terminal) or ABORT (truncation) of the running episode, with the reason."""

    abort: bool
    reason: str
    episode_id: str = ""


@dataclass(frozen=True)
class PolicyStatus:
    """What the live panel shows from the policy node's diagnostics."""

    node: str = ""
    level: int = 0
    message: str = ""
    episode_id: str = ""
    episode_steps: int = 0
    inference_latency_s: float = math.nan
    log_prob: float = math.nan
    q: float = math.nan
    checkpoint: str = ""
    rewards_rejected: int = 0
    last_reward_rejection: str = ""

    def lines(self) -> list[tuple[str, str]]:
        """(label, text) rows for the panel."""
        def num(x: float, fmt: str) -> str:
            return "-" if math.isnan(x) else format(x, fmt)

        rows = [
            ("policy", f"{self.node or '-'}: {self.message or 'no diagnostics yet'}"),
            ("episode", self.episode_id or "(none running)"),
            ("step", str(self.episode_steps)),
            ("inference latency", "-" if math.isnan(self.inference_latency_s) else f"{1000 * self.inference_latency_s:.1f} ms"),
            ("chunk log-likelihood", num(self.log_prob, ".2f")),
            ("Q (chunk)", num(self.q, ".3f")),
            ("checkpoint", self.checkpoint or "-"),
        ]
        if self.rewards_rejected:
            rows.append(("rewards refused", f"{self.rewards_rejected}: {self.last_reward_rejection}"))
        return rows


def _float(values: Mapping[str, str], key: str) -> float:
    try:
        return float(values.get(key, "nan"))
    except ValueError:
        return math.nan


def _int(values: Mapping[str, str], key: str) -> int:
    try:
        return int(float(values.get(key, "0")))
    except ValueError:
        return 0


def parse_policy_status(name: str, hardware_id: str, level: int, message: str,
                        values: Mapping[str, str]) -> PolicyStatus | None:
    """A diagnostics status of the policy node -> PolicyStatus; None for anyone else's."""
    if hardware_id != POLICY_HARDWARE_ID:
        return None
    step, stage = values.get("checkpoint_step", "-1"), values.get("checkpoint_stage", "")
    return PolicyStatus(
        node=name.split(":")[0],
        level=int(level),
        message=message,
        episode_id=values.get("episode_id", ""),
        episode_steps=_int(values, "episode_steps"),
        inference_latency_s=_float(values, "inference_latency_s"),
        log_prob=_float(values, "log_prob"),
        q=_float(values, "q"),
        checkpoint="" if step in ("-1", "") else f"{stage} step {step}",
        rewards_rejected=_int(values, "rewards_rejected"),
        last_reward_rejection=values.get("last_reward_rejection", ""),
    )


def link_state(node_name: str, status_age_s: float | None, link_error: str = "",
               stale_after_s: float = STATUS_STALE_AFTER_S) -> tuple[str, bool]:
    """The live page's connection line and whether the panel shows the policy as it is now.

    An operator labels from this panel: values that stopped updating (the policy node stopped,
    runs on another ROS_DOMAIN_ID, or our ROS thread died) must say so, or a finished episode
    looks as if it were still running."""
    if link_error:
        return f"ROS link stopped ({link_error}): press Connect to ROS", False
    if status_age_s is None:
        return f"connected as {node_name}; waiting for the policy node's /diagnostics", False
    if status_age_s > stale_after_s:
        return (f"connected as {node_name}; no policy diagnostics for {status_age_s:.0f} s (policy node "
                "stopped, or on another ROS_DOMAIN_ID?): the values below are old", False)
    return f"connected as {node_name}", True
