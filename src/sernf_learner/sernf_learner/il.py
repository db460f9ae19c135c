"""Stage I: imitation learning of the flow actor on successful demonstrations.

Paper §IV-D a (eq. 8), Alg. 3 Stage I: minimise ``-E[log π_θ(a*_{t:t+H} | o_t, prefix)]`` over
chunks cut from *successful* episodes only (``success_only`` sampler). The exact flow
likelihood comes from :meth:`Policy.log_prob`; with ``add_noise=True`` the normalised data
chunks are perturbed by ``N(0, σ_noise²)`` first (§IV-B, σ_noise = 0.05 sim / 0.01 real, set in
the policy config), which the paper calls crucial for stable action modelling.

Only actor parameters are optimised (the critic, with its own encoder, stays bit-identical:
tested). Optimiser: AdamW, lr 1e-4, weight decay 1e-4, default betas/eps (G2). Dropout of the
actor: 0.5 in simulation, 0.2 on the real robot (G2).

The imitation-only baselines of Table I train here too, with their own losses on the same
sampler, encoders and optimiser (appendix G3: "the dataset, optimizer settings, data
augmentation strategies, and image encoders are kept identical"): :func:`imitation_loss`
dispatches on the actor kind — the flow-matching actor regresses the linear path's velocity,
ACT minimises L1 reconstruction + KL on its own ``chunk_len``-action chunks (the trainer's IL
sampler cuts chunks of ``PolicyConfig.imitation_horizon`` actions).

Departure from the paper: the chunk mask is ignored — chunks running past an episode's end are
padded with its last action (docs/architecture.md), which is what a chunked policy should
predict there anyway (hold still), so the padded chunk is a valid target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sernf_learner.distributed import sync_gradients
from sernf_learner.metrics import MetricsLogger, RateMeter


@dataclass
class ILConfig:
    """Stage I hyperparameters (defaults: paper G2, simulation)."""

    steps: int = 30_000
    """Gradient updates (G2: 30k for the simulated tasks, 200k for scissors)."""
    batch_size: int = 256
    """Transitions per update (G2: 256 for scissors)."""
    lr: float = 1e-4
    """AdamW learning rate (G2: 1e-4 during policy initialisation)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (G2)."""
    dropout: float = 0.5
    """Actor dropout during this stage (G2: 0.5 simulation, 0.2 real)."""
    grad_clip_norm: float = 0.0
    """Clip the actor gradient to this global norm; 0 disables (the paper does not clip)."""
    success_only: bool = True
    """Train on successful episodes only (§IV-D a: "a filtered dataset of successful
    trajectories"). False = behaviour cloning on everything."""

    def __post_init__(self) -> None:
        check_int(self, "steps", allow_zero=True)
        check_int(self, "batch_size")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"ILConfig.lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"ILConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ILConfig.dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.grad_clip_norm) and self.grad_clip_norm >= 0):
            raise ValueError(f"ILConfig.grad_clip_norm must be >= 0, got {self.grad_clip_norm}")
        if not isinstance(self.success_only, bool):
            raise ValueError(f"ILConfig.success_only must be a bool, got {self.success_only!r}")


class ImitationLearning:
    """One NLL update of the actor per call of :meth:`update`."""

    def __init__(self, policy, config: ILConfig) -> None:
        self.policy = policy
        self.config = config
        self.params = [p for p in policy.actor_parameters() if p.requires_grad]
        # foreach: one multi-tensor kernel per Adam step instead of a loop over parameters.
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999), eps=1e-8, foreach=True
        )
        policy.flow.set_dropout(config.dropout)

    def update(self, batch: dict) -> dict[str, float]:
        self.policy.train()
        loss, metrics = imitation_loss(self.policy, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(self.params)  # data-parallel runs: the combined batch's gradient
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip_norm or math.inf))
        self.optimizer.step()
        return {**metrics, "il/grad_norm": grad_norm}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def imitation_loss(policy, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage I loss of ``policy``'s actor on a sampler batch, and its metrics.

    * ``flow`` / ``gaussian``: the NLL of eq. (8), training chunks perturbed by σ_noise;
    * ``flow_matching``: the conditional flow-matching loss on the same context (observation +
      prefix tokens);
    * ``act``: ACT's L1 + KL loss of its ``chunk_len``-action chunk, from the observation tokens.
    """
    kind = policy.config.actor
    norm = policy.action_normalizer
    prefix = norm.normalize(batch["prefix"])  # [B, P, A]
    chunk = norm.normalize(batch["chunk"])  # [B, H, A] (ACT: [B, K, A])
    if chunk.shape[-2] != policy.config.imitation_horizon:
        raise ValueError(f"IL batch chunks have {chunk.shape[-2]} actions; actor {kind!r} imitates "
                         f"{policy.config.imitation_horizon} (sample with that chunk length)")
    if kind in ("flow", "gaussian"):
        loss = -policy.log_prob(batch["obs"], prefix, chunk, add_noise=True).mean()
        h, a = chunk.shape[-2:]
        return loss, {"il/nll": loss.item(), "il/nll_per_dim": loss.item() / (h * a)}
    if kind == "flow_matching":
        loss = policy.flow.flow_matching_loss(chunk, policy.actor_context(batch["obs"], prefix))
        return loss, {"il/loss": loss.item(), "il/fm_mse": loss.item()}
    if kind == "act":
        context = policy.actor_context(batch["obs"], prefix)  # observation tokens only
        loss, parts = policy.flow.loss(chunk, context, policy.state_tokens(context))
        return loss, {"il/loss": loss.item(), **parts}
    raise ValueError(f"no imitation loss for actor kind {kind!r}")


def train_il(
    learner: ImitationLearning,
    sampler,
    *,
    start_step: int = 0,
    logger: MetricsLogger | None = None,
    global_step: int = 0,
    log_every: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run ``learner.config.steps`` updates (from ``start_step``) on batches of ``sampler``.

    ``on_step(step)`` is called after each update with the number of updates done (the
    trainer checkpoints there). Returns the last metrics.
    """
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


def check_int(cfg: object, name: str, allow_zero: bool = False) -> None:
    """Config validation: ``cfg.<name>`` must be an int >= 1 (>= 0 with ``allow_zero``)."""
    value = getattr(cfg, name)
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{type(cfg).__name__}.{name} must be an int >= {low}, got {value!r}")
