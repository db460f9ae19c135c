"""Flow-matching chunk policy: the paper's imitation baseline with a DiT backbone (Table I, G3 b).

The paper compares the normalizing-flow actor against a flow-matching policy "implemented with
a DiT block policy backbone" (dimension 512, 8 heads, 4 DiT blocks, feed-forward 2048, dropout
0.1, 8 flow steps, causal masking), trained and sampled "following the procedure described in"
pi0 (Black et al. 2024), with real-time chunking "with the same configuration as our SERNF".
This module is that baseline, built on the same inputs as :class:`~sernf_policy.flow.ChunkFlow`:

* the context is :meth:`Policy.actor_context`: actor-encoded observation tokens followed by the
  P prefix-action tokens (the queued actions; the real-time-chunking condition the flow gets);
* a DiT-style velocity network: the H noisy chunk actions are H tokens (``Linear(A, d)`` plus a
  learned position embedding); each block runs adaLN-Zero-modulated (Peebles & Xie 2023)
  causal self-attention over the chunk tokens, cross-attention to the context tokens and a GELU
  MLP. The modulation comes from the flow time's sinusoidal embedding plus the mean context
  token; every residual gate and the output layer start at zero, so the initial velocity is 0;
* conditional flow matching on the linear (rectified) path: ``x_tau = (1 - tau) x_0 + tau x_1``
  with ``x_0 ~ N(0, I)`` and ``x_1`` the normalised data chunk, regressing the velocity
  ``x_1 - x_0`` (MSE). As in pi0, ``tau`` is drawn from a Beta distribution that favours the
  noisy end (``tau = s (1 - b)``, ``b ~ Beta(1.5, 1)``, ``s = 0.999``);
* sampling integrates the learned ODE from ``x_0 = sigma * eps`` (``eps ~ N(0, I)``; sigma as
  the flow's sigma_sample) in ``num_steps`` (8) Euler or midpoint steps and clamps the result to
  the normalised action box ``[-1, 1]``.

There is no exact likelihood (it would need the divergence of the velocity field integrated
along the ODE), so this actor has no ``log_prob``: it is an imitation-only baseline. A policy
with it acts by one sample (``selection: single``); "most likely of N" and the RL stages, which
need ``log pi``, are not defined for it.

Dimension names: ``B`` batch, ``N`` samples per context, ``H`` chunk length, ``A`` action dim,
``L`` context tokens, ``D`` context width, ``d`` model width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config_io import build_dataclass
from .dropout_rate import set_dropout_rate
from .mixed_precision import RMSNorm, full_precision

__all__ = ["FlowMatchingActorConfig", "FlowMatchingChunkActor"]

INTEGRATORS = ("euler", "midpoint")
TIME_SAMPLINGS = ("beta", "uniform")


@dataclass
class FlowMatchingActorConfig:
    """Configuration of :class:`FlowMatchingChunkActor` (defaults: the paper's G3 b)."""

    #: A: action dimensions per step.
    action_dim: int
    #: H: actions per chunk (the policy's chunk length, the same as the flow's).
    horizon: int
    #: D: width of the context tokens (observation + prefix) the blocks cross-attend to.
    context_dim: int
    #: DiT blocks (G3: 4).
    num_blocks: int = 4
    #: Model width d (G3: 512).
    hidden_dim: int = 512
    #: Attention heads; must divide hidden_dim (G3: 8).
    num_heads: int = 8
    #: MLP width as a multiple of hidden_dim (G3: feed-forward 2048 = 4 x 512).
    mlp_ratio: float = 4.0
    #: Dropout in attention and MLP (G3: 0.1; the IL stage sets its own rate via set_dropout).
    dropout: float = 0.1
    #: ODE integration steps at sampling time (G3: 8).
    num_steps: int = 8
    #: "euler" (pi0) or "midpoint" (two velocity evaluations per step).
    integrator: str = "euler"
    #: Causal self-attention over the chunk tokens (G3: "causal masking throughout").
    causal: bool = True
    #: Training time distribution: "beta" (pi0: more weight on the noisy end) or "uniform".
    time_sampling: str = "beta"

    def __post_init__(self) -> None:
        for name in ("action_dim", "horizon", "context_dim", "num_blocks", "hidden_dim", "num_heads", "num_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FlowMatchingActorConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"FlowMatchingActorConfig: hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        for name in ("mlp_ratio", "dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"FlowMatchingActorConfig.{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if not (self.mlp_ratio > 0 and round(self.mlp_ratio * self.hidden_dim) >= 1):
            raise ValueError(f"FlowMatchingActorConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FlowMatchingActorConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.integrator not in INTEGRATORS:
            raise ValueError(f"FlowMatchingActorConfig.integrator must be one of {INTEGRATORS}, got {self.integrator!r}")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"FlowMatchingActorConfig.time_sampling must be one of {TIME_SAMPLINGS}, got {self.time_sampling!r}"
            )
        if not isinstance(self.causal, bool):
            raise ValueError(f"FlowMatchingActorConfig.causal must be a bool, got {self.causal!r}")

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width of each block's MLP."""
        return int(round(self.mlp_ratio * self.hidden_dim))

    @classmethod
    def from_dict(cls, data: Any) -> FlowMatchingActorConfig:
        """Rebuild from the plain dict written by ``config_io.to_jsonable``."""
        return build_dataclass(cls, data)


def time_embedding(tau: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of flow times ``tau [B]`` in [0, 1] (transformer
    frequencies over a 1000x stretched time, as diffusion models embed their steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=tau.device, dtype=tau.dtype) / max(half, 1))
    angles = 1000.0 * tau[:, None] * freqs[None]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample ``[B, d]`` shift / scale."""
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class _DiTBlock(nn.Module):
    """adaLN-Zero block: causal self-attention, cross-attention to the context, MLP."""

    def __init__(self, config: FlowMatchingActorConfig) -> None:
        super().__init__()
        d, heads, p = config.hidden_dim, config.num_heads, config.dropout
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.mlp_hidden_dim), nn.GELU(approximate="tanh"), nn.Dropout(p),
            nn.Linear(config.mlp_hidden_dim, d), nn.Dropout(p),
        )
        # shift / scale / gate for each of the three sub-layers, from the conditioning vector.
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(d, 9 * d))
        nn.init.zeros_(self.adaln[1].weight)  # adaLN-Zero: the block starts as the identity
        nn.init.zeros_(self.adaln[1].bias)

    def forward(self, x: Tensor, memory: Tensor, cond: Tensor, mask: Tensor | None) -> Tensor:
        s1, c1, g1, s2, c2, g2, s3, c3, g3 = self.adaln(cond).chunk(9, dim=-1)
        h = _modulate(self.norm1(x), s1, c1)
        x = x + g1.unsqueeze(1) * self.self_attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = _modulate(self.norm2(x), s2, c2)
        x = x + g2.unsqueeze(1) * self.cross_attn(h, memory, memory, need_weights=False)[0]
        h = _modulate(self.norm3(x), s3, c3)
        return x + g3.unsqueeze(1) * self.mlp(h)


class FlowMatchingChunkActor(nn.Module):
    """DiT velocity field ``v(x_tau, tau | c)`` over normalised chunks ``[H, A]`` (see module doc)."""

    #: No exact likelihood: Policy.log_prob and "most likely" selection refuse this actor.
    has_likelihood = False

    def __init__(self, config: FlowMatchingActorConfig) -> None:
        super().__init__()
        if not isinstance(config, FlowMatchingActorConfig):
            raise ValueError(f"FlowMatchingChunkActor needs a FlowMatchingActorConfig, got {type(config).__name__}")
        self.config = config
        d = config.hidden_dim
        self.context_norm = RMSNorm(config.context_dim, eps=1e-6)
        self.context_proj = nn.Identity() if config.context_dim == d else nn.Linear(config.context_dim, d)
        self.action_in = nn.Linear(config.action_dim, d)
        self.action_pos = nn.Parameter(torch.randn(config.horizon, d) * 0.02)  # [H, d]
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.context_cond = nn.Linear(d, d)
        self.blocks = nn.ModuleList(_DiTBlock(config) for _ in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_adaln = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.head = nn.Linear(d, config.action_dim)
        for layer in (self.final_adaln[1], self.head):  # zero velocity at initialisation
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        causal = torch.triu(torch.ones(config.horizon, config.horizon, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)  # True = may not attend

    # -- the velocity field -------------------------------------------------------------------
    def encode_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """``context [B, L, D]`` -> cross-attention memory ``[B, L, d]`` and its conditioning
        vector ``[B, d]`` (computed once per decision, reused by every integration step)."""
        self._check_context(context)
        memory = self.context_proj(self.context_norm(context))
        return memory, self.context_cond(memory.mean(dim=1))

    def velocity(self, x: Tensor, tau: Tensor, memory: Tensor, context_cond: Tensor) -> Tensor:
        """``v(x_tau, tau | c)`` ``[B, H, A]`` for chunks ``x [B, H, A]`` at times ``tau [B]``."""
        self._check_chunk(x, "x")
        h = self.action_in(x) + self.action_pos
        cond = self.time_mlp(time_embedding(tau.to(h.dtype), self.config.hidden_dim)) + context_cond
        mask = self.causal_mask if self.config.causal else None
        for block in self.blocks:
            h = block(h, memory, cond, mask)
        shift, scale = self.final_adaln(cond).chunk(2, dim=-1)
        return self.head(_modulate(self.final_norm(h), shift, scale))

    # -- training -------------------------------------------------------------------------------
    def sample_time(self, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Training times ``tau [B]`` (``time_sampling``: pi0's Beta or uniform on [0, 1))."""
        if self.config.time_sampling == "uniform":
            return torch.rand(batch, device=device, dtype=dtype)
        # pi0: p(tau) = Beta((s - tau) / s; 1.5, 1), s = 0.999 -> emphasises noisy times (tau ~ 0).
        b = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0)).sample((batch,))
        return (0.999 * (1.0 - b)).to(device=device, dtype=dtype)

    def flow_matching_loss(self, actions: Tensor, context: Tensor) -> Tensor:
        """Conditional flow-matching loss (scalar) of normalised data chunks ``actions [B, H, A]``:
        mean squared error between ``v(x_tau, tau | c)`` and the linear path's velocity
        ``x_1 - x_0``."""
        self._check_chunk(actions, "actions")
        if actions.shape[0] != context.shape[0]:
            raise ValueError(f"batch mismatch: actions {tuple(actions.shape)} vs context {tuple(context.shape)}")
        memory, cond = self.encode_context(context)
        noise = torch.randn_like(actions)
        tau = self.sample_time(actions.shape[0], actions.device, actions.dtype)
        x_tau = (1.0 - tau)[:, None, None] * noise + tau[:, None, None] * actions
        # bf16 training (mixed_precision): the regression target and loss in float32.
        return F.mse_loss(full_precision(self.velocity(x_tau, tau, memory, cond)), actions - noise)

    # -- sampling -------------------------------------------------------------------------------
    def sample(
        self,
        context: Tensor,
        num_samples: int,
        sigma: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Integrate ``num_steps`` steps from ``x_0 = sigma * eps``: chunks ``[B, N, H, A]`` in
        ``[-1, 1]`` (differentiable through the integration; no log-density exists)."""
        self._check_context(context)
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be > 0, got {sigma}")
        cfg = self.config
        b, n = context.shape[0], int(num_samples)
        memory, cond = self.encode_context(context)
        memory, cond = memory.repeat_interleave(n, dim=0), cond.repeat_interleave(n, dim=0)  # [B*N, ...]
        x = sigma * torch.randn((b * n, cfg.horizon, cfg.action_dim), generator=generator,
                                device=context.device, dtype=context.dtype)
        dt = 1.0 / cfg.num_steps
        for k in range(cfg.num_steps):
            tau = torch.full((b * n,), k * dt, device=x.device, dtype=x.dtype)
            v = self.velocity(x, tau, memory, cond)
            if cfg.integrator == "midpoint":
                v = self.velocity(x + 0.5 * dt * v, tau + 0.5 * dt, memory, cond)
            x = x + dt * v
        return x.clamp(-1.0, 1.0).view(b, n, cfg.horizon, cfg.action_dim)

    # -- helpers ------------------------------------------------------------------------------
    def set_dropout(self, p: float) -> None:
        """Change the dropout rate in place (the IL stage's rate, as ChunkFlow.set_dropout)."""
        self.config.dropout = set_dropout_rate(self, p)

    def _check_context(self, context: Tensor) -> None:
        if context.ndim != 3 or context.shape[-1] != self.config.context_dim or context.shape[1] < 1:
            raise ValueError(
                f"FlowMatchingChunkActor context must be [B, L>=1, {self.config.context_dim}], got {tuple(context.shape)}"
            )

    def _check_chunk(self, x: Tensor, name: str) -> None:
        cfg = self.config
        if x.ndim != 3 or tuple(x.shape[-2:]) != (cfg.horizon, cfg.action_dim):
            raise ValueError(
                f"FlowMatchingChunkActor {name} must be [B, {cfg.horizon}, {cfg.action_dim}], got {tuple(x.shape)}"
            )
