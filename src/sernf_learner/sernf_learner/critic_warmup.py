"""Stage II: offline critic warm-up under the frozen imitation policy π_θ0.

Paper §IV-D b, Alg. 3 Stage II: the critic starts from random weights, so before it may steer
the actor it learns ``Q^{π_θ0}`` on all offline data (successes *and* failures):

    y = Σ_{t<H} γ^t r_{k,t} + γ^H (1 − d) Q̄(o_{k+1}, â_{k+1}),    â_{k+1} ~ π_θ0(· | o_{k+1}, prefix_{k+1})

with HL-Gauss cross-entropy (§IV-C) for each of the M = 2 critics and Q̄ the minimum over the
Polyak-averaged target critics (:mod:`sernf_learner.td_targets`). The actor is *not* updated: it
is π_θ0, and it stays bit-identical through this stage (tested). Its parameters are even
switched to ``requires_grad=False`` for the stage so no gradient can reach them.

The warmed-up critic can already improve acting via best-of-N selection (Alg. 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sernf_learner.il import check_int
from sernf_learner.metrics import MetricsLogger, RateMeter
from sernf_learner.td_targets import (
    CriticConfig,
    TargetCritic,
    critic_update,
    make_critic_optimizer,
)
from sernf_policy.mixed_precision import check_precision


@dataclass
class CriticWarmupConfig:
    """Stage II hyperparameters (defaults: paper G2)."""

    steps: int = 5_000
    """Critic updates (G2: 5,000 scissors, 3,000 cube)."""
    batch_size: int = 48
    """Transitions per update (G2: 48 scissors RL stages, 512 cube)."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """TD-learning settings (lr, τ, how â' is drawn from π_θ0)."""

    def __post_init__(self) -> None:
        check_int(self, "steps", allow_zero=True)
        check_int(self, "batch_size")
        if not isinstance(self.critic, CriticConfig):
            raise ValueError("CriticWarmupConfig.critic must be a CriticConfig")


class CriticWarmup:
    """Critic-only TD updates with â' from the (frozen) current actor; forward passes in
    ``precision`` (``"fp32"`` or ``"bf16"``, :mod:`sernf_policy.mixed_precision`)."""

    def __init__(self, policy, target: TargetCritic, config: CriticWarmupConfig, precision: str = "fp32") -> None:
        self.policy = policy
        self.target = target
        self.config = config
        self.precision = check_precision(precision)
        self.optimizer = make_critic_optimizer(policy, config.critic)
        # π_θ0 is frozen: no gradient may reach it (its sampling for â' runs under no_grad
        # anyway; this makes the contract explicit and saves autograd bookkeeping).
        self._actor_flags = [(p, p.requires_grad) for p in policy.actor_parameters()]
        for p, _ in self._actor_flags:
            p.requires_grad_(False)

    def close(self) -> None:
        """Give the actor its ``requires_grad`` flags back (called at the end of the stage)."""
        for p, flag in self._actor_flags:
            p.requires_grad_(flag)

    def update(self, batch: dict) -> dict[str, float]:
        self.policy.train()
        return critic_update(self.policy, self.target, self.optimizer, batch, self.config.critic, self.precision)

    def state_dict(self) -> dict:
        return {"critic_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["critic_optimizer"])


def train_critic_warmup(
    learner: CriticWarmup,
    sampler,
    *,
    start_step: int = 0,
    logger: MetricsLogger | None = None,
    global_step: int = 0,
    log_every: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run ``learner.config.steps`` critic updates (from ``start_step``) on ``sampler`` batches."""
    metrics: dict[str, float] = {}
    rate = RateMeter()
    try:
        for step in range(start_step, learner.config.steps):
            metrics = learner.update(sampler.sample())
            metrics["time/updates_per_s"] = rate.tick()
            if logger is not None and (step + 1) % log_every == 0:
                logger.log(global_step + step + 1, metrics, stage_step=step + 1)
            if on_step is not None:
                on_step(step + 1)
    finally:
        learner.close()
    return metrics
