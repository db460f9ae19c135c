"""HL-Gauss categorical value representation (paper §IV-C, Imani et al. [22], Farebrother et al.).

The critic predicts ``Z`` logits over a fixed support of bins on ``[v_min, v_max]``. A scalar
target ``y`` becomes the probability mass that a Gaussian ``N(y, sigma^2)`` puts in each bin
(via the Gaussian CDF, i.e. ``erf``), renormalised by the mass inside the support, and the
critic is trained by cross-entropy to it. ``sigma = sigma_ratio x bin width`` with the paper's
(Tarasov et al. [48]) ratio 0.75: enough smoothing to spread the target over ~3 bins, which is
what makes the classification loss a stable stand-in for regression.

Dimension names: ``Z`` bins; ``...`` any leading batch shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .mixed_precision import full_precision

__all__ = ["HLGauss"]


class HLGauss(nn.Module):
    """Histogram-loss with Gaussian targets over ``num_bins`` equal bins on ``[v_min, v_max]``.

    Holds the bin edges ``[Z+1]`` and centers ``[Z]`` as buffers, so it follows the critic's
    device / dtype and is stored in checkpoints.
    """

    def __init__(
        self, v_min: float, v_max: float, num_bins: int = 101, sigma_ratio: float = 0.75
    ) -> None:
        super().__init__()
        v_min, v_max = float(v_min), float(v_max)
        if not (math.isfinite(v_min) and math.isfinite(v_max)) or not v_min < v_max:
            raise ValueError(f"HLGauss needs finite v_min < v_max, got [{v_min}, {v_max}]")
        if int(num_bins) != num_bins or num_bins < 2:
            raise ValueError(f"HLGauss num_bins must be an int >= 2, got {num_bins}")
        if not (math.isfinite(sigma_ratio) and sigma_ratio > 0):
            raise ValueError(f"HLGauss sigma_ratio must be > 0, got {sigma_ratio}")
        self.v_min, self.v_max, self.num_bins = v_min, v_max, int(num_bins)
        self.sigma_ratio = float(sigma_ratio)
        self.bin_width = (v_max - v_min) / self.num_bins
        #: Gaussian std of the target distribution (value units).
        self.sigma = self.sigma_ratio * self.bin_width
        edges = torch.linspace(v_min, v_max, self.num_bins + 1, dtype=torch.float64)
        self.register_buffer("edges", edges.float())  # [Z+1]
        self.register_buffer("centers", ((edges[:-1] + edges[1:]) / 2).float())  # [Z]

    def to_probs(self, values: Tensor) -> Tensor:
        """``values [...]`` -> target probabilities ``[..., Z]`` (rows sum to 1).

        Targets outside the support are clipped to ``[v_min, v_max]`` first (paper §6: "targets
        clipped to the support"); the Gaussian mass falling outside the support is dropped and
        the rest renormalised, so near the edges the implied value is biased *inward*.
        """
        y = values.to(self.edges.dtype).clamp(self.v_min, self.v_max).unsqueeze(-1)  # [..., 1]
        cdf = torch.special.erf((self.edges - y) / (math.sqrt(2.0) * self.sigma))  # [..., Z+1]
        mass = cdf[..., 1:] - cdf[..., :-1]  # [..., Z]  (twice the probability; cancels below)
        total = cdf[..., -1:] - cdf[..., :1]  # [..., 1]  >= erf(bin/(2*sqrt2*sigma)) > 0
        return (mass / total).clamp_min(0.0)

    def to_value(self, logits: Tensor) -> Tensor:
        """``logits [..., Z]`` -> expected value ``[...]`` under ``softmax(logits)``."""
        self._check_bins(logits)
        probs = torch.softmax(full_precision(logits), dim=-1)  # bf16 training: float32 values
        return (probs * self.centers.to(probs.dtype)).sum(-1)

    def loss(self, logits: Tensor, target_values: Tensor) -> Tensor:
        """Cross-entropy ``[...]`` between ``logits [..., Z]`` and HL-Gauss targets of ``[...]``."""
        self._check_bins(logits)
        if logits.shape[:-1] != target_values.shape:
            raise ValueError(
                f"HLGauss.loss: logits {tuple(logits.shape)} need targets of shape "
                f"{tuple(logits.shape[:-1])}, got {tuple(target_values.shape)}"
            )
        logits = full_precision(logits)  # bf16 training: the cross-entropy in float32
        target = self.to_probs(target_values.detach()).to(logits.dtype)
        return -(target * torch.log_softmax(logits, dim=-1)).sum(-1)

    def _check_bins(self, logits: Tensor) -> None:
        if logits.shape[-1] != self.num_bins:
            raise ValueError(
                f"HLGauss expects {self.num_bins} logits in the last dim, got {tuple(logits.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"v_min={self.v_min}, v_max={self.v_max}, num_bins={self.num_bins}, "
            f"sigma_ratio={self.sigma_ratio}"
        )
