"""Conditional normalizing flow over action chunks: the SERNF actor (paper §III-c, §IV-B, G1).

Bijection between a normalised action chunk ``a in (-1, 1)^{H x A}`` and a latent
``z in R^{H x A}``::

    a --atanh--> u = x_0 --coupling_1--> x_1 ... --coupling_K--> x_K = z ~ N(0, I)

``log pi(a | c) = log N(z; 0, I) + sum_k log|det dx_k/dx_{k-1}| + sum log|d atanh(a)/da|``
with ``d atanh(a)/da = 1 / (1 - a^2)`` (paper §IV-B: the elementwise ``tanh^{-1}`` gives the
bounded support; its Jacobian is part of the exact likelihood).

Affine coupling (RealNVP [13] as in NinA [50]): each layer partitions the chunk into a *kept*
part ``x1`` and a *transformed* part ``x2``; a conditioner ``g(x1, c)`` gives ``s, b`` and
``y2 = exp(tanh(s)) * x2 + b``, ``y1 = x1`` (the ``tanh`` bounds the per-layer scale to
``[1/e, e]`` for stable training). ``log|det| = sum tanh(s)``.

Partition (paper: "randomly partitioned into two equally sized subsets", fixed per layer):

* ``H >= 2``: over the H *action tokens* (time steps). Layers come in pairs: layer ``2j``
  draws a random permutation of the H tokens (from ``config.seed``) and keeps its first
  ``floor(H/2)``; layer ``2j+1`` keeps the complement. Pairing guarantees every action is
  transformed at least once every two layers, even for tiny K; for odd H the two halves differ
  by one token.
* ``H == 1``: a single token cannot be split, so the same scheme runs over the A action
  *dimensions* instead.
* ``H == A == 1``: nothing to keep; every layer is a context-conditioned affine map.

The partition is stored per layer as a persistent boolean buffer ``keep_mask [H, A]``, so
checkpoints carry it and a reloaded flow is the same bijection.

Conditioner (one pre-norm transformer block per layer, hidden 256, 8 heads, G1): the H token
positions enter as ``Linear(A -> hidden)(x * keep)``; positions with no kept entry carry a
learned *query* embedding instead of data, so they can read out ``s, b`` for the transformed
tokens without seeing them (invertibility: ``g`` depends on ``x1`` and ``c`` only).
Self-attention uses RoPE on each token's time index in the chunk; cross-attention reads the
context tokens (observation tokens + prefix-action tokens, ``[B, L, D]``); RMSNorm pre-norms;
SwiGLU MLP; a final RMSNorm; two heads ``Linear(hidden, 2 hidden) -> GELU -> Linear(2 hidden,
A)`` give ``s`` and ``b`` (G1: "final scale/shift heads use GELU"). The heads' last layers are
zero-initialised, so every coupling starts as the identity (stable start of imitation learning).

Parameter count vs. appendix G1 (``3,283,904 + 1,282 x A`` per layer): the action-dependent
part ``1,282 x A`` is reproduced exactly by the input projection (``256 A``) and the two GELU
heads of width 512 (``2 x 513 A``). The constant part is not pinned down by the paper (MLP
width, projections, biases are unspecified); with a SwiGLU width of ``4 x hidden`` and bias-free
attention ours is ``1,706,496 + 1,282 x A`` per layer (+ one shared 512-wide context RMSNorm),
about half the paper's constant. ``bench/model_size.py`` prints both.

Dimension names: ``B`` batch, ``N`` samples per context, ``H`` chunk length, ``A`` action dim,
``L`` context tokens, ``D`` context width, ``K`` coupling layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu_attention, cpu_dropout
from .acting_cache import ParameterKeyedCache, eager_acting
from .config_io import build_dataclass
from .fast_paths import fast_paths_enabled
from .mixed_precision import RMSNorm, full_precision

__all__ = ["ChunkFlow", "ChunkFlowConfig", "ContextKV", "select_context_kv"]

_LOG_2PI = math.log(2.0 * math.pi)

ContextKV = list[tuple[Tensor, Tensor]]
"""Every coupling's cross-attention keys and values of one context (:meth:`ChunkFlow.context_kv`)."""


def select_context_kv(context_kv: ContextKV, rows: Tensor) -> ContextKV:
    """The keys and values of the contexts ``rows`` (an index or a boolean mask over the batch),
    for a pass over those contexts only (``context[rows]``)."""
    return [(k[rows], v[rows]) for k, v in context_kv]


