"""Does the critic's value support cover the returns in the data?

The HL-Gauss critic (paper §IV-C) predicts a distribution over a fixed support
``[v_min, v_max]`` and clips every TD target into it. A support narrower than the task's
returns does not fail: it silently caps every value at ``v_max``, so a state two rewards from
the end looks as good as one reward from it and the critic cannot rank chunks there. Two
sparse subtask rewards (grasp + place, retrieve + cut) already reach 2. We therefore check the
support against the discounted returns-to-go of the data before any critic stage and refuse to
train when it cannot hold them, with the value to set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReturnRange:
    """Smallest and largest discounted return-to-go of a dataset."""

    low: float
    high: float
    episodes: int


def returns_to_go_range(rewards: np.ndarray, episode_ends: np.ndarray, gamma: float) -> ReturnRange:
    """Range of ``G_t = r_t + γ G_{t+1}`` over every step of every episode (``G`` after an
    episode's last step is 0). ``rewards [S]``; ``episode_ends [E]`` exclusive row ends."""
    rewards = np.asarray(rewards, dtype=np.float64)
    ends = np.asarray(episode_ends, dtype=np.int64)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D, got shape {rewards.shape}")
    if ends.size and (np.any(np.diff(ends) <= 0) or ends[0] <= 0 or ends[-1] > rewards.size):
        raise ValueError("episode_ends must be strictly increasing row ends within the rewards")
    if not np.all(np.isfinite(rewards)):
        raise ValueError("rewards contain NaN or inf")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    low, high, start = np.inf, -np.inf, 0
    for end in ends:
        g, episode = 0.0, rewards[start:end]
        for r in episode[::-1]:
            g = float(r) + gamma * g
            low, high = min(low, g), max(high, g)
        start = int(end)
    if not ends.size:
        return ReturnRange(0.0, 0.0, 0)
    return ReturnRange(float(low), float(high), int(ends.size))


def check_value_support(v_min: float, v_max: float, returns: ReturnRange, where: str,
                        tolerance: float = 1e-6) -> None:
    """Raise ValueError (naming ``where`` and the values to set) when the data's returns-to-go
    fall outside ``[v_min, v_max]``."""
    if returns.episodes == 0:
        return
    problems = []
    if returns.high > v_max + tolerance:
        problems.append(f"returns up to {returns.high:.3f} > v_max = {v_max}")
    if returns.low < v_min - tolerance:
        problems.append(f"returns down to {returns.low:.3f} < v_min = {v_min}")
    if problems:
        need_low = min(v_min, float(np.floor(returns.low)))
        need_high = max(v_max, float(np.ceil(returns.high)))
        raise ValueError(
            f"the critic's value support [{v_min}, {v_max}] cannot hold the discounted returns of "
            f"{where} ({returns.episodes} episodes): {'; '.join(problems)}. Every TD target would be "
            f"clipped into the support. Set policy.v_min / policy.v_max to at least "
            f"[{need_low:g}, {need_high:g}] (the task's largest total reward) and train the critic again.")
