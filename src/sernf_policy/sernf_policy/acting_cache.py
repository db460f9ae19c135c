"""Values derived from parameters alone, computed once while acting instead of on every call.

Acting (``Policy.act_batch``) runs under ``torch.inference_mode`` with weights that change only
between calls, if at all; some optimised paths need tensors that depend on the weights alone
(the critics' weights stacked for one batched matmul, a coupling's query-embedding rows, two
heads' first layers concatenated into one). :class:`ParameterKeyedCache` keeps such a value while
acting and rebuilds it as soon as one of its parameters changes: the version counter of a tensor
moves with every in-place update (optimiser or Polyak step, ``load_state_dict``), and a replaced
tensor has another address. Outside inference mode (training, where gradients must reach the
parameters) the value is built on every call, and inside ``torch.compile`` too (the compiler
folds it into its graph; reading version counters would break the graph).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

__all__ = ["ParameterKeyedCache", "eager_acting"]

T = TypeVar("T")


def eager_acting() -> bool:
    """Acting (inference mode) outside torch.compile: where the acting-time fast paths apply.

    is_compiling is asked first: torch.compile cannot trace is_inference_mode_enabled, and that
    graph break made it fall back to eager for the flow's whole coupling loop."""
    return not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()


class ParameterKeyedCache(Generic[T]):
    """One cached value, valid while its parameters are unchanged (see the module docstring)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: T | None = None

    def get(self, params: Sequence[Tensor], build: Callable[[], T]) -> T:
        """``build()``, from the cache when acting and ``params`` are unchanged since it was built."""
        if not eager_acting():
            return build()
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        if self._value is None or key != self._key:
            # Plain tensors even when first built under inference mode: training may follow,
            # and the cached value is only ever read without gradients.
            with torch.inference_mode(False), torch.no_grad():
                self._value, self._key = build(), key
        return self._value
