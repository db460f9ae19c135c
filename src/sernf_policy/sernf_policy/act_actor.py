"""ACT: the Action Chunking Transformer (Zhao et al. 2023), the paper's second imitation baseline.

Table I compares the normalizing-flow actor with ACT trained on the same data, encoders and
optimiser (appendix G3 a: chunk 20, style variable of 32 dimensions, KL weight 10, encoder and
decoder of width 512 / 8 heads / 3 layers / feed-forward 2048 / dropout 0.1, causal masking,
temporal aggregation with k = 0.01). ACT is a conditional VAE over action chunks:

* **CVAE encoder** (training only): a transformer over ``[CLS, state tokens, K action tokens]``
  - the state tokens are the low-dimensional observation tokens of the policy's own
  :class:`~sernf_policy.encoders.ObservationEncoder` (ACT's encoder sees joints, not images);
  the CLS output gives ``mu`` and ``log var`` of the style variable ``z`` (``latent_dim``);
* **decoder**: ``K`` learned queries (one per chunk step) run a transformer decoder with causal
  self-attention among the queries and cross-attention to the observation context tokens
  (images and state, from the same encoder) plus a ``z`` token; a linear head gives the chunk;
* **loss**: L1 reconstruction of the normalised chunk + ``kl_weight * KL(q(z | a, s) || N(0, I))``;
* **acting**: ``z = 0`` (the prior mean), so a prediction is deterministic. ACT conditions on no
  prefix: continuity across queries comes from temporal ensembling instead (below).

Chunk length and timing: ACT predicts ``K = chunk_len`` (20) actions, its own length, longer
than the policy's H. It is trained on the chunks the replay cuts with ``H = K`` at the same
decision steps (``a_{t+P} .. a_{t+P+K-1}`` from ``o_t``; the queued prefix ``a_t .. a_{t+P-1}``
is in the data but not in ACT's input), so every prediction starts P actions after its
observation, exactly as the flow's chunk does. Two ways to execute it:

* temporal ensembling (ACT's own, ``temporal_ensembling``): query every step and execute the
  exponentially weighted mean of every overlapping prediction of the current step
  (``sernf_sim.temporal_ensembling.TemporalEnsemble``, with the rollout's decision every step);
* chunked execution like the other actors: :meth:`sample` returns the first H actions of the
  prediction for :meth:`Policy.act_batch` (what the ROS policy node executes).

No likelihood is defined (the CVAE gives only a bound), so this actor has no ``log_prob`` and
acts by its single deterministic prediction (``selection: single``).

Dimension names: ``B`` batch, ``N`` samples per context, ``K`` ACT chunk length, ``H`` policy
chunk length, ``A`` action dim, ``L`` context tokens, ``S`` state tokens, ``D`` context width,
``d`` model width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .config_io import build_dataclass
from .dropout_rate import set_dropout_rate
from .mixed_precision import RMSNorm, full_precision

__all__ = ["ACTActorConfig", "ACTChunkActor"]


@dataclass
class ACTActorConfig:
    """Configuration of :class:`ACTChunkActor` (defaults: the paper's G3 a)."""

    #: A: action dimensions per step.
    action_dim: int
    #: H: the policy's chunk length; :meth:`ACTChunkActor.sample` returns the first H of the
    #: K predicted actions for chunked execution. Must be <= chunk_len.
    horizon: int
    #: D: width of the observation tokens.
    context_dim: int
    #: K: actions ACT predicts per query (G3 / Zhao et al.: 20).
    chunk_len: int = 20
    #: Dimensions of the style variable z (G3: 32).
    latent_dim: int = 32
    #: Model width d (G3: 512).
    hidden_dim: int = 512
    #: Attention heads; must divide hidden_dim (G3: 8).
    num_heads: int = 8
    #: Layers of the CVAE encoder (G3: 3).
    encoder_layers: int = 3
    #: Layers of the decoder (G3: "the same configuration", 3).
    decoder_layers: int = 3
    #: MLP width as a multiple of hidden_dim (G3: feed-forward 2048 = 4 x 512).
    mlp_ratio: float = 4.0
    #: Dropout in encoder and decoder (G3: 0.1; the IL stage sets its own rate via set_dropout).
    dropout: float = 0.1
    #: Weight of the KL term (G3 and Zhao et al.: 10).
    kl_weight: float = 10.0
    #: Causal self-attention among the chunk tokens (G3: causal masking in encoder and decoder).
    causal: bool = True
    #: Execute with temporal ensembling (query every step) when evaluated in simulation.
    temporal_ensembling: bool = True
    #: m of the ensembling weights exp(-m * i), i = 0 the oldest prediction (G3: k = 0.01).
    ensemble_m: float = 0.01

    def __post_init__(self) -> None:
        for name in ("action_dim", "horizon", "context_dim", "chunk_len", "latent_dim", "hidden_dim", "num_heads",
                     "encoder_layers", "decoder_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ACTActorConfig.{name} must be a positive int, got {value!r}")
        if self.horizon > self.chunk_len:
            raise ValueError(
                f"ACTActorConfig.chunk_len ({self.chunk_len}) must be >= horizon ({self.horizon}): chunked execution "
                "takes the first H of the K predicted actions"
            )
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"ACTActorConfig: hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        for name in ("mlp_ratio", "dropout", "kl_weight", "ensemble_m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"ACTActorConfig.{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if not (self.mlp_ratio > 0 and round(self.mlp_ratio * self.hidden_dim) >= 1):
            raise ValueError(f"ACTActorConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ACTActorConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.kl_weight < 0 or self.ensemble_m < 0:
            raise ValueError(f"ACTActorConfig.kl_weight and .ensemble_m must be >= 0, got {self.kl_weight}, "
                             f"{self.ensemble_m}")
        for name in ("causal", "temporal_ensembling"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ACTActorConfig.{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width of each layer's MLP."""
        return int(round(self.mlp_ratio * self.hidden_dim))

    @classmethod
    def from_dict(cls, data: Any) -> ACTActorConfig:
        """Rebuild from the plain dict written by ``config_io.to_jsonable``."""
        return build_dataclass(cls, data)


class ACTChunkActor(nn.Module):
    """CVAE over normalised K-action chunks (see the module doc)."""

    #: No exact likelihood: Policy.log_prob and "most likely" selection refuse this actor.
    has_likelihood = False

    def __init__(self, config: ACTActorConfig) -> None:
        super().__init__()
        if not isinstance(config, ACTActorConfig):
            raise ValueError(f"ACTChunkActor needs an ACTActorConfig, got {type(config).__name__}")
        self.config = config
        d, k = config.hidden_dim, config.chunk_len
        self.context_norm = RMSNorm(config.context_dim, eps=1e-6)
        self.context_proj = nn.Identity() if config.context_dim == d else nn.Linear(config.context_dim, d)

        def layer_kw() -> dict[str, Any]:
            return dict(d_model=d, nhead=config.num_heads, dim_feedforward=config.mlp_hidden_dim,
                        dropout=config.dropout, activation="gelu", batch_first=True, norm_first=True)

        # CVAE encoder: [CLS, state tokens, action tokens], each kind with its own type embedding.
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.action_in = nn.Linear(config.action_dim, d)
        self.action_pos = nn.Parameter(torch.randn(k, d) * 0.02)  # [K, d], shared by encoder inputs
        self.state_type = nn.Parameter(torch.randn(d) * 0.02)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_kw()), config.encoder_layers,
                                             norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.latent_head = nn.Linear(d, 2 * config.latent_dim)
        # Decoder: K queries, causal among themselves, cross-attending to [context, z].
        self.latent_in = nn.Linear(config.latent_dim, d)
        self.memory_type = nn.Parameter(torch.randn(2, d) * 0.02)  # 0: observation tokens, 1: z
        self.queries = nn.Parameter(torch.randn(k, d) * 0.02)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_kw()), config.decoder_layers,
                                             norm=nn.LayerNorm(d))
        self.head = nn.Linear(d, config.action_dim)
        causal = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)  # True = may not attend

    # -- the CVAE -------------------------------------------------------------------------------
    def posterior(self, actions: Tensor, state_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``q(z | a, s)``: mean and log-variance ``[B, latent_dim]`` of a chunk ``[B, K, A]``
        given the state tokens ``[B, S, D]`` (S may be 0)."""
        self._check_chunk(actions, "actions")
        b, s = actions.shape[0], state_tokens.shape[1]
        state = self.context_proj(self.context_norm(state_tokens)) + self.state_type if s else state_tokens.new_zeros(
            b, 0, self.config.hidden_dim)
        acts = self.action_in(actions.to(self.action_pos.dtype)) + self.action_pos
        tokens = torch.cat([self.cls.expand(b, -1, -1), state.to(acts.dtype), acts], dim=1)
        mask = None
        if self.config.causal:  # action token i may not see action tokens after it
            n = tokens.shape[1]
            mask = torch.zeros(n, n, dtype=torch.bool, device=tokens.device)
            mask[1 + s:, 1 + s:] = self.causal_mask
        out = self.encoder(tokens, mask=mask)
        mu, log_var = self.latent_head(out[:, 0]).chunk(2, dim=-1)
        return mu, log_var

    def decode(self, context: Tensor, z: Tensor) -> Tensor:
        """Chunk ``[B, K, A]`` from observation tokens ``context [B, L, D]`` and ``z [B, latent_dim]``."""
        self._check_context(context)
        memory = self.context_proj(self.context_norm(context)) + self.memory_type[0]
        z_token = (self.latent_in(z.to(memory.dtype)) + self.memory_type[1]).unsqueeze(1)
        memory = torch.cat([memory, z_token], dim=1)
        queries = self.queries.unsqueeze(0).expand(context.shape[0], -1, -1)
        mask = self.causal_mask if self.config.causal else None
        return self.head(self.decoder(queries, memory, tgt_mask=mask))

    def loss(self, actions: Tensor, context: Tensor, state_tokens: Tensor) -> tuple[Tensor, dict[str, float]]:
        """ACT's training loss (scalar) of normalised chunks ``actions [B, K, A]``: L1
        reconstruction with ``z`` drawn from the posterior, plus ``kl_weight`` x KL to N(0, I)
        (summed over z's dimensions, averaged over the batch, as in Zhao et al.)."""
        if actions.shape[0] != context.shape[0] or state_tokens.shape[0] != context.shape[0]:
            raise ValueError(f"batch mismatch: actions {tuple(actions.shape)}, context {tuple(context.shape)}, "
                             f"state tokens {tuple(state_tokens.shape)}")
        mu, log_var = self.posterior(actions, state_tokens)
        # bf16 training (mixed_precision): the latent, the KL and the L1 in float32.
        mu, log_var = full_precision(mu), full_precision(log_var)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        l1 = (full_precision(self.decode(context, z)) - actions).abs().mean()
        kl = (-0.5 * (1.0 + log_var - mu.pow(2) - log_var.exp())).sum(dim=-1).mean()
        loss = l1 + self.config.kl_weight * kl
        return loss, {"il/act_l1": l1.item(), "il/act_kl": kl.item()}

    # -- acting -----------------------------------------------------------------------------------
    def predict(self, context: Tensor) -> Tensor:
        """The whole prediction ``[B, K, A]`` at ``z = 0`` (the prior mean), clamped to ``[-1, 1]``."""
        self._check_context(context)
        z = context.new_zeros(context.shape[0], self.config.latent_dim)
        return self.decode(context, z).clamp(-1.0, 1.0)

    def sample(
        self,
        context: Tensor,
        num_samples: int,
        sigma: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The first H actions of :meth:`predict`, repeated for the N "samples" ``[B, N, H, A]``:
        ACT acts deterministically (``z = 0``), so ``sigma`` and ``generator`` do not enter."""
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be > 0, got {sigma}")
        chunk = self.predict(context)[:, : self.config.horizon]
        return chunk.unsqueeze(1).expand(-1, int(num_samples), -1, -1)

    # -- helpers ------------------------------------------------------------------------------
    def set_dropout(self, p: float) -> None:
        """Change the dropout rate in place (the IL stage's rate, as ChunkFlow.set_dropout)."""
        self.config.dropout = set_dropout_rate(self, p)

    def _check_context(self, context: Tensor) -> None:
        if context.ndim != 3 or context.shape[-1] != self.config.context_dim or context.shape[1] < 1:
            raise ValueError(
                f"ACTChunkActor context must be [B, L>=1, {self.config.context_dim}], got {tuple(context.shape)}"
            )

    def _check_chunk(self, x: Tensor, name: str) -> None:
        cfg = self.config
        if x.ndim != 3 or tuple(x.shape[-2:]) != (cfg.chunk_len, cfg.action_dim):
            raise ValueError(
                f"ACTChunkActor {name} must be [B, {cfg.chunk_len}, {cfg.action_dim}], got {tuple(x.shape)}"
            )
