"""Switch between the optimised and the reference implementations of the model code.

The optimised paths (e.g. coupling conditioners that compute only the rows they transform, a
critic whose last layer computes only its readout token) give the same numbers as the plain
reference implementations up to float rounding; the reference paths stay in the code so tests
can compare the two and benchmarks can quote the speed-up on the same machine load.

``with reference_paths(): ...`` runs the reference implementation in the current thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["fast_paths_enabled", "reference_paths"]

_state = threading.local()


def fast_paths_enabled() -> bool:
    """True unless the current thread is inside :func:`reference_paths`."""
    return not getattr(_state, "reference", False)


@contextlib.contextmanager
def reference_paths() -> Iterator[None]:
    """Use the reference implementations inside the block (this thread only)."""
    previous = getattr(_state, "reference", False)
    _state.reference = True
    try:
        yield
    finally:
        _state.reference = previous
