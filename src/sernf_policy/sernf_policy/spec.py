"""Observation specification shared by the encoders and the policy (docs/architecture.md).

An observation is a ``dict[str, array]``; the *observation spec* declares, per key, its kind
(``"rgb"``: uint8 ``[h, w, 3]`` per step; ``"lowdim"``: float ``[d]`` per step) and its
per-step shape (without the time axis). Batches carry ``[B, T, ...]`` (oldest step first).

``sernf_policy`` must not import ``sernf_sim``, so this module defines its own
:class:`ObsKeySpec`; :func:`parse_observation_spec` also accepts any object with ``kind`` and
``shape`` attributes (e.g. the simulator's spec type) or plain ``{"kind", "shape"}`` dicts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .config_io import build_dataclass

__all__ = ["CACHED_FEATURES_SUFFIX", "ObsKeySpec", "parse_observation_spec"]

#: An observation batch may carry ``f"{key}{CACHED_FEATURES_SUFFIX}"`` instead of the raw
#: images of rgb ``key``: precomputed features of a *frozen* image backbone (see
#: ``encoders.ObservationEncoder``).
CACHED_FEATURES_SUFFIX = ":features"

# Keys become nn.ModuleDict / state-dict names, which must not contain "." (and we keep ":"
# for the cached-feature suffix).
_KEY_RE = re.compile(r"^[A-Za-z0-9_/\-]+$")


@dataclass(frozen=True)
class ObsKeySpec:
    """Declaration of one observation key."""

    #: ``"rgb"`` (uint8 images, per-step shape ``[h, w, 3]``) or ``"lowdim"`` (float ``[d]``).
    kind: Literal["rgb", "lowdim"]
    #: Per-step shape, without the time axis: ``(h, w, 3)`` for rgb, ``(d,)`` for lowdim.
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("rgb", "lowdim"):
            raise ValueError(f"ObsKeySpec.kind must be 'rgb' or 'lowdim', got {self.kind!r}")
        try:
            shape = tuple(int(s) for s in self.shape)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ObsKeySpec.shape must be a sequence of ints, got {self.shape!r}") from exc
        if any(s <= 0 for s in shape):
            raise ValueError(f"ObsKeySpec.shape entries must be positive, got {shape}")
        if self.kind == "rgb" and (len(shape) != 3 or shape[2] != 3):
            raise ValueError(f"rgb ObsKeySpec.shape must be (h, w, 3), got {shape}")
        if self.kind == "lowdim" and len(shape) != 1:
            raise ValueError(f"lowdim ObsKeySpec.shape must be (d,), got {shape}")
        object.__setattr__(self, "shape", shape)

    @classmethod
    def from_dict(cls, data: Any) -> ObsKeySpec:
        """Rebuild from ``{"kind": ..., "shape": [...]}``."""
        return build_dataclass(cls, data)


def parse_observation_spec(spec: Mapping[str, Any]) -> dict[str, ObsKeySpec]:
    """Validate an observation spec and return it as ``dict[str, ObsKeySpec]`` (order kept)."""
    if not isinstance(spec, Mapping) or len(spec) == 0:
        raise ValueError("observation_spec must be a non-empty mapping key -> {kind, shape}")
    out: dict[str, ObsKeySpec] = {}
    for key, value in spec.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(
                f"observation key {key!r} must match {_KEY_RE.pattern} (no '.' or ':')"
            )
        if isinstance(value, ObsKeySpec):
            out[key] = value
        elif isinstance(value, Mapping):
            try:
                out[key] = ObsKeySpec.from_dict(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"observation key {key!r}: {exc}") from exc
        elif hasattr(value, "kind") and hasattr(value, "shape"):
            out[key] = ObsKeySpec(kind=value.kind, shape=tuple(value.shape))
        else:
            raise ValueError(f"observation key {key!r}: expected ObsKeySpec or dict, got {value!r}")
    return out
