"""Per-dimension min/max normalisation to ``[-1, 1]`` (paper §IV-B: "actions normalized to
[-1, 1] using dataset statistics").

The flow actor models actions through an elementwise ``atanh``, so data must land *strictly
inside* (-1, 1): the range is widened by a relative ``margin`` on each side. Constant
dimensions (range below ``min_range``) get a range of ``min_range`` centred on their value so
they map to 0 instead of dividing by zero.

The statistics are buffers, so they travel inside the policy checkpoint (docs/design.md §2).
Shapes: data ``[..., A]``; statistics ``[A]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Normalizer"]


class Normalizer(nn.Module):
    """Affine map of each of ``dim`` dimensions from ``[low, high]`` onto ``[-1, 1]``.

    A freshly constructed normalizer is the identity (``low=-1, high=1``); fit it with
    :meth:`fit_` (in place, keeps module identity) or build one with :meth:`from_data`.
    ``normalize`` does not clip: values outside the fitted range map outside ``[-1, 1]`` (the
    flow clamps before ``atanh``); ``unnormalize`` of anything in ``[-1, 1]`` stays in range.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"Normalizer dim must be a positive int, got {dim}")
        self.dim = int(dim)
        self.register_buffer("low", -torch.ones(self.dim))  # [A]
        self.register_buffer("high", torch.ones(self.dim))  # [A]

    # -- fitting ----------------------------------------------------------------------------
    @classmethod
    def from_data(
        cls, data: Any, margin: float = 0.05, min_range: float = 1e-4
    ) -> Normalizer:
        """Build from a dataset array ``[..., A]`` (numpy or tensor)."""
        arr = _as_2d(data, None, "Normalizer.from_data")
        norm = cls(arr.shape[1])
        norm.fit_(arr, margin=margin, min_range=min_range)
        return norm

    def fit_(self, data: Any, margin: float = 0.05, min_range: float = 1e-4) -> Normalizer:
        """Set ``low/high`` from ``data [..., A]``: min/max widened by ``margin`` x range per side.

        ``min_range`` guards constant (or nearly constant) dimensions.
        """
        if not (0.0 <= margin < 1.0):
            raise ValueError(f"Normalizer margin must be in [0, 1), got {margin}")
        if not min_range > 0:
            raise ValueError(f"Normalizer min_range must be > 0, got {min_range}")
        arr = _as_2d(data, self.dim, "Normalizer.fit_")
        lo, hi = arr.min(axis=0), arr.max(axis=0)
        center, half = (lo + hi) / 2.0, (hi - lo) / 2.0
        half = np.maximum(half * (1.0 + 2.0 * margin), min_range / 2.0)
        self._set(center - half, center + half)
        return self

    def _set(self, low: np.ndarray, high: np.ndarray) -> None:
        low_t = torch.as_tensor(low, dtype=self.low.dtype, device=self.low.device)
        high_t = torch.as_tensor(high, dtype=self.high.dtype, device=self.high.device)
        if low_t.shape != (self.dim,) or high_t.shape != (self.dim,):
            raise ValueError(f"Normalizer bounds must have shape ({self.dim},)")
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise ValueError("Normalizer bounds must be finite")
        if not bool((high_t > low_t).all()):
            raise ValueError("Normalizer needs high > low in every dimension")
        self.low.copy_(low_t)
        self.high.copy_(high_t)

    # -- mapping ----------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """Raw ``[..., A]`` -> normalised ``[..., A]`` (data range -> inside ``[-1, 1]``)."""
        self._check(x)
        low, high = self.low.to(x.dtype), self.high.to(x.dtype)
        return 2.0 * (x - low) / (high - low) - 1.0

    def unnormalize(self, y: Tensor) -> Tensor:
        """Normalised ``[..., A]`` -> raw ``[..., A]``."""
        self._check(y)
        low, high = self.low.to(y.dtype), self.high.to(y.dtype)
        return (y + 1.0) / 2.0 * (high - low) + low

    def _check(self, x: Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim < 1 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"Normalizer expects a tensor [..., {self.dim}], got {shape}")

    # -- plain-dict form (e.g. for logs / YAML); checkpoints use the module state_dict ---------
    def to_dict(self) -> dict[str, list[float]]:
        """``{"low": [...], "high": [...]}`` as plain floats."""
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`; validates shapes and finiteness."""
        if not isinstance(data, Mapping) or set(data) != {"low", "high"}:
            raise ValueError("Normalizer.from_dict expects exactly the keys 'low' and 'high'")
        low = np.asarray(data["low"], dtype=np.float64)
        high = np.asarray(data["high"], dtype=np.float64)
        if low.ndim != 1 or low.shape != high.shape or low.size == 0:
            raise ValueError(f"Normalizer low/high must be equal-length 1-D, got {low.shape}, {high.shape}")
        norm = cls(low.shape[0])
        norm._set(low, high)
        return norm

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _as_2d(data: Any, dim: int | None, where: str) -> np.ndarray:
    """``[..., A]`` (numpy / tensor / nested lists) -> float64 ``[n, A]``, validated."""
    if torch.is_tensor(data):
        data = data.detach().cpu().numpy()
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] < 1:
        raise ValueError(f"{where}: expected an array [..., A], got shape {arr.shape}")
    if dim is not None and arr.shape[-1] != dim:
        raise ValueError(f"{where}: expected last dim {dim}, got shape {arr.shape}")
    arr = arr.reshape(-1, arr.shape[-1])
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: data is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: data contains NaN or inf")
    return arr
