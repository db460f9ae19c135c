"""Stage IV: online fine-tuning with mixed offline/online batches.

Paper §IV-D d, Alg. 3 Stage IV. While the interaction budget lasts:

1. **Collect** episodes with the current policy acting by Alg. 2 (sample N chunks with
   σ_sample, take the argmax of the min-over-critics value; N = 24 during online RL, G2)
   through :func:`sernf_sim.evaluation.rollout_chunked`, and append them to the *online*
   episode store (``source="online"``).
2. **Update** actor and critic exactly as in Stage III (:mod:`sernf_learner.offline_rl`) on
   batches that mix offline and online transitions at a fixed ratio ρ = 0.5 (Ball et al. [3],
   G2; :class:`sernf_learner.transitions.MixedSampler`). The imitation term of the actor only
   sees the offline samples (``is_offline`` mask) and is exactly zero for a batch without any.
3. **Evaluate** (optional) on a separate vectorized env with the same action selection.

Resumability: episodes get deterministic ids (run id, iteration, index). If a run was killed
after appending an iteration's episodes but before its checkpoint, the resumed run collects the
same episodes again (same seeds and RNG state) and skips the ones the store already holds, so
the store and the sampler end up exactly as in an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sernf_learner.il import check_int
from sernf_learner.metrics import MetricsLogger
from sernf_learner.offline_rl import ActorConfig, OfflineRL
from sernf_learner.td_targets import CriticConfig
from sernf_sim.evaluation import RolloutResult, rollout_chunked
from sernf_sim.temporal_ensembling import TemporalEnsemble


@dataclass
class OnlineRLConfig:
    """Stage IV hyperparameters (defaults: paper G2 where it gives them)."""

    iterations: int = 20
    """Collect → update rounds (the interaction budget is ``iterations × episodes_per_iteration``)."""
    episodes_per_iteration: int = 10
    """Episodes collected per round (in batches of the env's ``num_envs``)."""
    updates_per_iteration: int = 200
    """Actor-critic updates per round (G2: 4,000 online updates in all for scissors)."""
    batch_size: int = 48
    """Transitions per update (G2: 48 scissors, 512 cube)."""
    rho: float = 0.5
    """Fraction of offline samples per batch (G2: 0.5)."""
    num_samples: int = 24
    """N: candidate chunks per decision while collecting (G2: 24 during RL fine-tuning)."""
    sigma: float = 0.7
    """σ_sample of the latent while collecting (§IV-E a: 0.7)."""
    eval_every: int = 0
    """Evaluate every this many rounds (and after the last); 0 disables. The trainer evaluates
    with ``trainer.eval``'s layouts, N and σ, like its stage evaluations."""
    eval_episodes: int = 200
    """Episodes per evaluation."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """TD-learning settings; â' from the current actor."""
    actor: ActorConfig = field(default_factory=ActorConfig)
    """Actor objective (BC term on offline samples only)."""

    def __post_init__(self) -> None:
        for name in ("episodes_per_iteration", "batch_size", "num_samples", "eval_episodes"):
            check_int(self, name)
        for name in ("iterations", "updates_per_iteration", "eval_every"):
            check_int(self, name, allow_zero=True)
        if not (isinstance(self.rho, int | float) and 0.0 <= self.rho <= 1.0):
            raise ValueError(f"OnlineRLConfig.rho must be in [0, 1], got {self.rho!r}")
        if not (isinstance(self.sigma, int | float) and math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"OnlineRLConfig.sigma must be > 0, got {self.sigma!r}")
        if not isinstance(self.critic, CriticConfig) or not isinstance(self.actor, ActorConfig):
            raise ValueError("OnlineRLConfig.critic / .actor must be CriticConfig / ActorConfig")


class OnlineRL(OfflineRL):
    """Stage III's critic + actor + Polyak update, unchanged, on mixed batches (§IV-D d: "all
    other training components remain unchanged"); the imitation term already only sees the
    ``is_offline`` samples (:func:`sernf_learner.offline_rl.actor_update`)."""

    config: OnlineRLConfig


def policy_act_fn(policy, num_samples: int, sigma: float, generator=None) -> Callable:
    """``act_fn(obs_history, prefix) -> chunk [n, H, A]`` acting by Alg. 2 (raw units); the
    candidates' latents come from ``generator`` (a ``torch.Generator``), or torch's global RNG."""

    def act(obs: dict, prefix: np.ndarray) -> np.ndarray:
        return policy.act_batch(obs, prefix, num_samples=num_samples, sigma=sigma, generator=generator)[0]

    return act


def evaluate_policy(
    policy, env, num_episodes: int, *, num_samples: int, sigma: float, seed: int = 0, threads: int = 0
) -> RolloutResult:
    """Success rate etc. of ``policy`` (Alg. 2 selection) over ``num_episodes`` on ``env``.

    ``threads`` > 0 runs the policy on that many torch intra-op threads during the evaluation
    (restored afterwards); 0 keeps the caller's setting.

    The candidates' latents come from a generator of their own seeded with ``seed``, as the
    layouts are: evaluating a policy twice gives the same episodes, methods compared on the same
    seed share their candidate noise as well as their layouts, and an evaluation leaves torch's
    global RNG alone, so a training run does not depend on how often or how long it evaluates.

    An ACT policy with ``act.temporal_ensembling`` is queried every step instead (ACT's own
    execution, ``sernf_sim.temporal_ensembling``): ``rollout_chunked`` with ``H = 1`` and the
    same T and P, so each query's ensembled action is executed P steps after its observation."""
    import torch

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"evaluate_policy: threads must be an int >= 0, got {threads!r}")
    cfg = policy.config
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if cfg.actor == "act" and cfg.act.temporal_ensembling:
            ensemble = TemporalEnsemble(policy.predict_full_chunk_batch, cfg.act.chunk_len, cfg.act.ensemble_m)
            return rollout_chunked(env, ensemble, cfg.obs_history, cfg.prefix_len, 1, num_episodes, seed=seed,
                                   record=False)
        generator = torch.Generator(device=policy.device).manual_seed(seed)
        return rollout_chunked(
            env, policy_act_fn(policy, num_samples, sigma, generator), cfg.obs_history, cfg.prefix_len, cfg.horizon,
            num_episodes, seed=seed, record=False,
        )
    finally:
        torch.set_num_threads(before)


