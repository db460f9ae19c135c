"""Plain-JSON round trip for the typed config dataclasses (docs/design.md §2 "one config source").

Checkpoints (``config.json``) and node parameters carry configs as plain JSON values. This
module turns a config dataclass into nested dicts / lists / scalars and rebuilds it *through
the known class only*: every config class names its nested config fields explicitly in its own
``from_dict``, and the caller always says which class to build. Nothing is ever looked up or
constructed from a string found in the data (no ``eval``, no import-by-name, no pickle).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["build_dataclass", "to_jsonable"]

T = TypeVar("T")


def to_jsonable(value: Any) -> Any:
    """Convert a (possibly nested) config value into JSON-compatible plain values.

    Dataclasses become dicts of their fields, tuples become lists, mapping keys must be
    strings. Non-finite floats are rejected because JSON cannot carry them faithfully.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"config mapping keys must be strings, got {key!r}")
            out[key] = to_jsonable(item)
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"config value {value!r} is not finite and cannot be stored as JSON")
        return value
    raise ValueError(f"config value of type {type(value).__name__} is not JSON-serialisable")


def build_dataclass(
    cls: type[T],
    data: Any,
    nested: Mapping[str, Callable[[Any], Any]] | None = None,
) -> T:
    """Rebuild dataclass ``cls`` from the plain dict ``data``.

    ``nested`` maps field names to the builder for that field's value (e.g. another config's
    ``from_dict``); all other fields are passed through as plain values and validated by the
    class' own ``__post_init__``. Unknown or missing fields raise ``ValueError`` naming them.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{cls.__name__}: missing required field(s) {missing}")
    nested = nested or {}
    kwargs = {}
    for name, value in data.items():
        builder = nested.get(name)
        kwargs[name] = builder(value) if builder is not None and value is not None else value
    return cls(**kwargs)
