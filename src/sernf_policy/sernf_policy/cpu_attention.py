"""Attention for the small heads of the CPU-sized models, on a CPU.

Why it exists: the point-task and demo models attend from a few rows to a few keys with
16-wide heads (the flow's couplings: 3 query rows against the chunk's 6 rows, and against the
10 context tokens; the critic's readout: 1 row against 17 tokens), batched over hundreds of
(sample, head) pairs. Two of ATen's CPU kernels fall to scalar loops at those sizes
(measured on the project's 2-core machine, one thread, ad hoc):

* ``bmm`` multiplies matrices of fewer than :data:`SMALL_GEMM_MACS` multiply-adds
  (rows x inner x columns) in a scalar loop instead of its batched GEMM: 280 us against 57 us
  for 512 products of 3x6 by 6x16, 730 against 61 us for 17x1 by 1x16 (which the backward of
  a one-row attention produces);
* ``softmax`` over a last dimension shorter than one AVX-512 vector (16 floats) runs row by
  row: 1.5 ms for 6,144 rows of 10, against 0.43 ms for the same arithmetic as five
  whole-tensor operators.

:func:`attention` computes ``softmax(q k^T / sqrt(hd)) v`` so that neither happens: zero
query rows lift every product, forward and backward, onto the GEMM (their scores are cut off
before the softmax, so they change nothing), and rows shorter than 16 take
:class:`_ShortRowSoftmax`. Same numbers as ``F.scaled_dot_product_attention`` up to float
rounding. With dropout it draws :mod:`cpu_dropout`'s mask, as the earlier math path did.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_dropout
from .mixed_precision import full_precision

SMALL_GEMM_MACS = 400
"""ATen's CPU ``bmm`` computes products of fewer multiply-adds than this in a scalar loop."""

SHORT_ROW = 16
"""Softmax rows shorter than this take :class:`_ShortRowSoftmax` (ATen's kernel is 3-4x slower there)."""

MAX_HEAD_DIM = 32
"""Without dropout, heads wider than this keep torch's fused kernel: their products are past
the scalar-loop size at any number of keys, and at the paper critic's 64-wide heads over 17
tokens neither path won both ways (this one 1.3x faster acting, 0.9x in training; ad hoc).
Up to 32 this path was as fast or up to 2.5x faster (the flow's and the small critic's heads, training and
acting)."""


def attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)`` (no mask, default scale).

    On a CPU, eagerly, with dropout or small heads: the math path of the module docstring,
    with :func:`cpu_dropout.dropout`'s mask. Otherwise torch's call.
    """
    if q.device.type != "cpu" or torch.compiler.is_compiling() or (
            dropout_p == 0.0 and q.shape[-1] > MAX_HEAD_DIM):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    rows, head_dim, keys = q.shape[-2], q.shape[-1], k.shape[-2]
    pad = _rows_for_batched_gemm(rows, head_dim, keys) - rows
    q = q * (1.0 / math.sqrt(head_dim))
    scores = torch.matmul(F.pad(q, (0, 0, 0, pad)) if pad else q, k.transpose(-2, -1))[..., :rows, :]
    # Under bf16 autocast the scores come out in bf16; the softmax runs in float32, as torch's
    # fused attention kernel does internally (autocast would leave it in bf16 on a CPU).
    scores = full_precision(scores)
    probs = _ShortRowSoftmax.apply(scores) if keys < SHORT_ROW else torch.softmax(scores, dim=-1)
    probs = cpu_dropout.dropout(probs, dropout_p)
    if not pad:
        return torch.matmul(probs, v)
    return torch.matmul(F.pad(probs, (0, 0, 0, pad)), v)[..., :rows, :]


def _rows_for_batched_gemm(rows: int, head_dim: int, keys: int) -> int:
    """Query rows to compute so that every product of attention, forward and backward, has at
    least :data:`SMALL_GEMM_MACS` multiply-adds (each is rows x head_dim x keys in some order)."""
    return max(rows, -(-SMALL_GEMM_MACS // (head_dim * keys)))


class _ShortRowSoftmax(torch.autograd.Function):
    """Softmax over the last dimension as whole-tensor operators (max, subtract, exp, sum,
    divide), and its backward ``s * (g - sum(g * s))``: each operator is vectorised over the
    whole tensor, where ATen's softmax kernel vectorises along the row and is scalar for rows
    shorter than a vector."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102 (autograd's interface)
        probs = (x - x.amax(-1, keepdim=True)).exp_()
        probs = probs.div_(probs.sum(-1, keepdim=True))
        ctx.save_for_backward(probs)
        return probs

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        (probs,) = ctx.saved_tensors
        weighted = grad * probs
        return weighted.sub_(probs * weighted.sum(-1, keepdim=True))
