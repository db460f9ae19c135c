"""Observation specs: what each observation key holds, and their plain-JSON form.

An observation is a ``dict[str, np.ndarray]``; its keys are declared by an *observation spec*,
``dict[str, ObsKeySpec]`` (docs/architecture.md, "Observations"). The spec travels with the data:
the replay store writes it into its attrs and checkpoints write it into their JSON config, so it
has a plain-JSON form (:func:`spec_to_json` / :func:`spec_from_json`). The JSON side is treated
as untrusted input (it is read back from disk or from another machine) and validated strictly.

Shapes are per step, without the time or batch axes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The observation kinds the model knows how to encode.
OBS_KINDS = ("rgb", "lowdim")

#: dtype each kind must have: images are uint8 as cameras deliver them, low-dim vectors are
#: float32 because that is what the encoders consume.
_KIND_DTYPE = {"rgb": "uint8", "lowdim": "float32"}

#: Bumped whenever the JSON layout changes, so readers can refuse what they do not understand.
SPEC_JSON_VERSION = 1

#: Names used by the per-step episode arrays next to the observation keys (see
#: sernf_sim.evaluation), so an observation may not take them.
RESERVED_STEP_KEYS = frozenset({"action", "reward", "timestamp"})

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass(frozen=True)
class ObsKeySpec:
    """Shape, kind and dtype of one observation key (one step, no time/batch axes)."""

    shape: tuple[int, ...]
    """Per-step shape: ``(h, w, 3)`` for ``"rgb"``, ``(d,)`` for ``"lowdim"``."""

    kind: str
    """``"rgb"`` (camera image) or ``"lowdim"`` (vector of floats)."""

    dtype: str = ""
    """numpy dtype name. Empty means the kind's dtype (``uint8`` for rgb, ``float32`` for
    lowdim); any other value must equal it (kept explicit so the JSON is self-describing)."""

    def __post_init__(self) -> None:
        if self.kind not in OBS_KINDS:
            raise ValueError(f"ObsKeySpec.kind must be one of {OBS_KINDS}, got {self.kind!r}")
        # Accept lists (e.g. from JSON) but store a tuple so the spec is hashable and immutable.
        try:
            shape = tuple(int(s) for s in self.shape)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"ObsKeySpec.shape must be a sequence of ints, got {self.shape!r}"
            ) from e
        if any(s <= 0 for s in shape) or len(shape) == 0:
            raise ValueError(f"ObsKeySpec.shape must be non-empty with positive sizes, got {shape}")
        if self.kind == "rgb" and (len(shape) != 3 or shape[2] != 3):
            raise ValueError(f"rgb observations have shape (h, w, 3), got {shape}")
        if self.kind == "lowdim" and len(shape) != 1:
            raise ValueError(f"lowdim observations have shape (d,), got {shape}")
        expected = _KIND_DTYPE[self.kind]
        dtype = self.dtype or expected
        try:
            dtype = np.dtype(dtype).name
        except TypeError as e:
            raise ValueError(f"ObsKeySpec.dtype {self.dtype!r} is not a numpy dtype") from e
        if dtype != expected:
            raise ValueError(f"{self.kind} observations must be {expected}, got dtype {dtype}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: ``{"shape": [...], "kind": ..., "dtype": ...}``."""
        return {"shape": list(self.shape), "kind": self.kind, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObsKeySpec:
        """Inverse of :meth:`to_dict`; rejects unknown or missing fields."""
        if not isinstance(d, Mapping):
            raise ValueError(f"an ObsKeySpec must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"shape", "kind", "dtype"}
        if unknown:
            raise ValueError(f"unknown ObsKeySpec fields {sorted(unknown)}")
        missing = {"shape", "kind"} - set(d)
        if missing:
            raise ValueError(f"ObsKeySpec is missing fields {sorted(missing)}")
        shape = d["shape"]
        if not isinstance(shape, list | tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in shape
        ):
            raise ValueError(f"ObsKeySpec.shape must be a list of ints, got {shape!r}")
        if not isinstance(d["kind"], str) or not isinstance(d.get("dtype", ""), str):
            raise ValueError("ObsKeySpec.kind and .dtype must be strings")
        return cls(shape=tuple(shape), kind=d["kind"], dtype=d.get("dtype", ""))

    def check(self, array: np.ndarray, leading: int = 0, name: str = "observation") -> None:
        """Raise ``ValueError`` unless ``array`` is ``[*lead, *shape]`` of this dtype.

        ``leading`` is the number of leading batch/time axes (any sizes).
        """
        array = np.asarray(array)
        if array.ndim != leading + len(self.shape) or array.shape[leading:] != self.shape:
            raise ValueError(
                f"{name}: expected shape [{leading} leading axes, *{self.shape}], got {array.shape}"
            )
        if array.dtype != np.dtype(self.dtype):
            raise ValueError(f"{name}: expected dtype {self.dtype}, got {array.dtype}")


ObsSpec = dict[str, ObsKeySpec]
"""An observation spec: key → what it holds."""


def spec_to_json(spec: Mapping[str, ObsKeySpec]) -> dict[str, Any]:
    """Plain-JSON (``json.dumps``-able) form of an observation spec, keys sorted."""
    _check_spec(spec)
    return {
        "version": SPEC_JSON_VERSION,
        "keys": {k: spec[k].to_dict() for k in sorted(spec)},
    }


def spec_from_json(data: Mapping[str, Any] | str) -> ObsSpec:
    """Inverse of :func:`spec_to_json`; also accepts the JSON text itself."""
    if isinstance(data, str | bytes):
        data = json.loads(data)
    if not isinstance(data, Mapping):
        raise ValueError(f"an observation spec must be a JSON object, got {type(data).__name__}")
    if set(data) != {"version", "keys"}:
        raise ValueError(
            f"observation spec JSON needs exactly 'version' and 'keys', got {sorted(data)}"
        )
    if data["version"] != SPEC_JSON_VERSION:
        raise ValueError(
            f"observation spec JSON version {data['version']!r} is not supported "
            f"(this code reads version {SPEC_JSON_VERSION})"
        )
    keys = data["keys"]
    if not isinstance(keys, Mapping) or not keys:
        raise ValueError("observation spec 'keys' must be a non-empty JSON object")
    spec = {}
    for k, v in keys.items():
        try:
            spec[k] = ObsKeySpec.from_dict(v)
        except ValueError as e:
            raise ValueError(f"observation key {k!r}: {e}") from e
    _check_spec(spec)
    return spec


def spec_dumps(spec: Mapping[str, ObsKeySpec]) -> str:
    """JSON text of :func:`spec_to_json` (stable: sorted keys)."""
    return json.dumps(spec_to_json(spec), sort_keys=True)


def check_obs(
    spec: Mapping[str, ObsKeySpec], obs: Mapping[str, np.ndarray], leading: int = 1
) -> None:
    """Validate an observation dict against a spec (same keys, shapes after ``leading`` axes,
    dtypes, and the same leading sizes for every key)."""
    if set(obs) != set(spec):
        raise ValueError(f"observation keys {sorted(obs)} do not match the spec {sorted(spec)}")
    lead_shapes = set()
    for k, s in spec.items():
        s.check(obs[k], leading=leading, name=f"observation {k!r}")
        lead_shapes.add(np.shape(obs[k])[:leading])
    if len(lead_shapes) > 1:
        raise ValueError(f"observation keys disagree on their leading axes: {sorted(lead_shapes)}")


def _check_spec(spec: Mapping[str, ObsKeySpec]) -> None:
    if not spec:
        raise ValueError("an observation spec needs at least one key")
    for k, v in spec.items():
        # Keys become zarr array names (data/<key>) and torch module names in the policy, which
        # must not contain "/" or "." (":" is the policy's cached-feature suffix).
        if not isinstance(k, str) or not _KEY_RE.match(k) or k in RESERVED_STEP_KEYS:
            raise ValueError(
                f"invalid observation key {k!r}: must match {_KEY_RE.pattern} and not be a reserved "
                f"step key {sorted(RESERVED_STEP_KEYS)}"
            )
        if not isinstance(v, ObsKeySpec):
            raise ValueError(f"observation key {k!r}: expected ObsKeySpec, got {type(v).__name__}")
