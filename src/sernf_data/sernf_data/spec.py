"""Observation specification shared by the store, the encoders and the policy (docs/architecture.md).

An observation is a ``dict[str, array]``; the *observation spec* declares, per key, its kind
(``"rgb"``: uint8 ``[h, w, 3]`` per step; ``"lowdim"``: float ``[d]`` per step) and its
per-step shape (without the time axis). Batches carry ``[B, T, ...]`` (oldest step first).

This is the one definition of the observation contract: the simulator's tasks declare their
observations with it, the episode store records it, and checkpoints carry it. It is torch-free
(``import sernf_data.spec`` does not import torch).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["CACHED_FEATURES_SUFFIX", "KEY_PATTERN", "STEP_ARRAY_KEYS", "ObsKeySpec", "check_observations", "parse_observation_spec"]

#: An observation batch may carry ``f"{key}{CACHED_FEATURES_SUFFIX}"`` instead of the raw
#: images of rgb ``key``: precomputed features of a *frozen* image backbone (see
#: ``encoders.ObservationEncoder``).
CACHED_FEATURES_SUFFIX = ":features"

# Keys become nn.ModuleDict / state-dict names (no "."), zarr array names in the replay (no
# "/"), and we keep ":" for the cached-feature suffix.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")

_KIND_DTYPE = {"rgb": "uint8", "lowdim": "float32"}

#: Per-step arrays an episode carries next to its observation keys (docs/design.md §5), so no
#: observation may take these names.
STEP_ARRAY_KEYS = ("action", "reward", "timestamp")


@dataclass(frozen=True)
class ObsKeySpec:
    """Declaration of one observation key: per-step shape and kind (the dtype follows)."""

    #: Per-step shape, without the time axis: ``(h, w, 3)`` for rgb, ``(d,)`` for lowdim.
    shape: tuple[int, ...]
    #: ``"rgb"`` (uint8 images, per-step shape ``[h, w, 3]``) or ``"lowdim"`` (float32 ``[d]``).
    kind: Literal["rgb", "lowdim"]
    #: Physical lower bound per dimension (lowdim only; e.g. joint ranges minus a margin, the
    #: workspace box): a live observation outside ``[low, high]`` is refused (the policy node
    #: holds). None: no bound. Not part of the schema: stores and checkpoints that differ
    #: only in bounds are compatible (compare=False).
    low: tuple[float, ...] | None = field(default=None, compare=False)
    #: Physical upper bound per dimension (see ``low``).
    high: tuple[float, ...] | None = field(default=None, compare=False)
    #: Index of a unit quaternion ``(w, x, y, z)`` inside the vector (e.g. 3 for a pose
    #: ``[x, y, z, qw, qx, qy, qz]``); its norm is checked on live observations. None: none.
    quaternion_at: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _KIND_DTYPE:
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
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.kind != "lowdim":
                raise ValueError(f"ObsKeySpec.{name}: bounds are for lowdim keys only")
            try:
                bound = tuple(float(v) for v in value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"ObsKeySpec.{name} must be a sequence of numbers, got {value!r}") from exc
            if len(bound) != shape[0] or any(math.isnan(v) for v in bound):
                raise ValueError(f"ObsKeySpec.{name} needs {shape[0]} numbers (not NaN), got {value!r}")
            object.__setattr__(self, name, bound)
        if self.low is not None and self.high is not None and any(
                lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError(f"ObsKeySpec: low {self.low} exceeds high {self.high} somewhere")
        if self.quaternion_at is not None:
            q = self.quaternion_at
            if self.kind != "lowdim" or isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= shape[0] - 4:
                raise ValueError(f"ObsKeySpec.quaternion_at must index 4 entries of a lowdim vector, got {q!r}")

    @property
    def dtype(self) -> np.dtype:
        """Storage / transport dtype: uint8 images as cameras deliver them, float32 vectors."""
        return np.dtype(_KIND_DTYPE[self.kind])

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form ``{"shape": [...], "kind": ...}`` (plus ``low``/``high``/
        ``quaternion_at`` when set, so specs without bounds keep their old form)."""
        out: dict[str, Any] = {"shape": list(self.shape), "kind": self.kind}
        for name in ("low", "high"):
            if getattr(self, name) is not None:
                out[name] = list(getattr(self, name))
        if self.quaternion_at is not None:
            out["quaternion_at"] = self.quaternion_at
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ObsKeySpec:
        """Rebuild from ``{"kind": ..., "shape": [...]}`` (untrusted: validated).

        Unknown or missing fields raise ``ValueError`` naming them (the same rule as the
        config round trip in ``sernf_policy.config_io``, kept here so the data layer does not
        depend on the model package)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
        missing = sorted(name for name, f in fields.items()
                         if name not in data and f.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"{cls.__name__}: missing required field(s) {missing}")
        return cls(**data)

    def check(self, array: Any, leading: int = 0, name: str = "observation") -> None:
        """Raise ``ValueError`` unless ``array`` is ``[*lead, *shape]`` of this key's dtype
        (``leading`` = number of batch/time axes in front, any sizes)."""
        array = np.asarray(array)
        if array.ndim != leading + len(self.shape) or array.shape[leading:] != self.shape:
            raise ValueError(f"{name}: expected shape [{leading} leading axes, *{self.shape}], got {array.shape}")
        if array.dtype != self.dtype:
            raise ValueError(f"{name}: expected dtype {self.dtype}, got {array.dtype}")


def check_observations(spec: Mapping[str, ObsKeySpec], obs: Mapping[str, Any], leading: int = 1) -> None:
    """Validate an observation dict against a spec: same keys, per-key shape after ``leading``
    axes and dtype, and the same leading sizes for every key."""
    if set(obs) != set(spec):
        raise ValueError(f"observation keys {sorted(obs)} do not match the spec {sorted(spec)}")
    lead_shapes = set()
    for key, key_spec in spec.items():
        key_spec.check(obs[key], leading=leading, name=f"observation {key!r}")
        lead_shapes.add(np.shape(obs[key])[:leading])
    if len(lead_shapes) > 1:
        raise ValueError(f"observation keys disagree on their leading axes: {sorted(lead_shapes)}")


def parse_observation_spec(spec: Mapping[str, Any]) -> dict[str, ObsKeySpec]:
    """Validate an observation spec and return it as ``dict[str, ObsKeySpec]`` (order kept)."""
    if not isinstance(spec, Mapping) or len(spec) == 0:
        raise ValueError("observation_spec must be a non-empty mapping key -> {kind, shape}")
    out: dict[str, ObsKeySpec] = {}
    for key, value in spec.items():
        if key in STEP_ARRAY_KEYS:
            raise ValueError(f"observation key {key!r} is reserved for an episode's per-step arrays")
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            raise ValueError(
                f"observation key {key!r} must match {KEY_PATTERN.pattern} (no '.', '/' or ':')"
            )
        if isinstance(value, ObsKeySpec):
            out[key] = value
        elif isinstance(value, Mapping):
            try:
                out[key] = ObsKeySpec.from_dict(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"observation key {key!r}: {exc}") from exc
        elif hasattr(value, "kind") and hasattr(value, "shape"):
            out[key] = ObsKeySpec(shape=tuple(value.shape), kind=value.kind, low=getattr(value, "low", None),
                                  high=getattr(value, "high", None), quaternion_at=getattr(value, "quaternion_at", None))
        else:
            raise ValueError(f"observation key {key!r}: expected ObsKeySpec or dict, got {value!r}")
    return out
