"""Attention for small heads on a CPU: torch's numbers and gradients, without ATen's scalar loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from sernf_policy import cpu_attention, cpu_dropout


class _RecordOps(TorchDispatchMode):
    """Records every aten operator called, with its tensor arguments' shapes."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        self.calls.append((func.overloadpacket.__name__, shapes))
        return func(*args, **(kwargs or {}))


def _qkv(lead: tuple[int, ...], rows: int, keys: int, head_dim: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(rows * 1000 + keys * 10 + head_dim)
    q = torch.randn(*lead, rows, head_dim, generator=gen, dtype=dtype)
    k, v = (torch.randn(*lead, keys, head_dim, generator=gen, dtype=dtype) for _ in range(2))
    return [t.requires_grad_() for t in (q, k, v)]


# The CPU-sized models' shapes (flow coupling: 3 rows against 6 chunk rows or 10 context
# tokens; critic readout: 1 row against 17 tokens), the paper-size flow's 32-wide heads, and
# rows long enough for torch's own softmax kernel.
SHAPES = [((32, 1, 4), 3, 6, 16), ((32, 1, 4), 3, 10, 16), ((2, 32, 4), 1, 17, 16), ((16, 8), 3, 6, 32),
          ((4, 4), 17, 17, 16)]


@pytest.mark.parametrize("lead, rows, keys, head_dim", SHAPES)
def test_matches_torchs_attention_and_its_gradients(lead, rows, keys, head_dim):
    ours_in = _qkv(lead, rows, keys, head_dim)
    theirs_in = [t.detach().clone().requires_grad_() for t in ours_in]
    grad = torch.randn(*lead, rows, head_dim, generator=torch.Generator().manual_seed(5))
    ours = cpu_attention.attention(*ours_in)
    theirs = F.scaled_dot_product_attention(*theirs_in)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.backward(grad)
    theirs.backward(grad)
    for a, b in zip(ours_in, theirs_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lead, rows, keys, head_dim", SHAPES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_every_matrix_product_reaches_the_batched_gemm(lead, rows, keys, head_dim, dropout_p):
    """Forward and backward: no bmm below ATen's scalar-loop size (it failed with 288 / 272
    multiply-adds per product for the flow's and the critic's small heads)."""
    q, k, v = _qkv(lead, rows, keys, head_dim)
    with _RecordOps() as ops:
        out = cpu_attention.attention(q, k, v, dropout_p=dropout_p)
        out.sum().backward()
    products = [shapes for name, shapes in ops.calls if name in ("bmm", "baddbmm", "mm")]
    assert products, "attention ran no matrix product at all"
    for shapes in products:
        (rows_, inner), (_, cols) = shapes[-2][-2:], shapes[-1][-2:]
        assert rows_ * inner * cols >= cpu_attention.SMALL_GEMM_MACS, shapes


@pytest.mark.parametrize("keys", [3, 6, 10, 15])
def test_short_rows_do_not_run_atens_softmax(keys):
    q, k, v = _qkv((64, 4), 3, keys, 16)
    with _RecordOps() as ops:
        cpu_attention.attention(q, k, v).sum().backward()
    names = {name for name, _ in ops.calls}
    assert not names & {"_softmax", "_softmax_backward_data", "_scaled_dot_product_flash_attention_for_cpu"}, names


def test_short_row_softmax_gradient():
    x = torch.randn(5, 3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cpu_attention._ShortRowSoftmax.apply, (x,))
    torch.testing.assert_close(cpu_attention._ShortRowSoftmax.apply(x), torch.softmax(x, -1))
    big = torch.tensor([[1e4, 0.0, -1e4]], dtype=torch.float32)  # max subtracted: no overflow
    torch.testing.assert_close(cpu_attention._ShortRowSoftmax.apply(big), torch.tensor([[1.0, 0.0, 0.0]]))


def test_wide_heads_without_dropout_keep_torchs_kernel():
    q, k, v = _qkv((8, 8), 17, 17, 64)
    with _RecordOps() as ops:
        cpu_attention.attention(q, k, v)
    assert not {"bmm", "baddbmm"} & {name for name, _ in ops.calls}


def test_dropout_drops_attention_weights_with_the_cheaper_mask():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 4, 6, 16, generator=gen) for _ in range(3))
    k, v = k.repeat(1, 1, 200, 1), v.repeat(1, 1, 200, 1)  # 1,200 keys: the mask path, not the fall-back
    torch.manual_seed(11)
    dropped = cpu_attention.attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(11)
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(16), dim=-1)
    expected = cpu_dropout.dropout(probs, 0.5) @ v
    torch.testing.assert_close(dropped, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(dropped, F.scaled_dot_product_attention(q, k, v), atol=1e-3)


def test_inference_mode_and_bf16_autocast():
    q, k, v = (t.detach() for t in _qkv((16, 4), 3, 6, 16))
    with torch.inference_mode():
        torch.testing.assert_close(cpu_attention.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cpu_attention.attention(q, k, v, dropout_p=0.1)
    assert out.shape == q.shape and torch.isfinite(out).all()
