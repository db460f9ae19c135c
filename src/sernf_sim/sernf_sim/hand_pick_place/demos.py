"""The default demonstration dataset of the hand task, like the paper's teleoperated one.

Appendix E2: 121 demonstrations, ~59 % successful, failures from drops and the like. Here: the
scripted expert at :func:`~sernf_sim.hand_pick_place.expert.default_demo_quality` on random
layouts, recorded with the task's chunk timing (``T=1, P=3, H=10``), successes and failures
alike (the failures feed the offline RL stages). Episodes come back as ``(steps, metadata)``
pairs for ``EpisodeStore.append_episode`` (see :func:`sernf_sim.datasets.generate_demos`).
"""

from __future__ import annotations

from typing import Any

from sernf_sim.datasets import generate_demos
from sernf_sim.evaluation import Episode
from sernf_sim.hand_pick_place.env import make_env
from sernf_sim.hand_pick_place.expert import (
    DEFAULT_DEMO_QUALITY,
    HandExpert,
    HandExpertConfig,
    default_demo_quality,
)

#: Size of the default dataset (the paper collected 121 demonstrations).
DEFAULT_NUM_DEMOS = 120


def hand_demo_dataset(
    n: int = DEFAULT_NUM_DEMOS,
    seed: int = 0,
    expert_config: HandExpertConfig | None = None,
    variant: str = "nominal",
    num_envs: int = 20,
    T: int = 1,
    P: int = 3,
    H: int = 10,
    **env_overrides: Any,
) -> list[Episode]:
    """Record ``n`` expert episodes (~60 % successful with the default quality).

    Args:
        n: number of episodes.
        seed: layout and expert seed.
        expert_config: expert knobs; ``None`` = :func:`default_demo_quality`.
        variant: ``"nominal"`` or ``"shifted"`` (see :func:`make_env`).
        num_envs: envs simulated in parallel while recording.
        T, P, H: chunk timing the demonstrations are recorded with.
        env_overrides: further :class:`HandPickPlaceConfig` fields (e.g. ``render_images=True``
            for image observations).

    Returns:
        ``[(steps, metadata)]``; metadata carries ``source="demo"`` and ``expert_quality``
        (``None`` for a custom ``expert_config``).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive int, got {n}")
    env = make_env(variant, num_envs=min(int(num_envs), int(n)), seed=seed, **env_overrides)
    config = expert_config if expert_config is not None else default_demo_quality()
    quality = DEFAULT_DEMO_QUALITY if expert_config is None else None
    expert = HandExpert(env, config, seed=seed)
    return generate_demos(
        lambda: env,  # the expert reads this env's state, so the factory hands out this one
        expert,
        int(n),
        T,
        P,
        H,
        seed=seed,
        extra_metadata={"expert_quality": quality, "task": "hand_pick_place", "variant": variant},
    )
