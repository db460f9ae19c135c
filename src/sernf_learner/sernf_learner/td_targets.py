"""TD targets, target critics and the critic's cross-entropy update (shared by Stages II–IV).

Paper §III-b (eq. 2), §IV-C and Alg. 3 Stage II: for a chunk transition
``(o_t, prefix, chunk) -> (o_{t+H}, next_prefix)`` every critic ``Q_m`` is trained by HL-Gauss
cross-entropy towards

    y = Σ_{i<H} γ^i r_{t+i} + γ^H (1 - d) Q̄(o_{t+H}, next_prefix, â'),   â' ~ π(· | o_{t+H}, next_prefix)

with ``Q̄`` the minimum over the M *target* critics: Polyak-averaged copies of the online ones
(τ = 0.05, G2). The sampler already provides ``reward`` = Σγ^i r, ``discount`` = γ^H and
``done`` (docs/architecture.md, "Transition batch"); :func:`td_target` only combines them.

Per-step critic (ablation, ``ChunkCriticConfig.horizon`` = 1 < H): the critic scores only the
first chunk action, ``Q(o_t, a_{t..t+P-1}, a_{t+P})``, and the sampler cuts the TD fields over
one step after that action (``ChunkTiming.td_horizon`` = 1), so the same code computes
``y = r_{t+P} + γ (1 - d) Q̄(o_{t+1}, a_{t+1..t+P}, â')`` with ``â'`` the first action of a chunk
sampled at ``o_{t+1}`` — in the usual per-step notation, with the action's own time index,
``r + γ Q̄(s', prefix', a')``. Both the online and the target critic see
:meth:`Policy.critic_actions` of their chunks.

Which policy proposes â' is what differs between the stages: the frozen IL policy π_θ0 in
Stage II, the current actor in Stages III/IV. Both are the same ``Policy`` object here (Stage II
never updates the actor), so :func:`critic_update` just takes the policy and a sampling mode.

Dimension names: ``B`` batch, ``N`` candidates, ``H`` chunk, ``A`` action, ``M`` critics, ``Z`` bins.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sernf_learner.distributed import gradient_step, make_adamw
from sernf_policy.mixed_precision import autocast

NEXT_ACTION_MODES = ("sample", "best_of_n")


# --------------------------------------------------------------------------- pure math


def td_target(
    reward: torch.Tensor, discount: torch.Tensor, done: torch.Tensor, next_value: torch.Tensor
) -> torch.Tensor:
    """``y = reward + discount · (1 − done) · next_value``, all ``[B]`` (eq. 2 / Alg. 3).

    ``reward`` is already the discounted H-step sum Σγ^i r and ``discount`` is γ^H. A window cut
    short by a time-limit truncation bootstraps from the last stored observation (``done`` = 0);
    only a real termination stops bootstrapping.
    """
    if not (reward.shape == discount.shape == done.shape == next_value.shape) or reward.ndim != 1:
        raise ValueError(
            f"td_target needs equal [B] shapes, got reward {tuple(reward.shape)}, discount "
            f"{tuple(discount.shape)}, done {tuple(done.shape)}, next_value {tuple(next_value.shape)}"
        )
    return reward + discount * (1.0 - done.to(reward.dtype)) * next_value


@torch.no_grad()
def polyak_update(target: Iterable[torch.Tensor], online: Iterable[torch.Tensor], tau: float) -> None:
    """In place, per tensor pair: ``target ← τ·online + (1 − τ)·target`` (§III-b, G2: τ = 0.05)."""
    target, online = list(target), list(online)
    if len(target) != len(online):
        raise ValueError(f"polyak_update: {len(target)} target vs {len(online)} online tensors")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"polyak_update: tau must be in [0, 1], got {tau}")
    if target:
        torch._foreach_mul_(target, 1.0 - tau)
        torch._foreach_add_(target, online, alpha=tau)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Temporarily put ``modules`` in eval mode (no dropout), restoring their flags after."""
    flags = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.train(flag)


# ----------------------------------------------------------------------- target critics


