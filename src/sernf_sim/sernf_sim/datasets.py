"""Demonstration datasets from scripted experts, as in-memory episode lists.

Episodes come back as ``(steps, metadata)`` pairs in the format of
:func:`sernf_sim.evaluation.rollout_chunked` (the arguments of ``EpisodeStore.append_episode``);
writing them to zarr is the replay layer's job (sernf_learner), so this module stays numpy-only.

Demonstrations are recorded with the same chunk timing the policy will use (the expert acts
through the chunk interface, hold actions at the start included), so what the learner cuts into
``(prefix, chunk)`` windows is exactly what a chunked policy could have produced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import numpy as np

from sernf_sim.evaluation import ActFn, Episode, rollout_chunked
from sernf_sim.point_expert import ExpertConfig, PointExpert
from sernf_sim.point_task import POINT_TIMING, PointTask, PointTaskConfig


class ChunkExpert(Protocol):
    """What :func:`generate_demos` needs from an expert: an ``act_fn`` of a given horizon."""

    def chunk_act_fn(self, horizon: int) -> ActFn: ...


#: Expert qualities mixed (in equal shares) by :func:`mixed_point_dataset`; with the default
#: task this gives ~53 % successful episodes (q=1.0: 100 %, 0.6: ~72 %, 0.3: ~33 %, 0.0: ~5 %),
#: with failures about 2/3 timeouts and 1/3 collisions.
MIXED_POINT_QUALITIES = (1.0, 0.6, 0.3, 0.0)


def generate_demos(
    env_factory: Callable[[], Any],
    expert: ChunkExpert,
    num_episodes: int,
    T: int,
    P: int,
    H: int,
    seed: int = 0,
    configs: Sequence[Any] | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> list[Episode]:
    """Record ``num_episodes`` expert episodes with chunk timing ``(T, P, H)``.

    Args:
        env_factory: builds the (vectorized) env; called once.
        expert: provides ``chunk_act_fn(H)`` (e.g. :class:`~sernf_sim.point_expert.PointExpert`).
        num_episodes: number of episodes (successes and failures alike are kept: mixed-quality
            data is the point of offline RL).
        T, P, H: chunk timing (docs/design.md §6).
        seed: rollout seed (start/goal randomization); the expert carries its own seed.
        configs: optional fixed env configs (see ``rollout_chunked``).
        extra_metadata: merged into every episode's ``metadata["extra"]`` (e.g. the expert's
            quality).

    Returns:
        ``[(steps, metadata)]`` with ``metadata["source"] == "demo"``.
    """
    env = env_factory()
    result = rollout_chunked(
        env,
        expert.chunk_act_fn(H),
        T,
        P,
        H,
        num_episodes,
        configs=configs,
        seed=seed,
        record=True,
        source="demo",
    )
    if extra_metadata:
        for _, meta in result.episodes:
            meta["extra"].update(extra_metadata)
    return result.episodes


def mixed_point_dataset(
    n: int = 200,
    seed: int = 0,
    qualities: Sequence[float] = MIXED_POINT_QUALITIES,
    task_config: PointTaskConfig | None = None,
    T: int = POINT_TIMING.T,
    P: int = POINT_TIMING.P,
    H: int = POINT_TIMING.H,
    num_envs: int = 50,
    upper_route_prob: float = 0.5,
) -> list[Episode]:
    """A mixed-quality point-task dataset of ``n`` episodes (~50–60 % successes by default).

    Episodes are split as evenly as possible over ``qualities`` (see
    :meth:`ExpertConfig.from_quality`), each share recorded with its own expert and seed, then
    shuffled. Metadata carries ``source="demo"`` and ``extra["expert_quality"]``.
    ``upper_route_prob`` is every expert's :attr:`ExpertConfig.upper_route_prob`: 0.5 gives
    both routes (the multimodal data the task is for), 0 or 1 a single route (a control).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive int, got {n}")
    if not qualities:
        raise ValueError("qualities must not be empty")
    task_config = task_config if task_config is not None else PointTaskConfig()
    rng = np.random.default_rng(seed)
    shares = np.full(len(qualities), n // len(qualities))
    shares[: n % len(qualities)] += 1
    episodes: list[Episode] = []
    for q, count in zip(qualities, shares, strict=True):
        if count == 0:
            continue
        sub_seed = int(rng.integers(2**31))
        expert_config = ExpertConfig.from_quality(float(q), upper_route_prob=float(upper_route_prob))
        expert = PointExpert(task_config, expert_config, seed=sub_seed)
        episodes += generate_demos(
            partial(
                PointTask, num_envs=min(num_envs, int(count)), seed=sub_seed, config=task_config
            ),
            expert,
            int(count),
            T,
            P,
            H,
            seed=sub_seed,
            extra_metadata={"expert_quality": float(q)},
        )
    order = rng.permutation(len(episodes))
    return [episodes[i] for i in order]
