"""Diagonal-Gaussian chunk actor: the "no normalizing flow" ablation of the SERNF actor.

The paper argues (abstract, §I) that Gaussian policies collapse under multimodal chunked
actions while the flow keeps exact likelihoods of a multimodal chunk distribution. This module
is the Gaussian side of that comparison, built to differ from :class:`~sernf_policy.flow.ChunkFlow`
in the distribution family only:

* the same context (actor-encoded observation tokens + prefix-action tokens, ``[B, L+P, D]``,
  from :meth:`Policy.actor_context`) with the same shared RMSNorm of the incoming tokens;
* a small transformer decoder: ``H`` learned query tokens (one per chunk step) run ``K`` pre-norm
  blocks of self-attention, cross-attention to the context and a GELU MLP (width, heads and
  depth chosen like the flow's conditioners), then two linear heads give the mean ``mu`` and
  the log-std of the *pre-tanh* chunk ``u [H, A]``;
* the same bounded support: ``a = tanh(u)``, ``u ~ N(mu, diag(std^2))``, with the exact
  change of variables ``log pi(a | c) = log N(atanh(a); mu, std) - sum log(1 - a^2)``;
* the same interface the policy and the stages use: ``log_prob(actions, context, add_noise)``
  (σ_noise perturbation of training chunks, clamping before ``atanh``), ``sample(context, N,
  sigma, generator)`` returning reparameterised chunks (``u = mu + std * sigma * eps``, so the
  Q term of Stages III/IV differentiates through them) with their density under the *model*
  (σ = 1), and ``set_dropout``.

Its heads are zero-initialised like the flow's coupling heads, so at initialisation both
actors are the same distribution: ``a = tanh(u)``, ``u ~ N(0, I)``. The log-std is squashed
smoothly into ``[log_std_min, log_std_max]`` (a floor keeps the NLL of near-deterministic demo
chunks finite, as in SAC-style actors).

Dimension names: ``B`` batch, ``N`` samples per context, ``H`` chunk length, ``A`` action dim,
``L`` context tokens, ``D`` context width.
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

__all__ = ["GaussianActorConfig", "GaussianChunkActor"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class GaussianActorConfig:
    """Configuration of :class:`GaussianChunkActor` (sizes default to the flow's, paper G1)."""

    #: A: action dimensions per step.
    action_dim: int
    #: H: actions per chunk.
    horizon: int
    #: D: width of the context tokens the decoder cross-attends to.
    context_dim: int
    #: Decoder blocks (the trainer uses the flow's K so both actors get the same depth).
    num_layers: int = 4
    #: Decoder width (the trainer uses the flow conditioners' hidden width).
    hidden_dim: int = 256
    #: Attention heads; must divide hidden_dim.
    num_heads: int = 8
    #: MLP width of each block as a multiple of hidden_dim (the flow's SwiGLU ratio).
    mlp_ratio: float = 4.0
    #: Dropout in the decoder blocks (switch at run time with set_dropout, as for the flow).
    dropout: float = 0.0
    #: sigma_noise of the Gaussian perturbation of normalised training actions (paper: 0.05
    #: sim, 0.01 real); used by log_prob(..., add_noise=True) in training mode only.
    noise_std: float = 0.05
    #: Actions are clamped to [-1 + eps, 1 - eps] before atanh (and after tanh when sampling).
    clamp_eps: float = 1e-6
    #: Lower bound of the per-dimension log-std of u (keeps the NLL of demo chunks finite).
    log_std_min: float = -7.0
    #: Upper bound of the per-dimension log-std of u.
    log_std_max: float = 2.0
    #: Log-std at initialisation (0: std 1, the flow's N(0, I) base at its identity init).
    init_log_std: float = 0.0

    def __post_init__(self) -> None:
        for name in ("action_dim", "horizon", "context_dim", "num_layers", "hidden_dim", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GaussianActorConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"GaussianActorConfig: hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        for name in ("mlp_ratio", "dropout", "noise_std", "clamp_eps", "log_std_min", "log_std_max", "init_log_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"GaussianActorConfig.{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if not (self.mlp_ratio > 0 and round(self.mlp_ratio * self.hidden_dim) >= 1):
            raise ValueError(f"GaussianActorConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GaussianActorConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.noise_std < 0.0:
            raise ValueError(f"GaussianActorConfig.noise_std must be >= 0, got {self.noise_std}")
        if not 0.0 < self.clamp_eps < 0.1:
            raise ValueError(f"GaussianActorConfig.clamp_eps must be in (0, 0.1), got {self.clamp_eps}")
        if not self.log_std_min < self.init_log_std < self.log_std_max:
            raise ValueError(
                "GaussianActorConfig needs log_std_min < init_log_std < log_std_max, got "
                f"{self.log_std_min}, {self.init_log_std}, {self.log_std_max}"
            )

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width of each block's MLP."""
        return int(round(self.mlp_ratio * self.hidden_dim))

    @classmethod
    def from_dict(cls, data: Any) -> GaussianActorConfig:
        """Rebuild from the plain dict written by ``config_io.to_jsonable``."""
        return build_dataclass(cls, data)


def _log_dtanh(u: Tensor) -> Tensor:
    """``log(1 - tanh(u)^2)`` elementwise, stable for large ``|u|`` (as in the flow)."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


class GaussianChunkActor(nn.Module):
    """``pi(a | c)``: tanh-squashed diagonal Gaussian over normalised chunks ``[H, A]``."""

    def __init__(self, config: GaussianActorConfig) -> None:
        super().__init__()
        if not isinstance(config, GaussianActorConfig):
            raise ValueError(f"GaussianChunkActor needs a GaussianActorConfig, got {type(config).__name__}")
        self.config = config
        hid = config.hidden_dim
        self.context_norm = RMSNorm(config.context_dim, eps=1e-6)
        self.context_proj = nn.Identity() if config.context_dim == hid else nn.Linear(config.context_dim, hid)
        self.queries = nn.Parameter(torch.randn(config.horizon, hid) * 0.02)  # [H, hid], one per chunk step
        layer = nn.TransformerDecoderLayer(
            hid, config.num_heads, dim_feedforward=config.mlp_hidden_dim, dropout=config.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, config.num_layers, norm=nn.LayerNorm(hid))
        self.head_mean = nn.Linear(hid, config.action_dim)
        self.head_log_std = nn.Linear(hid, config.action_dim)
        for head in (self.head_mean, self.head_log_std):  # context-free N(0, std_init) at init
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # Offset so a zero head output maps to init_log_std through the sigmoid squashing.
        frac = (config.init_log_std - config.log_std_min) / (config.log_std_max - config.log_std_min)
        self._log_std_offset = math.log(frac / (1.0 - frac))

    # -- the distribution -------------------------------------------------------------------
    def distribution(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """``context [B, L, D]`` -> mean and log-std of the pre-tanh chunk ``u``, each ``[B, H, A]``."""
        self._check_context(context)
        cfg = self.config
        memory = self.context_proj(self.context_norm(context))  # [B, L, hid]
        queries = self.queries.unsqueeze(0).expand(context.shape[0], -1, -1)  # [B, H, hid]
        h = self.decoder(queries, memory)  # [B, H, hid]
        # bf16 training (mixed_precision): the distribution's parameters in float32.
        mean = full_precision(self.head_mean(h))
        squash = torch.sigmoid(full_precision(self.head_log_std(h)) + self._log_std_offset)
        log_std = cfg.log_std_min + (cfg.log_std_max - cfg.log_std_min) * squash
        return mean, log_std

    @staticmethod
    def _gaussian_log_prob(z: Tensor, log_std: Tensor) -> Tensor:
        """``log N(u; mu, std)`` summed over the chunk, from ``z = (u - mu) / std``: ``[..., H, A] -> [...]``."""
        return (-0.5 * z * z - log_std - 0.5 * _LOG_2PI).sum(dim=(-2, -1))

    # -- densities and sampling (ChunkFlow's interface) -----------------------------------------
    def log_prob(self, actions: Tensor, context: Tensor, add_noise: bool = False) -> Tensor:
        """Exact ``log pi(a | c)`` ``[B]`` of normalised chunks ``actions [B, H, A]``.

        Same conventions as :meth:`ChunkFlow.log_prob`: with ``add_noise`` in training mode the
        chunk is perturbed by ``N(0, noise_std^2)`` first; actions are clamped to
        ``[-1 + clamp_eps, 1 - clamp_eps]`` before ``atanh``.
        """
        self._check_chunk(actions, "actions", 3)
        self._check_context(context)
        if actions.shape[0] != context.shape[0]:
            raise ValueError(f"batch mismatch: actions {tuple(actions.shape)} vs context {tuple(context.shape)}")
        if self.training and add_noise and self.config.noise_std > 0:
            actions = actions + self.config.noise_std * torch.randn_like(actions)
        eps = self.config.clamp_eps
        actions = actions.clamp(-1.0 + eps, 1.0 - eps)
        u = torch.atanh(actions)
        mean, log_std = self.distribution(context)
        z = (u - mean) * torch.exp(-log_std)
        # p_a(a) = p_u(atanh a) |d atanh(a)/da| = p_u(u) / (1 - tanh(u)^2)
        return self._gaussian_log_prob(z, log_std) - _log_dtanh(u).sum(dim=(-2, -1))

    def sample(
        self,
        context: Tensor,
        num_samples: int,
        sigma: float = 0.7,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``N`` chunks per context: ``(actions [B, N, H, A], log_prob [B, N])``.

        ``u = mu + std * sigma * eps`` with ``eps ~ N(0, I)`` (reparameterised). As for the
        flow, ``sigma < 1`` tempers the base noise and ``log_prob`` is the density of the
        returned chunk under the *model* (what :meth:`log_prob` computes for it, unclamped).
        """
        self._check_context(context)
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be > 0, got {sigma}")
        cfg = self.config
        shape = (context.shape[0], int(num_samples), cfg.horizon, cfg.action_dim)
        eps = torch.randn(shape, generator=generator, device=context.device, dtype=context.dtype)
        mean, log_std = self.distribution(context)  # [B, H, A]
        mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)  # broadcast over N
        z = sigma * eps
        u = mean + torch.exp(log_std) * z
        log_prob = self._gaussian_log_prob(z, log_std) - _log_dtanh(u).sum(dim=(-2, -1))
        bound = 1.0 - cfg.clamp_eps
        return torch.tanh(u).clamp(-bound, bound), log_prob

    # -- helpers ------------------------------------------------------------------------------
    def set_dropout(self, p: float) -> None:
        """Change the decoder's dropout rate in place (imitation -> RL, G2; as ChunkFlow.set_dropout)."""
        self.config.dropout = set_dropout_rate(self, p)

    def _check_context(self, context: Tensor) -> None:
        if context.ndim != 3 or context.shape[-1] != self.config.context_dim or context.shape[1] < 1:
            raise ValueError(
                f"GaussianChunkActor context must be [B, L>=1, {self.config.context_dim}], got {tuple(context.shape)}"
            )

    def _check_chunk(self, x: Tensor, name: str, ndim: int) -> None:
        cfg = self.config
        if x.ndim != ndim or tuple(x.shape[-2:]) != (cfg.horizon, cfg.action_dim):
            raise ValueError(
                f"GaussianChunkActor {name} must be [B, {cfg.horizon}, {cfg.action_dim}], got {tuple(x.shape)}"
            )