class TargetCritic(nn.Module):
    """Polyak-averaged copy of the policy's critic side: its observation encoder and M heads.

    Frozen parameters (e.g. a frozen image backbone) are *shared* with the online critic rather
    than copied: they never change, so averaging them is a no-op and a copy would only cost
    memory (300M parameters for DINOv2). Only trainable parameters are averaged. The copy never
    receives gradients and always runs in eval mode (no dropout in the bootstrap value).
    Observation normalisation is the policy's (buffers fitted once, never trained).

    Buffers (BatchNorm running statistics of a ResNet encoder trained end to end) follow the
    online critic too: floating-point ones are Polyak-averaged at the same rate as the
    parameters, counters copied. Without that the target critic would normalise with the
    statistics of the initial weights forever while its weights move on. Buffers of modules
    whose parameters are all frozen (a frozen backbone's BatchNorm statistics) are shared like
    the frozen parameters: averaging equal values would only add rounding drift, and the
    on-disk feature cache relies on them staying exactly the online ones.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        if policy.critic is None:
            raise ValueError("the policy has no critic (PolicyConfig.critic is None)")
        frozen = {id(p): p for p in policy.critic_parameters() if not p.requires_grad}
        for module in [*policy.critic_encoder.modules(), *policy.critic.modules()]:
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                frozen.update({id(b): b for b in module.buffers(recurse=False)})
        self._shared_buffers = {k for k, v in frozen.items() if not isinstance(v, nn.Parameter)}
        self.encoder = copy.deepcopy(policy.critic_encoder, memo=dict(frozen))
        self.critic = copy.deepcopy(policy.critic, memo=dict(frozen))
        self._trainable = [i for i, p in enumerate(policy.critic_parameters()) if p.requires_grad]
        for p in self._own_parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TargetCritic:
        return super().train(False)  # always eval: the target value has no dropout

    def _own_parameters(self) -> list[nn.Parameter]:
        params = list(self.encoder.parameters()) + list(self.critic.parameters())
        return [params[i] for i in self._trainable]

    def _own_buffers(self) -> list[tuple[str, torch.Tensor]]:
        """Every buffer of the copy (shared ones included, aligned with the online critic's)."""
        return [*(("encoder." + n, b) for n, b in self.encoder.named_buffers()),
                *(("critic." + n, b) for n, b in self.critic.named_buffers())]

    @staticmethod
    def _online_buffers(policy: nn.Module) -> list[torch.Tensor]:
        return [*policy.critic_encoder.buffers(), *policy.critic.buffers()]

    @torch.no_grad()
    def update(self, policy: nn.Module, tau: float) -> None:
        """Polyak step towards the online critic of ``policy`` (parameters and buffers)."""
        online = list(policy.critic_parameters())
        polyak_update(self._own_parameters(), [online[i].detach() for i in self._trainable], tau)
        own_buffers = self._own_buffers()
        online_buffers = self._online_buffers(policy)
        if len(own_buffers) != len(online_buffers):
            raise ValueError(f"target critic has {len(own_buffers)} buffers, the online critic {len(online_buffers)}")
        pairs = [(b, o) for (_, b), o in zip(own_buffers, online_buffers, strict=True) if b is not o]
        floating = [(b, o) for b, o in pairs if b.is_floating_point()]
        if floating:
            polyak_update([b for b, _ in floating], [o for _, o in floating], tau)
        for b, o in pairs:
            if not b.is_floating_point():
                b.copy_(o)

    @torch.no_grad()
    def min_q(self, policy: nn.Module, obs, prefix_norm: torch.Tensor, chunks_norm: torch.Tensor) -> torch.Tensor:
        """``min_m Q̄_m(o, prefix, chunk_n)`` ``[B, N]`` for ``chunks_norm [B, N, H, A]``."""
        tokens = self.encoder(policy.normalize_obs(obs))
        chunks = policy.critic_actions(chunks_norm)  # the leading actions this critic scores
        return self.critic.min_value(tokens, prefix_norm.to(tokens.dtype), chunks.to(tokens.dtype))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Trainable target parameters and the buffers (``buffer:`` prefix) by name: what a
        checkpoint must keep."""
        named = [*(("encoder." + n, p) for n, p in self.encoder.named_parameters()),
                 *(("critic." + n, p) for n, p in self.critic.named_parameters())]
        out = {named[i][0]: named[i][1].detach() for i in self._trainable}
        out.update({"buffer:" + n: b for n, b in self._own_buffers() if id(b) not in self._shared_buffers})
        return out

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`tensors`. Checkpoints written before buffers were kept have none;
        the buffers then stay as constructed (copies of the online critic's)."""
        own = self.tensors()
        required = {k for k in own if not k.startswith("buffer:")}
        has_buffers = any(k.startswith("buffer:") for k in tensors)
        expected = set(own) if has_buffers else required
        shared = {"buffer:" + n for n, b in self._own_buffers() if id(b) in self._shared_buffers}
        tensors = {k: v for k, v in tensors.items() if k not in shared}  # the online critic's own
        if expected != set(tensors):
            raise ValueError(f"target critic tensors differ: missing {sorted(expected - set(tensors))[:4]}, "
                             f"unexpected {sorted(set(tensors) - expected)[:4]}")
        for name in expected:
            own[name].copy_(tensors[name])


# ------------------------------------------------------------------------ critic update


@dataclass
class CriticConfig:
    """Critic TD-learning hyperparameters shared by Stages II, III and IV."""

    lr: float = 2e-4
    """AdamW learning rate of the critic (G2: 2e-4 during RL)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (G2)."""
    tau: float = 0.05
    """Polyak rate of the target critics (G2)."""
    next_action: str = "sample"
    """How â' is proposed: ``"sample"`` (mean of ``next_num_samples`` draws of π — the paper's
    â' ~ π) or ``"best_of_n"`` (max over ``next_num_samples`` candidates of Q̄: the value of
    the Alg. 2 selection actually executed)."""
    next_num_samples: int = 1
    """Candidates for â' (1 = one sample, the paper's choice)."""
    next_sigma: float = 1.0
    """σ of the latent when sampling â' (1.0 = the policy's own distribution; the robot acts
    with σ_sample = 0.7 and best-of-N, which ``next_action="best_of_n"`` and ``next_sigma=0.7``
    mirror)."""
    grad_clip_norm: float = 0.0
    """Clip the critic gradient to this global norm; 0 disables."""

    def __post_init__(self) -> None:
        for name in ("lr", "next_sigma"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"CriticConfig.{name} must be > 0, got {v!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"CriticConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"CriticConfig.tau must be in [0, 1], got {self.tau}")
        if self.next_action not in NEXT_ACTION_MODES:
            raise ValueError(f"CriticConfig.next_action must be one of {NEXT_ACTION_MODES}, got {self.next_action!r}")
        if isinstance(self.next_num_samples, bool) or not isinstance(self.next_num_samples, int) or self.next_num_samples < 1:
            raise ValueError(f"CriticConfig.next_num_samples must be an int >= 1, got {self.next_num_samples!r}")
        if not (math.isfinite(self.grad_clip_norm) and self.grad_clip_norm >= 0):
            raise ValueError(f"CriticConfig.grad_clip_norm must be >= 0, got {self.grad_clip_norm}")


def make_critic_optimizer(policy: nn.Module, config: CriticConfig) -> torch.optim.Optimizer:
    """AdamW over the critic's trainable parameters (G2: wd 1e-4, default betas / eps)."""
    params = [p for p in policy.critic_parameters() if p.requires_grad]
    return make_adamw(params, config.lr, config.weight_decay)


@torch.no_grad()
def next_value(policy: nn.Module, target: TargetCritic, next_obs, next_prefix_norm: torch.Tensor,
               config: CriticConfig) -> torch.Tensor:
    """``Q̄(o', next_prefix, â')`` ``[B]`` with â' proposed by the policy's actor (in eval mode)."""
    with eval_mode(policy.actor_encoder, policy.prefix_tokenizer, policy.flow):
        chunks, _ = policy.sample(next_obs, next_prefix_norm, config.next_num_samples, config.next_sigma)
    q = target.min_q(policy, next_obs, next_prefix_norm, chunks)  # [B, N]
    return q.max(dim=1).values if config.next_action == "best_of_n" else q.mean(dim=1)


def critic_update(
    policy: nn.Module,
    target: TargetCritic,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    config: CriticConfig,
    precision: str = "fp32",
) -> dict[str, float]:
    """One HL-Gauss cross-entropy step of all M critics towards the TD target (Alg. 3);
    ``precision`` ``"bf16"`` runs the target, the forward pass and the loss under bf16 autocast
    (:mod:`sernf_policy.mixed_precision`)."""
    norm = policy.action_normalizer
    with autocast(precision, policy.device):
        y = td_target(
            batch["reward"].float(),
            batch["discount"].float(),
            batch["done"].float(),
            next_value(policy, target, batch["next_obs"], norm.normalize(batch["next_prefix"]), config),
        )  # [B]
        tokens = policy.critic_tokens(batch["obs"])
        prefix, chunk = norm.normalize(batch["prefix"]), policy.critic_actions(norm.normalize(batch["chunk"]))
        logits = policy.critic(tokens, prefix.to(tokens.dtype), chunk.to(tokens.dtype))  # [M, B, Z]
        hl = policy.critic.hl_gauss
        loss = hl.loss(logits, y.expand(logits.shape[0], -1)).mean()
    grad_norm = gradient_step(optimizer, loss, config.grad_clip_norm)
    target.update(policy, config.tau)
    with torch.no_grad():
        q = hl.to_value(logits)  # [M, B]
    return {
        "critic/loss": loss.item(),
        "critic/q_mean": q.mean().item(),
        "critic/q_min_mean": q.min(dim=0).values.mean().item(),
        "critic/target_mean": y.mean().item(),
        "critic/grad_norm": grad_norm,
    }
