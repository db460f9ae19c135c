"""Changing a transformer actor's dropout rate in place (imitation → RL: 0.5 → 0.1, paper G2).

The Gaussian, flow-matching and ACT actors are built from ``nn.Dropout`` modules and
``nn.MultiheadAttention`` layers, whose attention-weight dropout is a plain float attribute
rather than a module; both must change together, or attention keeps the imitation rate.
"""

from __future__ import annotations

from torch import nn


def set_dropout_rate(actor: nn.Module, p: float) -> float:
    """Set every dropout of ``actor`` to ``p`` (in [0, 1)); returns ``p`` as a float."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    rate = float(p)
    for module in actor.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
        if isinstance(module, nn.MultiheadAttention):
            module.dropout = rate  # attention-weight dropout is a float, not a module
    return rate