def collect_episodes(
    policy, env, store, config: OnlineRLConfig, *, iteration: int, run_id: str, seed: int
) -> RolloutResult:
    """Roll out ``config.episodes_per_iteration`` episodes and append the new ones to ``store``."""
    cfg = policy.config
    result = rollout_chunked(
        env, policy_act_fn(policy, config.num_samples, config.sigma), cfg.obs_history,
        cfg.prefix_len, cfg.horizon, config.episodes_per_iteration,
        seed=int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0]),
        record=True, source="online",
    )
    have = set(store.episode_ids())
    for j, (steps, meta) in enumerate(result.episodes):
        meta["id"] = f"online-{run_id}-it{iteration:05d}-{j:05d}"
        if meta["id"] not in have:  # already there when resuming after a kill mid-iteration
            store.append_episode(steps, meta)
    return result


def train_online_rl(
    learner: OnlineRL,
    env,
    online_store,
    sampler,
    *,
    run_id: str,
    seed: int = 0,
    eval_env=None,
    eval_seed: int = 0,
    eval_num_samples: int | None = None,
    eval_sigma: float | None = None,
    eval_threads: int = 0,
    start_iteration: int = 0,
    logger: MetricsLogger | None = None,
    global_step: int = 0,
    on_iteration: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run ``config.iterations`` rounds of collect → update → (evaluate).

    ``sampler`` is a :class:`~sernf_learner.transitions.MixedSampler` whose online side reads
    ``online_store``. ``global_step`` counts updates before this stage (for the logs);
    ``on_iteration(i)`` is called after round ``i`` (the trainer checkpoints there).
    The per-round evaluations on ``eval_env`` act with ``eval_num_samples`` candidates at
    ``eval_sigma`` (default: the collection's N and σ; the trainer passes its evaluation's, so
    they compare with the stage evaluations).
    """
    cfg, policy = learner.config, learner.policy
    metrics: dict[str, float] = {}
    for it in range(start_iteration, cfg.iterations):
        t0 = time.perf_counter()
        result = collect_episodes(policy, env, online_store, cfg, iteration=it, run_id=run_id, seed=seed)
        sampler.refresh()
        t1 = time.perf_counter()
        for _ in range(cfg.updates_per_iteration):
            metrics = learner.update(sampler.sample())
        t2 = time.perf_counter()
        metrics["online/success"] = result.success_rate
        metrics["online/return"] = result.mean_return
        metrics["online/episode_length"] = result.mean_length
        metrics["online/episodes"] = float(online_store.num_episodes)
        metrics["time/collect_s"] = t1 - t0
        metrics["time/updates_per_s"] = cfg.updates_per_iteration / max(t2 - t1, 1e-9)
        last = it + 1 == cfg.iterations
        if eval_env is not None and cfg.eval_every and ((it + 1) % cfg.eval_every == 0 or last):
            ev = evaluate_policy(
                policy, eval_env, cfg.eval_episodes,
                num_samples=cfg.num_samples if eval_num_samples is None else eval_num_samples,
                sigma=cfg.sigma if eval_sigma is None else eval_sigma, seed=eval_seed, threads=eval_threads)
            metrics["eval/success"] = ev.success_rate
            metrics["eval/return"] = ev.mean_return
        if logger is not None:
            logger.log(global_step + (it + 1) * cfg.updates_per_iteration, metrics, stage_step=it + 1)
        if on_iteration is not None:
            on_iteration(it + 1)
    return metrics
