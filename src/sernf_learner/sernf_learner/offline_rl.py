"""Stage III: full offline actor-critic (TD3+BC-style) on all offline data.

Paper §IV-D c, Alg. 3 Stage III. Each update:

1. **Critic** — as in Stage II (:func:`sernf_learner.td_targets.critic_update`), but â' for the
   TD target comes from the *current* actor π_θ.
2. **Actor** — reparameterised flow samples ``a_π = f_θ^{-1}(σ·ε; o, prefix)`` (differentiable
   in θ, §III-c / Alg. 1) are scored by the minimum over the online critics, and the actor
   minimises

       L_π = −Q(o, a_π) / s  +  λ · (−log π_θ(a_data | o, prefix)),        λ = 0.1 (§IV-E b)

   where ``s = mean|Q|/α`` (detached) when ``normalize_q`` is on — TD3+BC's scale-free form
   [17] — and ``s = 1`` otherwise (the paper's formula). The likelihood term is the exact flow
   NLL of the dataset chunk (with the σ_noise perturbation of Stage I, as the NLL is the same
   objective). It is averaged over the samples marked ``is_offline`` only: in Stage IV the
   batch mixes in online data and the imitation term must only see offline data (§IV-D d,
   Ball et al. [3]); it is exactly zero for a batch without offline samples.
3. **Targets** — Polyak step of the target critics (τ = 0.05).

Departures from Alg. 3's text: Alg. 3 writes ``a_πθ ← Alg. 2`` (best-of-N), but a best-of-N
argmax has no gradient w.r.t. θ; we use plain reparameterised samples for the actor loss (as
§IV-D c describes) and keep best-of-N for acting. The critic runs in training mode (dropout
0.1) inside the actor loss too, as DroQ-style critics do; its parameters are frozen there so
the actor loss cannot move them.

Optimisers: AdamW, lr 2e-4, weight decay 1e-4 for both actor and critic (G2). Actor dropout
0.1 during RL (G2). ``ActorConfig.update_every`` > 1 skips the actor step on all but every
n-th update (TD3's policy delay, not in the paper; default 1).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from sernf_learner.distributed import gradient_step, make_adamw, mean_over_ranks
from sernf_learner.il import check_int
from sernf_learner.metrics import MetricsLogger, RateMeter
from sernf_learner.td_targets import (
    CriticConfig,
    TargetCritic,
    critic_update,
    make_critic_optimizer,
)
from sernf_policy.fast_paths import fast_paths_enabled
from sernf_policy.flow import ChunkFlow, select_context_kv
from sernf_policy.mixed_precision import autocast, check_precision


@dataclass
class ActorConfig:
    """Actor objective of Stages III/IV (defaults: paper §IV-E b, G2)."""

    lr: float = 2e-4
    """AdamW learning rate (G2: 2e-4 during RL)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (G2)."""
    dropout: float = 0.1
    """Actor dropout during RL (G2: 0.1; higher values degrade offline RL)."""
    bc_weight: float = 0.1
    """λ: weight of the NLL of data chunks (§IV-E b: 0.1 for all tasks)."""
    bc_success_only: bool = False
    """Take the λ·NLL term on chunks of successful offline episodes only, the data Stage I
    imitates (§IV-D a), instead of on every offline chunk (the paper's §IV-E b, whose
    teleoperated demonstrations are mostly successful). With mixed-quality demonstrations the
    full term pulls the actor towards the failures as well (docs/results.md, section 2)."""
    normalize_q: bool = True
    """Divide the Q term by its detached batch scale mean|Q|/α (TD3+BC [17]) instead of using raw
    Q. On (default) the actor objective does not depend on the reward scale. Measured on the
    point task (config/point_full.yaml critic, 600 offline-RL steps from the same warmed-up
    critic, 2 seeds x 200 episodes): most-likely-of-16 success 0.51 (on) vs 0.45 (off),
    single-sample 0.30 vs 0.28, best-of-16 with the critic 0.63 vs 0.64 — on is as good for
    acting with the critic and better for the actor itself."""
    q_alpha: float = 1.0
    """α of the Q normalisation (TD3+BC: 2.5 with a BC weight of 1; here λ plays that role)."""
    num_samples: int = 1
    """Reparameterised samples a_π per observation in the Q term (averaged)."""
    sigma: float = 1.0
    """σ of the latent for a_π (1.0 = the policy's own distribution)."""
    grad_clip_norm: float = 0.0
    """Clip the actor gradient to this global norm; 0 disables."""
    update_every: int = 1
    """Update the actor once every this many critic updates (TD3's policy delay; 1 = every
    update, as Alg. 3 reads). Halves the cost of an update on average at 2."""

    def __post_init__(self) -> None:
        check_int(self, "update_every")
        for name in ("lr", "sigma", "q_alpha"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"ActorConfig.{name} must be > 0, got {v!r}")
        for name in ("weight_decay", "bc_weight", "grad_clip_norm"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"ActorConfig.{name} must be >= 0, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ActorConfig.dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.bc_success_only, bool):
            raise ValueError(f"ActorConfig.bc_success_only must be a bool, got {self.bc_success_only!r}")
        if not isinstance(self.normalize_q, bool):
            raise ValueError(f"ActorConfig.normalize_q must be a bool, got {self.normalize_q!r}")
        check_int(self, "num_samples")


@dataclass
class OfflineRLConfig:
    """Stage III hyperparameters (defaults: paper G2)."""

    steps: int = 1_000
    """Actor-critic updates (G2: 1,000 for scissors and cube)."""
    batch_size: int = 48
    """Transitions per update (G2: 48 scissors, 512 cube)."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """TD-learning settings; â' comes from the current actor."""
    actor: ActorConfig = field(default_factory=ActorConfig)
    """Actor objective."""

    def __post_init__(self) -> None:
        check_int(self, "steps", allow_zero=True)
        check_int(self, "batch_size")
        if not isinstance(self.critic, CriticConfig) or not isinstance(self.actor, ActorConfig):
            raise ValueError("OfflineRLConfig.critic / .actor must be CriticConfig / ActorConfig")


@contextlib.contextmanager
def frozen(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Temporarily stop gradients into ``params`` (restores their flags after)."""
    flags = [(p, p.requires_grad) for p in params]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def make_actor_optimizer(policy, config: ActorConfig) -> torch.optim.Optimizer:
    params = [p for p in policy.actor_parameters() if p.requires_grad]
    return make_adamw(params, config.lr, config.weight_decay)


def actor_update(policy, optimizer: torch.optim.Optimizer, batch: dict, config: ActorConfig,
                 precision: str = "fp32") -> dict[str, float]:
    """One step of ``−Q(o, a_π)/s + λ·NLL(a_data)`` (BC on ``is_offline`` samples only);
    ``precision`` ``"bf16"``: the forward passes and the loss under bf16 autocast."""
    with autocast(precision, policy.device):
        loss, q_mean, scale, bc_nll, offline = _actor_loss(policy, batch, config)
    grad_norm = gradient_step(optimizer, loss, config.grad_clip_norm)
    return {
        "actor/q": q_mean.item(),
        "actor/q_scale": scale,
        "actor/bc_nll": bc_nll.item(),
        "actor/loss": loss.item(),
        "actor/grad_norm": grad_norm,
        "actor/offline_fraction": offline.float().mean().item(),
    }


def actor_loss_terms(policy, batch: dict, config: ActorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The actor objective's two terms ``(-Q(o, a_pi) / s, lambda * NLL(a_data))`` for ``batch``,
    differentiable in the actor's parameters; their sum is what :func:`actor_update` minimises.
    For diagnostics (``bench/actor_loss_balance.py``): how strongly each term pulls the actor."""
    loss, q_mean, scale, bc_nll, _ = _actor_loss(policy, batch, config)
    return -scale * q_mean, config.bc_weight * bc_nll


def _actor_loss(policy, batch: dict, config: ActorConfig):
    """The actor objective of :func:`actor_update` with its parts: loss, mean Q, Q scale, NLL,
    the mask of the rows the NLL is taken on (offline; and successful with ``bc_success_only``)."""
    norm = policy.action_normalizer
    prefix = norm.normalize(batch["prefix"])  # [B, P, A]
    # The actor context (observation encoder + prefix tokens) is computed once and shared by
    # the reparameterised samples and the data likelihood.
    context = policy.actor_context(batch["obs"], prefix)  # [B, L+P, D]
    flow = policy.flow
    # One flow, optimised paths: both passes also share each coupling's cross-attention keys and
    # values of that context (one projection and one backward instead of two; ~3 % of a
    # paper-size update, docs/performance.md). The same forward numbers; the reference paths
    # keep two projections, so their runs stay bit for bit those made before.
    one_flow = isinstance(flow, ChunkFlow) and flow.config.components == 1
    context_kv = flow.context_kv(context) if one_flow and fast_paths_enabled() else None
    shared = {} if context_kv is None else {"context_kv": context_kv}
    chunks, _ = flow.sample(context, config.num_samples, config.sigma, **shared)  # [B, N, H, A]
    with frozen(policy.critic_parameters()):
        q = policy.min_q(batch["obs"], prefix, chunks)  # [B, N]
    q_mean = q.mean()
    scale = 1.0
    if config.normalize_q:
        # The combined batch's mean|Q| in data-parallel runs (equal shards: mean of means).
        scale = config.q_alpha / mean_over_ranks(q.detach().abs().mean()).clamp_min(1e-6).item()

    offline = batch["is_offline"].to(torch.bool)  # [B]
    if config.bc_success_only:
        offline = offline & batch["episode_success"].to(torch.bool)
    num_offline = int(offline.sum())  # one host synchronisation for both tests below
    if num_offline > 0:
        chunk = norm.normalize(batch["chunk"][offline])  # [B_off, H, A]
        if context_kv is not None and num_offline < len(offline):  # (offline RL: all, no copy)
            shared = {"context_kv": select_context_kv(context_kv, offline)}
        bc_nll = -flow.log_prob(chunk, context[offline], add_noise=True, **shared).mean()
    else:
        bc_nll = q_mean.new_zeros(())  # exactly zero: no offline sample, no imitation term
    loss = -scale * q_mean + config.bc_weight * bc_nll
    return loss, q_mean, scale, bc_nll, offline


class OfflineRL:
    """Critic step, actor step, Polyak step per :meth:`update` (Alg. 3 Stage III); their forward
    passes in ``precision`` (``"fp32"`` or ``"bf16"``, :mod:`sernf_policy.mixed_precision`)."""

    def __init__(self, policy, target: TargetCritic, config: OfflineRLConfig, precision: str = "fp32") -> None:
        self.policy = policy
        self.target = target
        self.config = config
        self.precision = check_precision(precision)
        policy.flow.set_dropout(config.actor.dropout)
        self.critic_optimizer = make_critic_optimizer(policy, config.critic)
        self.actor_optimizer = make_actor_optimizer(policy, config.actor)
        self.num_updates = 0
        self._actor_metrics: dict[str, float] = {}

    def update(self, batch: dict) -> dict[str, float]:
        self.policy.train()
        metrics = critic_update(self.policy, self.target, self.critic_optimizer, batch, self.config.critic,
                                self.precision)
        if self.num_updates % self.config.actor.update_every == 0:
            self._actor_metrics = actor_update(self.policy, self.actor_optimizer, batch, self.config.actor,
                                               self.precision)
        metrics.update(self._actor_metrics)  # between actor steps: those of the last one
        self.num_updates += 1
        return metrics

    def state_dict(self) -> dict:
        return {
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.num_updates = int(state.get("num_updates", 0))


def train_offline_rl(
    learner: OfflineRL,
    sampler,
    *,
    start_step: int = 0,
    logger: MetricsLogger | None = None,
    global_step: int = 0,
    log_every: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run ``learner.config.steps`` actor-critic updates (from ``start_step``)."""
    metrics: dict[str, float] = {}
    rate = RateMeter()
    for step in range(start_step, learner.config.steps):
        metrics = learner.update(sampler.sample())
        metrics["time/updates_per_s"] = rate.tick()
        if logger is not None and (step + 1) % log_every == 0:
            logger.log(global_step + step + 1, metrics, stage_step=step + 1)
        if on_step is not None:
            on_step(step + 1)
    return metrics
