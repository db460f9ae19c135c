"""Mixed-precision training: bf16 matrix products, float32 densities and weights.

``autocast(precision, device)`` is the context the learners run their forward passes and
losses in (``trainer.precision``). ``"fp32"`` is a no-op. Under ``"bf16"``, torch's autocast
runs the matrix products (linear layers, attention, convolutions) in bfloat16, while the
weights, their gradients and the optimiser state stay float32, as in torch's automatic mixed
precision. Backward passes and optimiser steps run outside the context, as torch recommends.

Autocast on a CPU leaves softmax, log-softmax, ``exp`` and sums in whatever dtype their input
has, so a bf16 matmul output would carry its ~3 significant digits into a log-density or a
cross-entropy. The model therefore lifts the outputs that enter a density or a loss back to
float32 with :func:`full_precision`: the flow's coupling scales and shifts (the coupling
arithmetic and its log-determinant then run in the chunk's own float32), the mixture base's
parameters, the Gaussian actor's mean and scale, the critic's value logits (HL-Gauss
cross-entropy and expected value), the flow-matching velocity and ACT's outputs. In float32 and
float64 :func:`full_precision` returns its input, so full-precision runs are unchanged.

Acting never runs under autocast: bf16 picked other candidates than float32 in docs/performance.md's
measurements and was not faster for one observation.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16")
"""``fp32``: everything in float32 (the default). ``bf16``: autocast to bfloat16 (see module)."""

_REDUCED = (torch.bfloat16, torch.float16)


def check_precision(precision: object, what: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming ``what``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {PRECISIONS}, got {precision!r}")
    return str(precision)


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a training forward pass and its loss run in (module docstring)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when autocast left it in a reduced precision; otherwise ``t`` itself."""
    return t.float() if t.dtype in _REDUCED else t


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` that normalises in float32 under bf16 autocast (as mixed-precision
    transformers do; torch's fused kernel also needs input and weight of one dtype). The same
    module, parameters and numbers as ``nn.RMSNorm`` in float32 and float64."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(full_precision(x))
