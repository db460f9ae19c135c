"""Action-chunked distributional critic ensemble (paper §IV-C, appendix G1).

Each of the ``M`` critics is a transformer encoder (d_model 512, 8 heads, 3 layers, FF 256,
GELU, dropout 0.1, LayerNorm, batch-first) over the token sequence::

    [readout] + observation tokens (L) + prefix action tokens (P) + chunk action tokens (H)

Actions (prefix and chunk alike, both normalised) are embedded by ``Linear(A, 512) + ELU``
plus a learned positional bias per action position (``P + H`` positions: prefix first, in
time order, then the chunk, docs/design.md §6 / Fig. 7). Observation tokens are projected to d_model
only if their width differs. The readout (CLS) token's output feeds ``Linear(512, Z=101)``:
HL-Gauss logits (:mod:`hl_gauss`).

Parameter count per critic (G1: ``3,999,077 + 512 x (A + T_a + 1)``) is reproduced exactly
with ``T_a = P + H`` action positions: 3 encoder layers (3 x 1,315,584) + readout token (512)
+ head (51,813) = 3,999,077; action embedding ``512 A + 512``; positional bias
``512 (P + H)``.

The observation is encoded once (by the critic's own encoder, outside this module); ``score``
broadcasts the encoded tokens over N candidate chunks (Alg. 2).

Dimension names: ``B`` batch, ``N`` candidates, ``L`` observation tokens, ``D`` their width,
``P`` prefix actions, ``H`` chunk length, ``A`` action dim, ``M`` critics, ``Z`` bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu_attention, cpu_dropout
from .acting_cache import ParameterKeyedCache
from .config_io import build_dataclass
from .fast_paths import fast_paths_enabled
from .hl_gauss import HLGauss

__all__ = ["ChunkCritic", "ChunkCriticConfig"]

#: Widest critic (d_model) scored as one batched ensemble on the optimised path (see
#: ChunkCritic._score_fast); wider ones are scored member by member.
_ENSEMBLE_MAX_WIDTH = 256


@dataclass
class ChunkCriticConfig:
    """Configuration of :class:`ChunkCritic` (defaults: paper G1)."""

    #: A: action dimensions per step.
    action_dim: int
    #: Actions scored after the prefix: the chunk length H for the paper's chunked critic, or
    #: 1 for the per-step critic of the ablation (the policy then scores a chunk's first
    #: action; 1-step TD target). ``T_a = P + horizon``.
    horizon: int
    #: P: prefix actions (queued, not yet executed) given to the critic; may be 0.
    prefix_len: int
    #: D: width of the observation tokens coming from the critic's encoder.
    obs_dim: int
    #: Transformer width (paper: 512).
    d_model: int = 512
    #: Attention heads (paper: 8).
    num_heads: int = 8
    #: Encoder layers (paper: 3).
    num_layers: int = 3
    #: Feed-forward width (paper: 256).
    ff_dim: int = 256
    #: Dropout inside the encoder layers (paper: 0.1).
    dropout: float = 0.1
    #: M: critics in the ensemble; the minimum is used for targets and selection (paper: 2).
    num_critics: int = 2
    #: Z: HL-Gauss bins (paper: 101).
    num_bins: int = 101
    #: Lower end of the value support. Sparse 0/1 success rewards give returns in [0, 1];
    #: widen for shaped or multi-subtask rewards.
    v_min: float = 0.0
    #: Upper end of the value support.
    v_max: float = 1.0
    #: HL-Gauss sigma as a fraction of the bin width (paper / Tarasov et al.: 0.75).
    sigma_ratio: float = 0.75
    #: Pre-norm encoder layers (PyTorch default False = post-norm, as nn.TransformerEncoder).
    norm_first: bool = False

    def __post_init__(self) -> None:
        for name in ("action_dim", "horizon", "obs_dim", "d_model", "num_heads", "num_layers",
                     "ff_dim", "num_critics", "num_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ChunkCriticConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.prefix_len, bool) or not isinstance(self.prefix_len, int) or self.prefix_len < 0:
            raise ValueError(f"ChunkCriticConfig.prefix_len must be an int >= 0, got {self.prefix_len!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"ChunkCriticConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.num_bins < 2:
            raise ValueError(f"ChunkCriticConfig.num_bins must be >= 2, got {self.num_bins}")
        self.dropout, self.v_min, self.v_max = float(self.dropout), float(self.v_min), float(self.v_max)
        self.sigma_ratio = float(self.sigma_ratio)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ChunkCriticConfig.dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.v_min) and math.isfinite(self.v_max) and self.v_min < self.v_max):
            raise ValueError(f"ChunkCriticConfig needs finite v_min < v_max, got [{self.v_min}, {self.v_max}]")
        if not (math.isfinite(self.sigma_ratio) and self.sigma_ratio > 0):
            raise ValueError(f"ChunkCriticConfig.sigma_ratio must be > 0, got {self.sigma_ratio}")
        if not isinstance(self.norm_first, bool):
            raise ValueError(f"ChunkCriticConfig.norm_first must be a bool, got {self.norm_first!r}")

    @classmethod
    def from_dict(cls, data: Any) -> ChunkCriticConfig:
        """Rebuild from the plain dict written by ``config_io.to_jsonable``."""
        return build_dataclass(cls, data)


class _CriticMember(nn.Module):
    """One transformer critic: tokens -> Z logits."""

    def __init__(self, cfg: ChunkCriticConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.obs_proj = nn.Identity() if cfg.obs_dim == d else nn.Linear(cfg.obs_dim, d)
        self.action_embed = nn.Sequential(nn.Linear(cfg.action_dim, d), nn.ELU())
        self.action_pos = nn.Parameter(torch.randn(cfg.prefix_len + cfg.horizon, d) * 0.02)  # [P+H, d]
        self.readout = nn.Parameter(torch.randn(d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, cfg.num_heads, dim_feedforward=cfg.ff_dim, dropout=cfg.dropout,
            activation="gelu", batch_first=True, norm_first=cfg.norm_first,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, cfg.num_bins)

    def forward(self, obs_tokens: Tensor, actions: Tensor) -> Tensor:
        """Reference implementation: ``obs_tokens [B', L, D]``, ``actions [B', P+H, A]`` -> ``[B', Z]``."""
        act = self.action_embed(actions) + self.action_pos
        cls = self.readout.expand(obs_tokens.shape[0], 1, -1)
        seq = torch.cat([cls, self.obs_proj(obs_tokens), act], dim=1)
        return self.head(self.encoder(seq)[:, 0])

    def score_fast(self, obs_tokens: Tensor, prefix: Tensor, chunks: Tensor) -> Tensor:
        """Optimised scoring of N chunks per observation: ``[B, L, D], [B, P, A], [B, N, H, A]``
        -> logits ``[B, N, Z]``; same numbers as :meth:`forward` up to float rounding.

        Two savings, both exact: (1) the first layer's input rows of the readout, observation
        and prefix tokens are the same for all N candidates, so their (normalised) Q/K/V
        projections are computed once per observation and broadcast; (2) only the readout
        token's output is read, so the last layer computes the query, attention output,
        feed-forward and norms for the readout row alone, and attends without projecting the
        other rows' keys and values (:func:`_readout_attention`).
        """
        b, n = chunks.shape[:2]
        npre = prefix.shape[1]
        pos = self.action_pos
        shared = torch.cat([
            self.readout.expand(b, 1, -1), self.obs_proj(obs_tokens),
            self.action_embed(prefix) + pos[:npre],
        ], dim=1)  # [B, S, d]: identical for every candidate
        cand = self.action_embed(chunks) + pos[npre:]  # [B, N, H, d]
        layers = self.encoder.layers
        first = layers[0]
        x_norm_shared = first.norm1(shared) if first.norm_first else shared
        x_norm_cand = first.norm1(cand) if first.norm_first else cand
        w, bias = first.self_attn.in_proj_weight, first.self_attn.in_proj_bias
        qkv = torch.cat([
            F.linear(x_norm_shared, w, bias).unsqueeze(1).expand(b, n, -1, -1),
            F.linear(x_norm_cand, w, bias),
        ], dim=2).flatten(0, 1)  # [B*N, S+H, 3d]
        x = torch.cat([shared.unsqueeze(1).expand(b, n, -1, -1), cand], dim=2).flatten(0, 1)
        for i, layer in enumerate(layers):
            x = _encoder_layer(layer, x, qkv=qkv if i == 0 else None, readout_only=i == len(layers) - 1)
        if self.encoder.norm is not None:
            x = self.encoder.norm(x)
        return self.head(x[:, 0]).unflatten(0, (b, n))


def _encoder_layer(layer: nn.TransformerEncoderLayer, x: Tensor, qkv: Tensor | None = None,
                   readout_only: bool = False) -> Tensor:
    """``nn.TransformerEncoderLayer`` (batch-first, GELU) on ``x [B', T, d]`` with its own weights
    and the same dropouts; ``qkv`` optionally precomputed; ``readout_only`` returns ``[B', 1, d]``:
    the first row's output only (its query against every row's keys / values)."""
    attn = layer.self_attn
    heads, d = attn.num_heads, attn.embed_dim
    w, b = attn.in_proj_weight, attn.in_proj_bias
    p = attn.dropout if layer.training else 0.0
    if qkv is None and readout_only:
        x_in = layer.norm1(x) if layer.norm_first else x
        att_rows = _readout_attention(x_in, w, b, heads, p)  # [B', 1, d]
    else:
        if qkv is not None:
            q, k, v = qkv.split(d, dim=-1)
            if readout_only:
                q = q[:, :1]
        else:
            x_in = layer.norm1(x) if layer.norm_first else x
            q, k, v = F.linear(x_in, w, b).split(d, dim=-1)

        def split_heads(t: Tensor) -> Tensor:
            return t.unflatten(-1, (heads, d // heads)).transpose(1, 2)  # [B', heads, T, hd]

        att = cpu_attention.attention(split_heads(q), split_heads(k), split_heads(v), dropout_p=p)
        att_rows = att.transpose(1, 2).flatten(-2)
    if readout_only:
        x = x[:, :1]
    sa = _dropout(layer.dropout1, attn.out_proj(att_rows))

    def feed_forward(t: Tensor) -> Tensor:
        hidden = _dropout(layer.dropout, layer.activation(layer.linear1(t)))
        return _dropout(layer.dropout2, layer.linear2(hidden))

    if layer.norm_first:
        x = x + sa
        return x + feed_forward(layer.norm2(x))
    x = layer.norm1(x + sa)
    return layer.norm2(x + feed_forward(x))


def _dropout(module: nn.Dropout, t: Tensor) -> Tensor:
    """One of ``nn.TransformerEncoderLayer``'s dropouts, at its rate and mode, with the cheaper CPU
    mask (:mod:`cpu_dropout`; the reference path runs the layer itself and keeps torch's)."""
    return cpu_dropout.dropout(t, module.p, module.training)


def _readout_attention(x_in: Tensor, w: Tensor, b: Tensor, heads: int, dropout_p: float) -> Tensor:
    """Multi-head attention output ``[B', 1, d]`` (before ``out_proj``) of the first row's query
    over all rows of ``x_in [B', T, d]``, without projecting the T keys and values.

    Exact rewrite of ``softmax(q K^T / sqrt(hd)) V`` for a single query per head ``h``:
    ``q_h . (W_k,h x_j + b_k,h) = (W_k,h^T q_h) . x_j + q_h . b_k,h``, and the last term is the
    same for every key ``j``, so softmax drops it; ``sum_j p_j (W_v,h x_j + b_v,h) =
    W_v,h (sum_j p_j x_j) + b_v,h sum_j p_j`` (the sum is 1 without dropout). This replaces the
    ``2 T d^2`` multiply-adds of the key / value projections by ``2 d^2 + 2 heads T d``; with the
    critic's 17-token sequences that is a 10x smaller last layer.
    """
    d = x_in.shape[-1]
    hd = d // heads
    w_q, w_k, w_v = w.split(d)
    b_q, b_v = b[:d], b[2 * d:]
    q = F.linear(x_in[:, 0], w_q, b_q).unflatten(-1, (heads, hd))  # [B', heads, hd]
    # [B', heads, d]: W_k,h^T q_h, scaled as scaled_dot_product_attention scales its scores.
    q_x = torch.einsum("bhe,hed->bhd", q, w_k.unflatten(0, (heads, hd))) * (1.0 / math.sqrt(hd))
    probs = torch.softmax(torch.bmm(q_x, x_in.transpose(1, 2)), dim=-1)  # [B', heads, T]
    if dropout_p > 0.0:
        probs = cpu_dropout.dropout(probs, dropout_p)
    pooled = torch.bmm(probs, x_in)  # [B', heads, d]: sum_j p_j x_j per head
    out = torch.einsum("bhd,hed->bhe", pooled, w_v.unflatten(0, (heads, hd)))  # [B', heads, hd]
    bias = b_v.unflatten(0, (heads, hd))
    out = out + (bias * probs.sum(-1, keepdim=True) if dropout_p > 0.0 else bias)
    return out.flatten(-2).unsqueeze(1)


def _batched_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """Per-critic ``F.linear``: ``x [M, ..., in]``, ``w [M, out, in]``, ``b [M, out]`` -> ``[M, ..., out]``."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    out = torch.bmm(flat, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))
    return out.view(*x.shape[:-1], w.shape[1])


def _batched_layer_norm(x: Tensor, norm: nn.LayerNorm, w: Tensor, b: Tensor) -> Tensor:
    """Per-critic LayerNorm of ``x [M, ..., d]`` with stacked affine ``w, b [M, d]``."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return torch.addcmul(b.view(shape), F.layer_norm(x, norm.normalized_shape, eps=norm.eps), w.view(shape))


def _stack_members(members: nn.ModuleList) -> dict[str, Tensor]:
    """The M critics' parameters stacked along a leading axis (``{name: [M, ...]}``), so that
    one batched matmul serves every critic (one forward and one backward for the ensemble).
    Built per training call (autograd routes each slice's gradient to its member's parameter; a
    copy is cheap next to a training step's arithmetic) and cached while acting
    (:class:`ParameterKeyedCache`)."""
    named = [dict(m.named_parameters()) for m in members]
    return {name: torch.stack([params[name] for params in named]) for name in named[0]}


def _ensemble_score_fast(members: nn.ModuleList, stacked: dict[str, Tensor], obs_tokens: Tensor,
                         prefix: Tensor, chunks: Tensor) -> Tensor:
    """Every critic's :meth:`_CriticMember.score_fast` at once: logits ``[M, B, N, Z]``.

    The same arithmetic as the members one by one (shared first-layer Q/K/V, readout-only last
    layer), with the M critics' weights stacked so that each projection is one batched matmul.
    """
    first_member = members[0]
    b, n = chunks.shape[:2]
    m = len(members)
    npre = prefix.shape[1]
    pos = stacked["action_pos"]  # [M, P+H, d]

    def embed(actions: Tensor) -> Tensor:  # [..., A] -> [M, ..., d]
        w, bias = stacked["action_embed.0.weight"], stacked["action_embed.0.bias"]
        return F.elu(_batched_linear(actions.unsqueeze(0).expand(m, *actions.shape), w, bias))

    obs = obs_tokens.unsqueeze(0).expand(m, *obs_tokens.shape)
    if not isinstance(first_member.obs_proj, nn.Identity):
        obs = _batched_linear(obs, stacked["obs_proj.weight"], stacked["obs_proj.bias"])
    d = pos.shape[-1]
    shared = torch.cat([
        stacked["readout"].view(m, 1, 1, d).expand(m, b, 1, d), obs,
        embed(prefix) + pos[:, None, :npre],
    ], dim=2)  # [M, B, S, d]: identical for every candidate
    cand = embed(chunks) + pos[:, None, None, npre:]  # [M, B, N, H, d]
    layers = first_member.encoder.layers
    first = layers[0]
    pre = "encoder.layers.0."
    if first.norm_first:
        x_norm_shared = _batched_layer_norm(shared, first.norm1, stacked[pre + "norm1.weight"], stacked[pre + "norm1.bias"])
        x_norm_cand = _batched_layer_norm(cand, first.norm1, stacked[pre + "norm1.weight"], stacked[pre + "norm1.bias"])
    else:
        x_norm_shared, x_norm_cand = shared, cand
    w, bias = stacked[pre + "self_attn.in_proj_weight"], stacked[pre + "self_attn.in_proj_bias"]
    qkv = torch.cat([
        _batched_linear(x_norm_shared, w, bias).unsqueeze(2).expand(m, b, n, -1, -1),
        _batched_linear(x_norm_cand, w, bias),
    ], dim=3).flatten(1, 2)  # [M, B*N, S+H, 3d]
    x = torch.cat([shared.unsqueeze(2).expand(m, b, n, -1, -1), cand], dim=3).flatten(1, 2)
    for i, layer in enumerate(layers):
        x = _batched_encoder_layer(layer, f"encoder.layers.{i}.", stacked, x, qkv=qkv if i == 0 else None,
                                   readout_only=i == len(layers) - 1)
    if first_member.encoder.norm is not None:
        x = _batched_layer_norm(x, first_member.encoder.norm, stacked["encoder.norm.weight"], stacked["encoder.norm.bias"])
    logits = _batched_linear(x[:, :, 0], stacked["head.weight"], stacked["head.bias"])  # [M, B*N, Z]
    return logits.unflatten(1, (b, n))


def _batched_encoder_layer(layer: nn.TransformerEncoderLayer, prefix: str, stacked: dict[str, Tensor], x: Tensor,
                           qkv: Tensor | None = None, readout_only: bool = False) -> Tensor:
    """:func:`_encoder_layer` for M critics at once: ``x [M, B', T, d]`` with the stacked weights
    of ``layer``'s parameters (``prefix`` + name); ``layer`` gives the hyper-parameters and the
    dropout modules."""
    attn = layer.self_attn
    heads, d = attn.num_heads, attn.embed_dim
    hd = d // heads
    par = {name: stacked[prefix + name] for name in (
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")}
    w, b = par["self_attn.in_proj_weight"], par["self_attn.in_proj_bias"]  # [M, 3d, d], [M, 3d]

    def norm1(t: Tensor) -> Tensor:
        return _batched_layer_norm(t, layer.norm1, par["norm1.weight"], par["norm1.bias"])

    def norm2(t: Tensor) -> Tensor:
        return _batched_layer_norm(t, layer.norm2, par["norm2.weight"], par["norm2.bias"])

    p = attn.dropout if layer.training else 0.0
    if qkv is None and readout_only:
        # See _readout_attention: the readout query against unprojected rows.
        x_in = norm1(x) if layer.norm_first else x
        q = _batched_linear(x_in[:, :, 0], w[:, :d], b[:, :d]).unflatten(-1, (heads, hd))  # [M, B', heads, hd]
        q_x = torch.einsum("mbhe,mhed->mbhd", q, w[:, d:2 * d].unflatten(1, (heads, hd))) * (1.0 / math.sqrt(hd))
        probs = torch.softmax(torch.matmul(q_x, x_in.transpose(-1, -2)), dim=-1)  # [M, B', heads, T]
        if p > 0.0:
            probs = cpu_dropout.dropout(probs, p)
        pooled = torch.matmul(probs, x_in)  # [M, B', heads, d]
        out = torch.einsum("mbhd,mhed->mbhe", pooled, w[:, 2 * d:].unflatten(1, (heads, hd)))
        bias_v = b[:, 2 * d:].unflatten(1, (heads, hd)).unsqueeze(1)  # [M, 1, heads, hd]
        out = out + (bias_v * probs.sum(-1, keepdim=True) if p > 0.0 else bias_v)
        att_rows = out.flatten(-2).unsqueeze(2)  # [M, B', 1, d]
    else:
        if qkv is not None:
            q, k, v = qkv.split(d, dim=-1)
            if readout_only:
                q = q[:, :, :1]
        else:
            x_in = norm1(x) if layer.norm_first else x
            q, k, v = _batched_linear(x_in, w, b).split(d, dim=-1)

        # Compiled (acting), attention runs on 4-D [M B', heads, T, hd]: torch.compile (2.14, CPU
        # inductor) computed a wrong attention from these strided views passed as 5-D. Eagerly
        # it stays 5-D, which keeps the order in which training draws its dropout masks.
        compiling = torch.compiler.is_compiling()

        def split_heads(t: Tensor) -> Tensor:  # [M, B', T, d] -> [M, B', heads, T, hd]
            t = t.unflatten(-1, (heads, hd)).transpose(-3, -2)
            return t.flatten(0, 1) if compiling else t

        att = cpu_attention.attention(split_heads(q), split_heads(k), split_heads(v), dropout_p=p)
        att_rows = (att.unflatten(0, x.shape[:2]) if compiling else att).transpose(-3, -2).flatten(-2)
    if readout_only:
        x = x[:, :, :1]
    sa = _dropout(layer.dropout1, _batched_linear(att_rows, par["self_attn.out_proj.weight"], par["self_attn.out_proj.bias"]))

    def feed_forward(t: Tensor) -> Tensor:
        hidden = _dropout(layer.dropout, layer.activation(_batched_linear(t, par["linear1.weight"], par["linear1.bias"])))
        return _dropout(layer.dropout2, _batched_linear(hidden, par["linear2.weight"], par["linear2.bias"]))

    if layer.norm_first:
        x = x + sa
        return x + feed_forward(norm2(x))
    x = norm1(x + sa)
    return norm2(x + feed_forward(x))


class ChunkCritic(nn.Module):
    """Ensemble of ``M`` independently initialised chunk critics with an HL-Gauss head."""

    def __init__(self, config: ChunkCriticConfig) -> None:
        super().__init__()
        if not isinstance(config, ChunkCriticConfig):
            raise ValueError(f"ChunkCritic needs a ChunkCriticConfig, got {type(config).__name__}")
        self.config = config
        self.members = nn.ModuleList(_CriticMember(config) for _ in range(config.num_critics))
        self.hl_gauss = HLGauss(config.v_min, config.v_max, config.num_bins, config.sigma_ratio)
        self._stacked: ParameterKeyedCache[dict[str, Tensor]] = ParameterKeyedCache()
        self._compiled_score: Any = None

    def compile_for_acting(self, **compile_kwargs: Any) -> None:
        """Opt in to ``torch.compile`` (inductor) of candidate scoring on the optimised path, used
        only when acting (inference mode); training and the reference path stay eager. Shapes
        are static (``dynamic=False``) unless ``compile_kwargs`` say otherwise."""
        self._compiled_score = torch.compile(self._score_fast, **{"dynamic": False, **compile_kwargs})

    def _check(self, obs_tokens: Tensor, prefix: Tensor, chunk: Tensor, chunk_ndim: int) -> None:
        cfg = self.config
        if obs_tokens.ndim != 3 or obs_tokens.shape[-1] != cfg.obs_dim:
            raise ValueError(f"critic obs_tokens must be [B, L, {cfg.obs_dim}], got {tuple(obs_tokens.shape)}")
        b = obs_tokens.shape[0]
        if tuple(prefix.shape) != (b, cfg.prefix_len, cfg.action_dim):
            raise ValueError(
                f"critic prefix must be [{b}, {cfg.prefix_len}, {cfg.action_dim}], got {tuple(prefix.shape)}"
            )
        if chunk.ndim != chunk_ndim or chunk.shape[0] != b or tuple(chunk.shape[-2:]) != (cfg.horizon, cfg.action_dim):
            want = f"[{b}, {cfg.horizon}, {cfg.action_dim}]" if chunk_ndim == 3 else f"[{b}, N, {cfg.horizon}, {cfg.action_dim}]"
            raise ValueError(f"critic chunk(s) must be {want}, got {tuple(chunk.shape)}")

    def forward(self, obs_tokens: Tensor, prefix: Tensor, chunk: Tensor) -> Tensor:
        """Logits ``[M, B, Z]`` for ``obs_tokens [B, L, D]``, ``prefix [B, P, A]``, ``chunk [B, H, A]``."""
        self._check(obs_tokens, prefix, chunk, 3)
        if fast_paths_enabled():
            return self._score_fast(obs_tokens, prefix.to(chunk.dtype), chunk.unsqueeze(1))[:, :, 0]
        actions = torch.cat([prefix.to(chunk.dtype), chunk], dim=1)  # [B, P+H, A]
        return torch.stack([m(obs_tokens, actions) for m in self.members])

    def score(self, obs_tokens: Tensor, prefix: Tensor, chunks: Tensor) -> Tensor:
        """Logits ``[M, B, N, Z]`` of N candidate ``chunks [B, N, H, A]`` per observation.

        The already-encoded ``obs_tokens [B, L, D]`` and ``prefix [B, P, A]`` are broadcast over
        the N candidates (the observation encoder runs once per observation, Alg. 2).
        """
        self._check(obs_tokens, prefix, chunks, 4)
        if fast_paths_enabled():
            compiled = self._compiled_score
            if compiled is not None and torch.is_inference_mode_enabled():
                return compiled(obs_tokens, prefix.to(chunks.dtype), chunks)
            return self._score_fast(obs_tokens, prefix.to(chunks.dtype), chunks)
        b, n = chunks.shape[:2]
        obs = obs_tokens.unsqueeze(1).expand(b, n, *obs_tokens.shape[1:]).flatten(0, 1)  # [B*N, L, D]
        pre = prefix.unsqueeze(1).expand(b, n, *prefix.shape[1:]).flatten(0, 1)  # [B*N, P, A]
        logits = self.forward(obs, pre, chunks.flatten(0, 1))  # [M, B*N, Z]
        return logits.unflatten(1, (b, n))

    def _score_fast(self, obs_tokens: Tensor, prefix: Tensor, chunks: Tensor) -> Tensor:
        """Optimised logits ``[M, B, N, Z]``: small critics in one batched pass over the ensemble
        (one op per projection instead of M: the small models are bound by per-operator
        overhead), wide ones member by member (measured on a 2-core CPU: batched is ~10 %
        faster for the d_model 64 critic's training step, ~7 % slower at d_model 512, where the
        per-member matmuls are large and batched matmuls run less efficiently)."""
        if len(self.members) == 1 or self.config.d_model > _ENSEMBLE_MAX_WIDTH:
            return torch.stack([m.score_fast(obs_tokens, prefix, chunks) for m in self.members])
        stacked = self._stacked.get(list(self.members.parameters()), lambda: _stack_members(self.members))
        return _ensemble_score_fast(self.members, stacked, obs_tokens, prefix, chunks)

    def values(self, logits: Tensor) -> Tensor:
        """HL-Gauss expected values ``[M, ...]`` of logits ``[M, ..., Z]``."""
        return self.hl_gauss.to_value(logits)

    def min_value(self, obs_tokens: Tensor, prefix: Tensor, chunks: Tensor) -> Tensor:
        """``min_j Q_j`` ``[B, N]`` of candidate ``chunks [B, N, H, A]`` (Alg. 2, clipped double-Q)."""
        return self.values(self.score(obs_tokens, prefix, chunks)).min(dim=0).values