@dataclass
class ChunkFlowConfig:
    """Configuration of :class:`ChunkFlow` (defaults: paper §IV-E, G1)."""

    #: A: action dimensions per step.
    action_dim: int
    #: H: actions per chunk.
    horizon: int
    #: D: width of the context tokens the couplings cross-attend to.
    context_dim: int
    #: K: number of affine coupling layers (paper: 16).
    num_layers: int = 16
    #: Transformer width of each coupling's conditioner (paper: 256).
    hidden_dim: int = 256
    #: Attention heads in the conditioner (paper: 8); hidden_dim / num_heads must be even (RoPE).
    num_heads: int = 8
    #: Hidden width of the SwiGLU MLP as a multiple of hidden_dim (not given in the paper).
    mlp_ratio: float = 4.0
    #: Hidden width of the GELU s/b heads as a multiple of hidden_dim (2 reproduces G1's 1,282 A).
    head_ratio: int = 2
    #: Dropout in the conditioners (attention and residual branches). Paper G2: 0.5 for
    #: imitation (0.2 real), 0.1 for RL; switch at run time with ChunkFlow.set_dropout.
    dropout: float = 0.0
    #: sigma_noise of the Gaussian perturbation of normalised training actions (paper: 0.05
    #: sim, 0.01 real); used by log_prob(..., add_noise=True) in training mode only.
    noise_std: float = 0.05
    #: Seed of the fixed random token partitions (stored in the checkpoint as buffers).
    seed: int = 0
    #: Actions are clamped to [-1 + eps, 1 - eps] before atanh (and after tanh when sampling).
    clamp_eps: float = 1e-6
    #: Base of the rotary position embedding over the chunk's time index.
    rope_base: float = 10000.0
    #: The base distribution. 0: the paper's fixed ``N(0, I)`` (§IV-B). K >= 1: learned and
    #: context-conditioned, a mixture of K diagonal Gaussians whose weights, means and scales
    #: an MLP reads from the context (our departure, docs/results.md): it gives the context a
    #: direct path to where the chunk lies, and with K > 1 room for separate strategies (on
    #: the hand benchmark one component helped and more did not separate its two strategies).
    base_components: int = 0
    #: M: the number of conditional flows in a mixture ``p(a | c) = sum_m pi_m(c) p(a | c, m)``
    #: (1: one flow, the paper). The M flows share every weight; flow m sees one more context
    #: token, its own learned embedding, and the weights ``pi_m(c)`` come from the pooled context.
    #: Our departure for multimodal demonstrations (docs/results.md, hand task): one flow of
    #: affine couplings bridges two separate strategies with mass between them, where each
    #: component only has to fit one. Densities stay exact (log-sum-exp over the M flows), at M
    #: passes per likelihood and 2M per sample. Needs ``base_components <= 1``. On the hand
    #: benchmark the flows did not separate its two strategies (docs/results.md).
    components: int = 1

    def __post_init__(self) -> None:
        for name in ("action_dim", "horizon", "context_dim", "num_layers", "hidden_dim", "num_heads", "head_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ChunkFlowConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.base_components, bool) or not isinstance(self.base_components, int) or self.base_components < 0:
            raise ValueError(f"ChunkFlowConfig.base_components must be an int >= 0, got {self.base_components!r}")
        if isinstance(self.components, bool) or not isinstance(self.components, int) or self.components < 1:
            raise ValueError(f"ChunkFlowConfig.components must be an int >= 1, got {self.components!r}")
        if self.components > 1 and self.base_components > 1:
            raise ValueError(
                f"ChunkFlowConfig: a mixture of {self.components} flows needs base_components 0 or 1 "
                f"(got {self.base_components}): one component draw per candidate picks the flow"
            )
        if self.hidden_dim % self.num_heads or (self.hidden_dim // self.num_heads) % 2:
            raise ValueError(
                f"ChunkFlowConfig: hidden_dim ({self.hidden_dim}) / num_heads ({self.num_heads}) "
                "must be an even integer (RoPE rotates pairs of channels)"
            )
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool)):
            raise ValueError(f"ChunkFlowConfig.seed must be an int, got {self.seed!r}")
        self.mlp_ratio = float(self.mlp_ratio)
        self.dropout = float(self.dropout)
        self.noise_std = float(self.noise_std)
        self.clamp_eps = float(self.clamp_eps)
        self.rope_base = float(self.rope_base)
        if not (self.mlp_ratio > 0 and round(self.mlp_ratio * self.hidden_dim) >= 1):
            raise ValueError(f"ChunkFlowConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ChunkFlowConfig.dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0.0):
            raise ValueError(f"ChunkFlowConfig.noise_std must be >= 0, got {self.noise_std}")
        if not 0.0 < self.clamp_eps < 0.1:
            raise ValueError(f"ChunkFlowConfig.clamp_eps must be in (0, 0.1), got {self.clamp_eps}")
        if not self.rope_base > 1.0:
            raise ValueError(f"ChunkFlowConfig.rope_base must be > 1, got {self.rope_base}")

    @property
    def mlp_hidden_dim(self) -> int:
        """SwiGLU hidden width."""
        return int(round(self.mlp_ratio * self.hidden_dim))

    @classmethod
    def from_dict(cls, data: Any) -> ChunkFlowConfig:
        """Rebuild from the plain dict written by ``config_io.to_jsonable``."""
        return build_dataclass(cls, data)


def coupling_keep_masks(horizon: int, action_dim: int, num_layers: int, seed: int) -> list[Tensor]:
    """The fixed partitions: one boolean ``keep_mask [H, A]`` per layer (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    split_time = horizon >= 2
    size = horizon if split_time else action_dim
    masks = []
    perm = torch.arange(size)
    for k in range(num_layers):
        if k % 2 == 0:
            perm = torch.randperm(size, generator=gen)
        kept_idx = perm[: size // 2] if k % 2 == 0 else perm[size // 2 :]
        keep_1d = torch.zeros(size, dtype=torch.bool)
        keep_1d[kept_idx] = True
        if size == 1:  # H == A == 1: nothing can be kept
            keep_1d[:] = False
        if split_time:
            mask = keep_1d[:, None].expand(horizon, action_dim)
        else:
            mask = keep_1d[None, :].expand(horizon, action_dim)
        masks.append(mask.clone())
    return masks


def _rope_tables(h: int, hd: int, base: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``cos, sin [H, hd/2]`` of the rotary angles of token positions ``0..H-1``."""
    half = hd // 2
    inv_freq = base ** (-torch.arange(half, device=device, dtype=torch.float64) / half)
    angles = torch.arange(h, device=device, dtype=torch.float64)[:, None] * inv_freq  # [H, hd/2]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rope(x: Tensor, base: float, tables: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Rotary embedding over the token axis (-2) of ``x [..., H, hd]`` (rotate-half form).

    ``tables``: precomputed ``cos, sin [H, hd/2]`` for the rows of ``x`` (the optimised path
    passes the rows of the tokens it computes); computed here when None.
    """
    half = x.shape[-1] // 2
    cos, sin = tables if tables is not None else _rope_tables(x.shape[-2], x.shape[-1], base, x.device, x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class _SwiGLU(nn.Module):
    """``W_down(silu(W_gate x) * W_up x)`` (bias-free, LLaMA style)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class _Conditioner(nn.Module):
    """g(x1, c) -> (s, b): one pre-norm transformer block over the H token positions.

    Works on ``x [B, N, H, A]`` (N samples share one context) and per-layer context keys /
    values computed once from ``context [B, L, D]`` and broadcast over N.
    """

    def __init__(self, cfg: ChunkFlowConfig) -> None:
        super().__init__()
        hid, nh = cfg.hidden_dim, cfg.num_heads
        self.num_heads, self.head_dim, self.rope_base = nh, hid // nh, cfg.rope_base
        self.dropout_p = cfg.dropout
        self.in_proj = nn.Linear(cfg.action_dim, hid)
        # Stands in for a token whose actions are being transformed (no data from it enters g).
        self.query_embed = nn.Parameter(torch.randn(hid) * 0.02)
        self.norm_self = RMSNorm(hid, eps=1e-6)
        self.qkv = nn.Linear(hid, 3 * hid, bias=False)
        self.self_out = nn.Linear(hid, hid, bias=False)
        self.norm_cross = RMSNorm(hid, eps=1e-6)
        self.cross_q = nn.Linear(hid, hid, bias=False)
        self.cross_kv = nn.Linear(cfg.context_dim, 2 * hid, bias=False)
        self.cross_out = nn.Linear(hid, hid, bias=False)
        self.norm_mlp = RMSNorm(hid, eps=1e-6)
        self.mlp = _SwiGLU(hid, cfg.mlp_hidden_dim)
        self.norm_out = RMSNorm(hid, eps=1e-6)
        head_hidden = cfg.head_ratio * hid
        self.head_s = nn.Sequential(
            nn.Linear(hid, head_hidden), nn.GELU(), nn.Linear(head_hidden, cfg.action_dim)
        )
        self.head_b = nn.Sequential(
            nn.Linear(hid, head_hidden), nn.GELU(), nn.Linear(head_hidden, cfg.action_dim)
        )
        self.resid_drop = nn.Dropout(cfg.dropout)
        for head in (self.head_s, self.head_b):  # identity coupling at init
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        # Acting-time constants of the optimised path (acting_cache): the query-embedding
        # rows' q / k / v, and the two heads' first layers as one matmul.
        self._query_rows_cache: ParameterKeyedCache[tuple[Tensor, Tensor, Tensor]] = ParameterKeyedCache()
        self._heads_in_cache: ParameterKeyedCache[tuple[Tensor, Tensor]] = ParameterKeyedCache()

    def _heads(self, t: Tensor) -> Tensor:
        """``[..., T, hid]`` -> ``[..., heads, T, hd]``."""
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """``context [B, L, D]`` -> keys, values ``[B, 1, heads, L, hd]`` (broadcast over N)."""
        k, v = self.cross_kv(context).chunk(2, dim=-1)
        return self._heads(k).unsqueeze(1), self._heads(v).unsqueeze(1)

    def _residual(self, t: Tensor) -> Tensor:
        """The residual branch's dropout (``t`` itself when it cannot drop anything), with the
        cheaper CPU mask (:mod:`cpu_dropout`; the reference :meth:`forward` keeps torch's)."""
        return cpu_dropout.dropout(t, self.dropout_p, self.training)

    def _query_rows(self, plan: _CouplingPlan) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v ``[heads, R, hd]`` (RoPE applied to q and k) of the R rows that enter as the
        query embedding: they depend on the weights alone, so acting computes them once."""
        def build() -> tuple[Tensor, Tensor, Tensor]:
            hid, r = self.num_heads * self.head_dim, plan.rows.numel()
            q, k, v = F.linear(self.norm_self(self.query_embed), self.qkv.weight).chunk(3)  # [hid] each
            return (_rope(self._heads(q.expand(r, hid)), self.rope_base, plan.rope_rows),
                    _rope(self._heads(k.expand(r, hid)), self.rope_base, plan.rope_rows),
                    self._heads(v.expand(r, hid)))

        params = (self.query_embed, self.norm_self.weight, self.qkv.weight, plan.rope_rows[0])
        return self._query_rows_cache.get(params, build)

    def _scale_shift_heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``head_s(h), head_b(h)``; while acting, both heads' first layers run as one matmul
        and one GELU on their concatenated weights (same numbers, half the operators)."""
        if not eager_acting():
            return self.head_s(h), self.head_b(h)
        first_s, first_b = self.head_s[0], self.head_b[0]
        w, b = self._heads_in_cache.get(
            (first_s.weight, first_s.bias, first_b.weight, first_b.bias),
            lambda: (torch.cat([first_s.weight, first_b.weight]), torch.cat([first_s.bias, first_b.bias])),
        )
        hidden_s, hidden_b = F.gelu(F.linear(h, w, b)).split(first_s.out_features, dim=-1)
        return self.head_s[-1](hidden_s), self.head_b[-1](hidden_b)

    def forward_rows(
        self, x: Tensor, plan: _CouplingPlan, ctx_kv: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Optimised :meth:`forward`: ``s, b [B, N, R, A]`` of the R rows ``plan.rows`` only.

        The s / b of a token whose actions are all kept are multiplied by zero by the coupling,
        and after self-attention every sub-layer works row by row (cross-attention reads only
        the context), so only the transformed rows need their queries, attention outputs, MLP
        and heads; all H rows still give keys and values. For the time partition (H >= 2) that
        is half the rows, which halves the conditioner's arithmetic. While acting,
        cross-attention runs the N samples' queries as one sequence against their shared
        context keys. Same numbers as :meth:`forward` up to float rounding.
        """
        b_, n_, _, _ = x.shape
        hid = self.num_heads * self.head_dim
        p = self.dropout_p if self.training else 0.0
        w = self.qkv.weight  # [3 hid, hid]: q, k, v stacked
        if plan.rows_are_queries:
            # Time partition: every transformed row enters as the query embedding, so its
            # q / k / v are the same for every sample (_query_rows); only the kept rows'
            # keys / values depend on the data. Attention does not depend on the order of its
            # keys (RoPE carries the positions), so kept and query keys are simply concatenated.
            const_q, const_k, const_v = self._query_rows(plan)
            lead = (b_, n_, *const_q.shape)
            q, k, v = const_q.expand(lead), const_k.expand(lead), const_v.expand(lead)
            if plan.kept.numel():
                kept_k, kept_v = F.linear(self.norm_self(self.in_proj(x.index_select(-2, plan.kept))), w[hid:]).chunk(2, -1)
                k = torch.cat([_rope(self._heads(kept_k), self.rope_base, plan.rope_kept), k], dim=-2)
                v = torch.cat([self._heads(kept_v), v], dim=-2)
            h = self.query_embed
        else:
            h = torch.where(plan.is_query, self.query_embed, self.in_proj(x * plan.keep_f))  # [B,N,H,hid]
            normed = self.norm_self(h)
            k, v = F.linear(normed, w[hid:]).chunk(2, dim=-1)  # all H rows
            h = h.index_select(-2, plan.rows)  # [B, N, R, hid]
            q = _rope(self._heads(F.linear(normed.index_select(-2, plan.rows), w[:hid])), self.rope_base, plan.rope_rows)
            k = _rope(self._heads(k), self.rope_base, plan.rope_all)
            v = self._heads(v)
        att = cpu_attention.attention(q, k, v, dropout_p=p)  # [B, N, heads, R, hd]
        h = h + self._residual(self.self_out(att.transpose(-3, -2).flatten(-2)))

        ck, cv = ctx_kv  # [B, 1, heads, L, hd]
        if p == 0.0 and (torch.compiler.is_compiling() or torch.is_inference_mode_enabled()):
            # Acting (and compiled code without dropout): the N samples' queries as one sequence
            # against their shared context keys (one attention of N R query rows per head
            # instead of N attentions of R rows); it has no dropout, so compiled training with
            # dropout takes the per-sample layout below, as eager training does. Eager training
            # keeps that layout always, and with it the order in which attention dropout draws
            # its masks, so training runs reproduce earlier ones.
            rows = plan.rows.numel()
            q = self.cross_q(self.norm_cross(h)).reshape(b_, n_ * rows, self.num_heads, self.head_dim).transpose(1, 2)
            att = F.scaled_dot_product_attention(q, ck.squeeze(1), cv.squeeze(1))  # [B, heads, N R, hd]
            att = att.transpose(1, 2).reshape(b_, n_, rows, hid)
        else:
            q = self._heads(self.cross_q(self.norm_cross(h)))
            shape = (b_, n_, *ck.shape[2:])
            att = cpu_attention.attention(q, ck.expand(shape), cv.expand(shape), dropout_p=p)
            att = att.transpose(-3, -2).flatten(-2)
        h = h + self._residual(self.cross_out(att))

        h = h + self._residual(self.mlp(self.norm_mlp(h)))
        return self._scale_shift_heads(self.norm_out(h))

    def forward(
        self, x: Tensor, keep: Tensor, ctx_kv: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Reference implementation: ``s, b [B, N, H, A]`` (unmasked) of every row.

        ``x [B, N, H, A]``; ``keep [H, A]`` bool.
        """
        b_, n_, h_, _ = x.shape
        keep_f = keep.to(x.dtype)
        is_query = (~keep.any(-1)).to(x.dtype)[:, None]  # [H, 1]
        h = self.in_proj(x * keep_f) * (1 - is_query) + is_query * self.query_embed  # [B,N,H,hid]
        p = self.dropout_p if self.training else 0.0

        q, k, v = self.qkv(self.norm_self(h)).chunk(3, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # [B, N, heads, H, hd]
        q, k = _rope(q, self.rope_base), _rope(k, self.rope_base)
        att = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        h = h + self.resid_drop(self.self_out(att.transpose(-3, -2).flatten(-2)))

        q = self._heads(self.cross_q(self.norm_cross(h)))  # [B, N, heads, H, hd]
        ck, cv = ctx_kv
        shape = (b_, n_, *ck.shape[2:])
        att = F.scaled_dot_product_attention(q, ck.expand(shape), cv.expand(shape), dropout_p=p)
        h = h + self.resid_drop(self.cross_out(att.transpose(-3, -2).flatten(-2)))

        h = h + self.resid_drop(self.mlp(self.norm_mlp(h)))
        h = self.norm_out(h)
        return self.head_s(h), self.head_b(h)


class _AffineCoupling(nn.Module):
    """``y = x * exp(tanh(s) * t) + b * t`` with ``t = 1 - keep`` and ``(s, b) = g(x * keep, c)``."""

    def __init__(self, cfg: ChunkFlowConfig, keep_mask: Tensor) -> None:
        super().__init__()
        if keep_mask.shape != (cfg.horizon, cfg.action_dim) or keep_mask.dtype != torch.bool:
            raise ValueError(f"keep_mask must be bool [{cfg.horizon}, {cfg.action_dim}]")
        self.register_buffer("keep_mask", keep_mask.clone())  # [H, A], persistent
        self.conditioner = _Conditioner(cfg)
        self._plan: _CouplingPlan | None = None
        # A checkpoint may bring another partition: rebuild the plan from the loaded mask.
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_plan", None))

    def plan(self, like: Tensor) -> _CouplingPlan:
        """The index tensors of the optimised path for this layer's partition (cached)."""
        plan = self._plan
        if plan is None or plan.keep_f.device != like.device or plan.keep_f.dtype != like.dtype:
            # Plain tensors even when first called under inference_mode (acting), since the
            # cached plan is later used in training, where inference tensors are refused.
            with torch.inference_mode(False), torch.no_grad():
                plan = self._plan = _CouplingPlan.build(self.keep_mask, self.conditioner, like)
        return plan

    def _scale_shift(self, kept: Tensor, ctx_kv: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        s, b = self.conditioner(kept, self.keep_mask, ctx_kv)
        s, b = full_precision(s), full_precision(b)  # bf16 training: the coupling runs in float32
        trans = (~self.keep_mask).to(kept.dtype)
        return torch.tanh(s) * trans, b * trans  # log-scale and shift, zero on kept entries

    def forward(self, x: Tensor, ctx_kv: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Data direction ``x -> y``; returns ``y [B,N,H,A]``, ``log|det dy/dx| [B,N]``."""
        if fast_paths_enabled():
            return self._apply_rows(x, ctx_kv, inverse=False)
        log_s, shift = self._scale_shift(x, ctx_kv)
        return x * torch.exp(log_s) + shift, log_s.sum(dim=(-2, -1))

    def inverse(self, y: Tensor, ctx_kv: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Latent direction ``y -> x``; returns ``x``, ``log|det dx/dy| [B,N]``."""
        if fast_paths_enabled():
            return self._apply_rows(y, ctx_kv, inverse=True)
        log_s, shift = self._scale_shift(y, ctx_kv)  # kept entries of y equal those of x
        return (y - shift) * torch.exp(-log_s), -log_s.sum(dim=(-2, -1))

    def _apply_rows(self, x: Tensor, ctx_kv: tuple[Tensor, Tensor], inverse: bool) -> tuple[Tensor, Tensor]:
        """Optimised coupling: the conditioner computes the transformed rows only, which are
        updated and written back into ``x`` (kept entries pass through untouched)."""
        plan = self.plan(x)
        s, b = self.conditioner.forward_rows(x, plan, ctx_kv)  # [B, N, R, A]
        # bf16 training (mixed_precision): the coupling and its log-determinant in float32.
        log_s, shift = torch.tanh(full_precision(s)), full_precision(b)
        if not plan.rows_fully_transformed:
            log_s, shift = log_s * plan.trans_f, shift * plan.trans_f
        rows = x.index_select(-2, plan.rows)
        if inverse:
            new_rows, logdet = (rows - shift) * torch.exp(-log_s), -log_s.sum(dim=(-2, -1))
        else:
            new_rows, logdet = rows * torch.exp(log_s) + shift, log_s.sum(dim=(-2, -1))
        if plan.all_rows:
            return new_rows, logdet
        return x.index_copy(-2, plan.rows, new_rows), logdet


@dataclass
class _CouplingPlan:
    """Per-layer constants of the optimised coupling (derived from ``keep_mask``)."""

    #: Indices of the rows (time steps) with at least one transformed entry ``[R]``.
    rows: Tensor
    #: True when every row is transformed (partition over action dims, H == 1).
    all_rows: bool
    #: ``keep_mask`` as 0/1 floats ``[H, A]`` and the transformed entries of the rows ``[R, A]``.
    keep_f: Tensor
    trans_f: Tensor
    #: True when every entry of the computed rows is transformed (``trans_f`` all ones).
    rows_fully_transformed: bool
    #: Rows that enter the conditioner as a query embedding (no kept entry) ``[H, 1]`` bool.
    is_query: Tensor
    #: Indices of the fully kept rows ``[H - R]``, and whether every computed row is a query
    #: row (nothing kept in it: the time partition, H >= 2) and every other row fully kept.
    kept: Tensor
    rows_are_queries: bool
    #: RoPE ``cos, sin`` for all H rows, for the R computed rows and for the kept rows.
    rope_all: tuple[Tensor, Tensor]
    rope_rows: tuple[Tensor, Tensor]
    rope_kept: tuple[Tensor, Tensor]

    @classmethod
    def build(cls, keep_mask: Tensor, conditioner: _Conditioner, like: Tensor) -> _CouplingPlan:
        keep = keep_mask.to(like.device)
        query_rows = ~keep.any(-1)
        rows = torch.nonzero((~keep).any(-1)).flatten()
        kept = torch.nonzero(keep.all(-1)).flatten()
        cos, sin = _rope_tables(keep.shape[0], conditioner.head_dim, conditioner.rope_base, like.device, like.dtype)
        return cls(
            rows=rows, all_rows=rows.numel() == keep.shape[0], keep_f=keep.to(like.dtype),
            trans_f=(~keep).to(like.dtype).index_select(0, rows), is_query=query_rows[:, None],
            rows_fully_transformed=bool((~keep).index_select(0, rows).all()),
            kept=kept, rows_are_queries=bool(query_rows.index_select(0, rows).all()) and rows.numel() + kept.numel() == keep.shape[0],
            rope_all=(cos, sin), rope_rows=(cos.index_select(0, rows), sin.index_select(0, rows)),
            rope_kept=(cos.index_select(0, kept), sin.index_select(0, kept)),
        )


#: Bound on the mixture components' log standard deviations (``|log s| <= 3`` through a tanh):
#: keeps the likelihood finite when a component shrinks onto a few demonstrations.
_MIXTURE_LOG_STD_BOUND = 3.0


def _inverse_cdf(log_w: Tensor, u: Tensor) -> Tensor:
    """The component index ``[B, N]`` that uniforms ``u [B, N]`` pick from weights ``log_w [B, K]``."""
    cdf = torch.cumsum(log_w.exp(), dim=-1)
    return torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).clamp(max=cdf.shape[-1] - 1)


class _MixtureBase(nn.Module):
    """Context-conditioned mixture of K diagonal Gaussians over the latent ``z [H, A]``
    (``ChunkFlowConfig.base_components >= 1``; not in the paper, see the config field).

    The normalised context tokens are mean-pooled and mapped by a one-hidden-layer MLP to the
    mixture logits ``[K]`` and each component's mean and log standard deviation ``[K, H, A]``.
    Every head starts at zero (equal weights, unit scales) except the means' bias, a fixed draw
    from ``config.seed``: components that start identical get identical gradients and never
    separate. With the couplings starting as the identity, the components start as K blobs in
    the pre-tanh action space, which the likelihood then moves and shapes.
    """

    def __init__(self, cfg: ChunkFlowConfig) -> None:
        super().__init__()
        k, h, a = cfg.base_components, cfg.horizon, cfg.action_dim
        self.shape = (k, h, a)
        self.trunk = nn.Sequential(nn.Linear(cfg.context_dim, cfg.hidden_dim), nn.GELU())
        self.logits = nn.Linear(cfg.hidden_dim, k)
        self.mean = nn.Linear(cfg.hidden_dim, k * h * a)
        self.log_std = nn.Linear(cfg.hidden_dim, k * h * a)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        with torch.no_grad():
            for head in (self.logits, self.mean, self.log_std):
                head.weight.zero_()
                head.bias.zero_()
            self.mean.bias.copy_(0.5 * torch.randn(k * h * a, generator=gen))

    def forward(self, ctx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised context ``[B, L, D]`` -> log weights ``[B, K]``, means and log standard
        deviations ``[B, K, H, A]``."""
        feat = self.trunk(ctx.mean(dim=1))
        shape = (ctx.shape[0], *self.shape)
        log_std = full_precision(self.log_std(feat)).view(shape)  # bf16 training: densities in float32
        log_std = _MIXTURE_LOG_STD_BOUND * torch.tanh(log_std / _MIXTURE_LOG_STD_BOUND)
        return (torch.log_softmax(full_precision(self.logits(feat)), dim=-1),
                full_precision(self.mean(feat)).view(shape), log_std)

    @staticmethod
    def log_prob(z: Tensor, log_w: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
        """``log sum_k w_k N(z; mean_k, diag s_k^2)``: ``z [B, N, H, A] -> [B, N]``."""
        d = z.shape[-1] * z.shape[-2]
        diff = (z[:, :, None] - mean[:, None]) * torch.exp(-log_std)[:, None]  # [B, N, K, H, A]
        per_component = -0.5 * (diff * diff).sum(dim=(-2, -1)) - log_std.sum(dim=(-2, -1))[:, None]
        return torch.logsumexp(log_w[:, None] + per_component, dim=-1) - 0.5 * d * _LOG_2PI

    @staticmethod
    def latent(eps: Tensor, component_u: Tensor, sigma: float, log_w: Tensor, mean: Tensor,
               log_std: Tensor) -> Tensor:
        """``z = mean_k + sigma s_k eps`` with ``k`` drawn from the weights by the uniforms
        ``component_u [B, N]`` (inverse CDF); ``eps [B, N, H, A]``. ``sigma < 1`` tempers each
        component around its mean, as ``sigma`` tempers ``N(0, I)`` for K = 1."""
        k = _inverse_cdf(log_w, component_u)
        index = k[..., None, None].expand(-1, -1, *eps.shape[-2:])  # [B, N, H, A]
        return mean.gather(1, index) + sigma * torch.exp(log_std.gather(1, index)) * eps


class ChunkFlow(nn.Module):
    """Conditional normalizing flow ``pi(a | c)`` over normalised action chunks ``[H, A]``."""

    def __init__(self, config: ChunkFlowConfig) -> None:
        super().__init__()
        if not isinstance(config, ChunkFlowConfig):
            raise ValueError(f"ChunkFlow needs a ChunkFlowConfig, got {type(config).__name__}")
        self.config = config
        # One shared norm of the incoming context tokens (encoders produce tokens of very
        # different scales: ResNet features, projected low-dim values, prefix embeddings).
        self.context_norm = RMSNorm(config.context_dim, eps=1e-6)
        masks = coupling_keep_masks(config.horizon, config.action_dim, config.num_layers, config.seed)
        self.layers = nn.ModuleList(_AffineCoupling(config, m) for m in masks)
        self.base = _MixtureBase(config) if config.base_components else None
        self.component_tokens: nn.Parameter | None = None
        self.component_logits: nn.Linear | None = None
        if config.components > 1:
            # Distinct unit-scale tokens from the config's seed: flows that start identical
            # would get identical gradients and never separate. The weights start equal.
            gen = torch.Generator().manual_seed(config.seed + 2)
            self.component_tokens = nn.Parameter(torch.randn(config.components, config.context_dim, generator=gen))
            self.component_logits = nn.Linear(config.context_dim, config.components)
            with torch.no_grad():
                self.component_logits.weight.zero_()
                self.component_logits.bias.zero_()
        self._compiled_inverse: Any = None

    def compile_for_acting(self, **compile_kwargs: Any) -> None:
        """Opt in to ``torch.compile`` (inductor) of the latent -> chunk couplings, used only
        when acting (inference mode, optimised paths); training and the reference paths stay
        eager. The first call per input shape compiles (minutes on a small CPU; see
        docs/performance.md for what it gains); shapes are static (``dynamic=False``) unless
        ``compile_kwargs`` say otherwise. Rebuild after loading another partition."""
        like = self.context_norm.weight
        for layer in self.layers:  # build the cached index plans eagerly (no graph breaks on them)
            layer.plan(like)
        self._compiled_inverse = torch.compile(self._couplings_inverse, **{"dynamic": False, **compile_kwargs})

    # -- helpers ------------------------------------------------------------------------------
    def set_dropout(self, p: float) -> None:
        """Change the conditioners' dropout rate in place (imitation 0.5 -> RL 0.1, G2)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.config.dropout = float(p)
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = float(p)
            if isinstance(module, _Conditioner):
                module.dropout_p = float(p)

    def _check_context(self, context: Tensor) -> None:
        if context.ndim != 3 or context.shape[-1] != self.config.context_dim or context.shape[1] < 1:
            raise ValueError(
                f"ChunkFlow context must be [B, L>=1, {self.config.context_dim}], got {tuple(context.shape)}"
            )

    def _check_chunk(self, x: Tensor, name: str, ndim: int) -> None:
        cfg = self.config
        if x.ndim != ndim or tuple(x.shape[-2:]) != (cfg.horizon, cfg.action_dim):
            lead = "B, " if ndim == 3 else "B, N, "
            raise ValueError(
                f"ChunkFlow {name} must be [{lead}{cfg.horizon}, {cfg.action_dim}], got {tuple(x.shape)}"
            )

    def _context_kv(self, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        ctx = self.context_norm(context)
        return [layer.conditioner.context_kv(ctx) for layer in self.layers]

    def context_kv(self, context: Tensor) -> ContextKV:
        """Every coupling's cross-attention keys and values of ``context [B, L, D]``.

        Two passes over one context can share them: give the result as ``context_kv`` to
        :meth:`sample` and :meth:`log_prob` (rows of it: :func:`select_context_kv`). The RL
        actor's loss samples chunks and scores the data chunks on the same context; sharing
        computes the projection, and its backward, once instead of twice (the same numbers:
        the keys and values do not depend on the pass). One flow only (``components`` 1): a
        mixture's flows attend to per-flow contexts.
        """
        self._check_context(context)
        if self.config.components > 1:
            raise ValueError(f"ChunkFlow.context_kv: a mixture of {self.config.components} flows attends to "
                             "per-flow contexts; call sample / log_prob without context_kv")
        return self._context_kv(context)

    def _kv_for(self, context: Tensor, context_kv: ContextKV | None) -> list[tuple[Tensor, Tensor]]:
        """``context_kv`` after checking that it belongs to ``context``, or the keys and values
        computed from it."""
        if context_kv is None:
            return self._context_kv(context)
        if self.config.components > 1:
            raise ValueError("context_kv is for one flow (components 1), not a mixture of flows")
        if len(context_kv) != len(self.layers) or any(
            k.shape[0] != context.shape[0] or v.shape[0] != context.shape[0] for k, v in context_kv
        ):
            raise ValueError(f"context_kv must hold {len(self.layers)} (keys, values) pairs for a batch of "
                             f"{context.shape[0]} contexts (from ChunkFlow.context_kv)")
        return list(context_kv)

    def _couplings_forward(self, x: Tensor, context: Tensor,
                           context_kv: ContextKV | None = None) -> tuple[Tensor, Tensor]:
        # x [B, N, H, A] (pre-tanh space) -> z, log|det dz/dx| [B, N]
        kvs = self._kv_for(context, context_kv)
        logdet = x.new_zeros(x.shape[:2])
        for layer, kv in zip(self.layers, kvs, strict=True):
            x, ld = layer(x, kv)
            logdet = logdet + ld
        return x, logdet

    def _couplings_inverse(self, z: Tensor, context: Tensor,
                           context_kv: ContextKV | None = None) -> tuple[Tensor, Tensor]:
        # z [B, N, H, A] -> x (pre-tanh space), log|det dx/dz| [B, N]
        kvs = self._kv_for(context, context_kv)
        logdet = z.new_zeros(z.shape[:2])
        for layer, kv in zip(reversed(self.layers), reversed(kvs), strict=True):
            z, ld = layer.inverse(z, kv)
            logdet = logdet + ld
        return z, logdet

    def base_log_prob(self, z: Tensor, context: Tensor) -> Tensor:
        """The base density summed over the chunk: ``z [B, H, A] -> [B]`` or
        ``[B, N, H, A] -> [B, N]``; ``log N(z; 0, I)``, or the mixture's for ``context [B, L, D]``."""
        if self.base is None:
            d = z.shape[-1] * z.shape[-2]
            return -0.5 * (z * z).sum(dim=(-2, -1)) - 0.5 * d * _LOG_2PI
        squeeze = z.ndim == 3
        log_prob = self.base.log_prob(z.unsqueeze(1) if squeeze else z, *self.base(self.context_norm(context)))
        return log_prob.squeeze(1) if squeeze else log_prob

    @staticmethod
    def _log_dtanh(u: Tensor) -> Tensor:
        """``log(1 - tanh(u)^2)`` elementwise, stable for large ``|u|``."""
        return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))

    # -- the bijection (tanh / atanh included) ------------------------------------------------
    def _refuse_mixture(self, what: str) -> None:
        if self.config.components > 1:
            raise ValueError(f"ChunkFlow.{what}: a mixture of {self.config.components} flows is no single "
                             "bijection; use log_prob / sample")

    def forward_transform(self, actions: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Actions -> latent, *including* the elementwise ``atanh`` (one flow: ``components`` 1).

        ``actions [B, H, A]`` or ``[B, N, H, A]`` (N chunks per context ``[B, L, D]``, which
        share its keys and values) must lie strictly inside (-1, 1) (no clamping here: this is
        the pure bijection; :meth:`log_prob` clamps). Returns ``z`` of the same shape and
        ``log|det dz/da|`` ``[B]`` / ``[B, N]`` (couplings + ``atanh``).
        """
        self._refuse_mixture("forward_transform")
        return self._forward_transform(actions, context)

    def _forward_transform(self, actions: Tensor, context: Tensor,
                           context_kv: ContextKV | None = None) -> tuple[Tensor, Tensor]:
        squeeze = actions.ndim == 3
        self._check_chunk(actions, "actions", 3 if squeeze else 4)
        self._check_context(context)
        if actions.shape[0] != context.shape[0]:
            raise ValueError(f"batch mismatch: actions {tuple(actions.shape)} vs context {tuple(context.shape)}")
        u = torch.atanh(actions.unsqueeze(1) if squeeze else actions)
        z, logdet = self._couplings_forward(u, context, context_kv)
        logdet = logdet - self._log_dtanh(u).sum(dim=(-2, -1))  # atanh: log 1/(1-a^2)
        return (z.squeeze(1), logdet.squeeze(1)) if squeeze else (z, logdet)

    def inverse_transform(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Latent -> actions, *including* the final ``tanh`` (one flow: ``components`` 1).

        ``z [B, H, A]`` or ``[B, N, H, A]`` (N latents per context ``[B, L, D]``). Returns
        actions of the same shape (in (-1, 1), unclamped) and ``log|det da/dz|`` ``[B]`` /
        ``[B, N]``.
        """
        self._refuse_mixture("inverse_transform")
        return self._inverse_transform(z, context)

    def _inverse_transform(self, z: Tensor, context: Tensor,
                           context_kv: ContextKV | None = None) -> tuple[Tensor, Tensor]:
        squeeze = z.ndim == 3
        self._check_chunk(z, "z", 3 if squeeze else 4)
        self._check_context(context)
        zz = z.unsqueeze(1) if squeeze else z
        if zz.shape[0] != context.shape[0]:
            raise ValueError(f"batch mismatch: z {tuple(z.shape)} vs context {tuple(context.shape)}")
        compiled = self._compiled_inverse
        if compiled is not None and context_kv is None and torch.is_inference_mode_enabled() and fast_paths_enabled():
            u, logdet = compiled(zz, context)
        else:
            u, logdet = self._couplings_inverse(zz, context, context_kv)
        a = torch.tanh(u)
        logdet = logdet + self._log_dtanh(u).sum(dim=(-2, -1))
        return (a.squeeze(1), logdet.squeeze(1)) if squeeze else (a, logdet)

    # -- densities and sampling ---------------------------------------------------------------
    def log_prob(self, actions: Tensor, context: Tensor, add_noise: bool = False,
                 context_kv: ContextKV | None = None) -> Tensor:
        """Exact ``log pi(a | c)`` ``[B]`` of normalised chunks ``actions [B, H, A]``.

        With ``add_noise`` *and* in training mode, actions are first perturbed by
        ``N(0, noise_std^2)`` (paper §IV-B: crucial for stable action modelling); the result is
        then the density of the perturbed chunk. Actions are clamped to
        ``[-1 + clamp_eps, 1 - clamp_eps]`` before ``atanh``. ``context_kv``: the context's
        keys and values from :meth:`context_kv`, when another pass shares them.
        """
        self._check_chunk(actions, "actions", 3)
        self._check_context(context)
        if actions.shape[0] != context.shape[0]:
            raise ValueError(f"batch mismatch: actions {tuple(actions.shape)} vs context {tuple(context.shape)}")
        return self.clamped_log_prob(self._training_chunk(actions, add_noise), context, context_kv)

    def _training_chunk(self, actions: Tensor, add_noise: bool) -> Tensor:
        """:meth:`log_prob`'s input: perturbed by sigma_noise when training, then clamped."""
        if self.training and add_noise and self.config.noise_std > 0:
            actions = actions + self.config.noise_std * torch.randn_like(actions)
        eps = self.config.clamp_eps
        return actions.clamp(-1.0 + eps, 1.0 - eps)

    def component_log_likelihoods(self, actions: Tensor, context: Tensor,
                                  add_noise: bool = False) -> tuple[Tensor, Tensor]:
        """A mixture of flows' parts for chunks ``actions [B, H, A]``: ``(log pi_m(c) [B, M],
        log p(a | c, m) [B, M])``, with :meth:`log_prob`'s noise and clamp; their log-sum-exp
        over m is :meth:`log_prob`. Imitation trains each demonstration on one flow with them
        (``sernf_learner.il``)."""
        if self.config.components == 1:
            raise ValueError("ChunkFlow.component_log_likelihoods: this flow is not a mixture (components 1)")
        self._check_chunk(actions, "actions", 3)
        log_w, per_flow = self._flow_log_probs(self._training_chunk(actions, add_noise).unsqueeze(1), context)
        return log_w, per_flow.squeeze(2)

    def draw_noise(self, context: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """The sampler's standard-normal draw ``eps [B, N, H, A]`` for ``context [B, L, D]``."""
        self._check_context(context)
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples}")
        cfg = self.config
        shape = (context.shape[0], int(num_samples), cfg.horizon, cfg.action_dim)
        return torch.randn(shape, generator=generator, device=context.device, dtype=context.dtype)

    def transform_noise(self, context: Tensor, eps: Tensor, sigma: float,
                        component_u: Tensor | None = None,
                        context_kv: ContextKV | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The tempered base draw through the inverse flow: ``(actions [B, N, H, A] clamped,
        log_prob [B, N], clamped [B, N])``, where ``clamped`` marks the candidates whose
        ``log_prob`` is still the density of the *unclamped* point (:meth:`sample` recomputes
        those). No host synchronisation: the part of sampling a CUDA graph can hold.

        The latent is ``z = sigma * eps`` for the ``N(0, I)`` base; for a mixture base
        (``base_components >= 1``) ``component_u [B, N]``, uniforms in [0, 1), pick each
        candidate's component and ``z = mean_k + sigma s_k eps``. For a mixture of flows
        (``components >= 2``) ``component_u`` picks each candidate's flow instead: every flow
        transforms the same ``eps`` and the candidate keeps its flow's chunk, whose ``log_prob``
        is the mixture's exact density at the returned (clamped) chunk, so no candidate is
        marked ``clamped`` (there is nothing to recompute)."""
        self._check_context(context)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be > 0, got {sigma}")
        cfg = self.config
        if eps.ndim != 4 or eps.shape[0] != context.shape[0] or eps.shape[2:] != (cfg.horizon, cfg.action_dim):
            raise ValueError(f"noise must have shape [B={context.shape[0]}, N, {cfg.horizon}, {cfg.action_dim}], "
                             f"got {tuple(eps.shape)}")
        if (self.base is not None or cfg.components > 1) and (
            component_u is None or component_u.shape != eps.shape[:2]
        ):
            got = None if component_u is None else tuple(component_u.shape)
            raise ValueError(f"a mixture base or mixture of flows needs component_u of shape {tuple(eps.shape[:2])}, "
                             f"got {got}")
        if cfg.components == 1:
            return self._transform_noise_one(context, eps, sigma, component_u, context_kv)
        if context_kv is not None:
            raise ValueError("context_kv is for one flow (components 1), not a mixture of flows")
        b, n, m = eps.shape[0], eps.shape[1], cfg.components
        # Every flow transforms every candidate's noise (M inverse passes as one batch of B M);
        # the candidate keeps the chunk of the flow its uniform picks by the weights pi_m(c).
        actions_m, _, _ = self._transform_noise_one(
            self._component_contexts(context), self._per_component(eps), sigma, self._per_component(component_u)
        )
        pick = _inverse_cdf(self.component_log_weights(context), component_u)  # [B, N]
        index = pick[:, None, :, None, None].expand(b, 1, n, cfg.horizon, cfg.action_dim)
        actions = actions_m.view(b, m, n, cfg.horizon, cfg.action_dim).gather(1, index).squeeze(1)
        # The mixture's density needs every flow's likelihood of the kept chunk anyway: computed
        # at the returned chunk, it is already exact where the chunk was clamped.
        return actions, self.clamped_log_prob(actions, context), torch.zeros_like(pick, dtype=torch.bool)

    def _transform_noise_one(self, context: Tensor, eps: Tensor, sigma: float, component_u: Tensor | None,
                             context_kv: ContextKV | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`transform_noise` of one flow (``context`` carries its component token, if any)."""
        cfg = self.config
        if self.base is None:
            z = sigma * eps
            base_log_prob = self.base_log_prob(z, context)
        else:
            assert component_u is not None
            mixture = self.base(self.context_norm(context))
            z = self.base.latent(eps, component_u, sigma, *mixture)
            base_log_prob = self.base.log_prob(z, *mixture)
        actions, logdet = self._inverse_transform(z, context, context_kv)  # [B, N, H, A], [B, N]
        log_prob = base_log_prob - logdet
        bound = 1.0 - cfg.clamp_eps
        clamped = (actions.abs() > bound).flatten(2).any(dim=-1)  # [B, N]
        return actions.clamp(-bound, bound), log_prob, clamped

    def sample(
        self,
        context: Tensor,
        num_samples: int,
        sigma: float = 0.7,
        generator: torch.Generator | None = None,
        context_kv: ContextKV | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``N`` chunks per context: ``(actions [B, N, H, A], log_prob [B, N])``.

        ``z = sigma * eps`` with ``eps ~ N(0, I)`` (reparameterised: differentiable w.r.t. the
        flow parameters and the context, paper §IV-D III; for a mixture base the component is
        drawn from its weights and ``z = mean_k + sigma s_k eps``, differentiable except for the
        discrete choice). ``sigma < 1`` concentrates samples on
        likely chunks (§IV-B, default 0.7). ``log_prob`` is the density of the returned actions
        under the *model* ``pi`` (the untempered base), i.e. what :meth:`log_prob` computes for
        them - not the density of the tempered sampler. Actions are clamped to
        ``[-1 + clamp_eps, 1 - clamp_eps]``, exactly as :meth:`log_prob` clamps its input; for a
        chunk with a clamped entry (only ever for ``|u| > atanh(1 - eps)``, i.e. a flow that puts
        mass on the boundary) ``log_prob`` is recomputed at the returned, clamped chunk, so the
        two methods always agree on what the sampler returns (the tanh-space density of the
        unclamped point would describe an action that is never executed). ``context_kv``: the
        context's keys and values from :meth:`context_kv`, when another pass shares them.
        """
        actions, log_prob, clamped = self.sample_deferring_clamped(context, num_samples, sigma, generator,
                                                                   context_kv)
        if bool(clamped.any()):
            rows, cols = clamped.nonzero(as_tuple=True)
            rows_kv = None if context_kv is None else select_context_kv(context_kv, rows)
            log_prob = log_prob.index_put(
                (rows, cols), self.clamped_log_prob(actions[rows, cols], context[rows], rows_kv))
        return actions, log_prob

    def sample_deferring_clamped(
        self,
        context: Tensor,
        num_samples: int,
        sigma: float = 0.7,
        generator: torch.Generator | None = None,
        context_kv: ContextKV | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`sample` without its density fix: ``(actions [B, N, H, A], log_prob [B, N],
        clamped [B, N])``, the same draws, where ``log_prob`` of a ``clamped`` candidate is still
        that of the unclamped point. For a caller that needs the density of only some
        candidates (best-of-N acting reports the chosen one's): :meth:`clamped_log_prob` gives
        it, and skipping the others saves a whole forward pass through the couplings."""
        eps = self.draw_noise(context, num_samples, generator)
        component_u = None
        if self.base is not None or self.config.components > 1:  # after eps: N(0, I)'s stream is unchanged
            component_u = torch.rand(eps.shape[:2], generator=generator, device=eps.device, dtype=eps.dtype)
        return self.transform_noise(context, eps, sigma, component_u, context_kv)

    def clamped_log_prob(self, actions: Tensor, context: Tensor, context_kv: ContextKV | None = None) -> Tensor:
        """``log pi`` ``[B]`` / ``[B, N]`` of chunks ``actions [B, H, A]`` / ``[B, N, H, A]``
        already inside the clamp (what :meth:`log_prob` computes for them, without clamping
        again). For a mixture of flows, ``log sum_m pi_m(c) p(a | c, m)`` over the M flows."""
        if self.config.components == 1:
            return self._clamped_log_prob_one(actions, context, context_kv)
        if context_kv is not None:
            raise ValueError("context_kv is for one flow (components 1), not a mixture of flows")
        squeeze = actions.ndim == 3
        log_w, per_flow = self._flow_log_probs(actions.unsqueeze(1) if squeeze else actions, context)
        log_prob = torch.logsumexp(log_w[:, :, None] + per_flow, dim=1)  # [B, N]
        return log_prob.squeeze(1) if squeeze else log_prob

    def _flow_log_probs(self, actions: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """A mixture's parts for chunks ``actions [B, N, H, A]`` inside the clamp: ``(log pi_m(c)
        [B, M], log p(a | c, m) [B, M, N])``, the M flows as one batch of ``B M`` contexts."""
        self._check_chunk(actions, "actions", 4)
        self._check_context(context)
        if actions.shape[0] != context.shape[0]:
            raise ValueError(f"batch mismatch: actions {tuple(actions.shape)} vs context {tuple(context.shape)}")
        b, n, m = actions.shape[0], actions.shape[1], self.config.components
        per_flow = self._clamped_log_prob_one(self._per_component(actions), self._component_contexts(context))
        return self.component_log_weights(context), per_flow.view(b, m, n)

    def _clamped_log_prob_one(self, actions: Tensor, context: Tensor,
                              context_kv: ContextKV | None = None) -> Tensor:
        z, logdet = self._forward_transform(actions, context, context_kv)
        return self.base_log_prob(z, context) + logdet

    # -- the mixture of flows (``components >= 2``) -------------------------------------------
    def component_log_weights(self, context: Tensor) -> Tensor:
        """``log pi_m(c)`` ``[B, M]`` of a mixture of flows, from the mean-pooled normalised
        context ``[B, L, D]``."""
        if self.component_logits is None:
            raise ValueError("ChunkFlow.component_log_weights: this flow is not a mixture (components 1)")
        return torch.log_softmax(full_precision(self.component_logits(self.context_norm(context).mean(dim=1))), dim=-1)

    def _component_contexts(self, context: Tensor) -> Tensor:
        """``[B, L, D]`` -> ``[B M, L + 1, D]``: row ``b M + m`` is context b with flow m's token."""
        b, length, d = context.shape
        m = self.config.components
        assert self.component_tokens is not None
        tokens = self.component_tokens.to(context.dtype)[None, :, None, :].expand(b, m, 1, d)
        return torch.cat([context[:, None].expand(b, m, length, d), tokens], dim=2).reshape(b * m, length + 1, d)

    def _per_component(self, x: Tensor) -> Tensor:
        """``[B, ...]`` -> ``[B M, ...]`` (each row repeated for the M flows, as the contexts)."""
        m = self.config.components
        return x[:, None].expand(x.shape[0], m, *x.shape[1:]).reshape(x.shape[0] * m, *x.shape[1:])
