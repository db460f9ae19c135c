"""ACT's temporal ensembling (Zhao et al. 2023, §IV "temporal ensembling") as an ``act_fn`` for
:func:`sernf_sim.evaluation.rollout_chunked`.

ACT is queried at *every* step and the action executed is a weighted mean of all its
predictions for that step: ``a = sum_i w_i A_i / sum_i w_i`` with ``w_i = exp(-m * i)``, where
``A_0`` is the *oldest* prediction of the step (so older predictions weigh more; m = 0.01 in the
ACT paper and the SERNF paper's G3). That does not fit a decision every H steps, so this
wrapper runs under ``rollout_chunked(..., P, H=1)``: with one action added per decision, the
queue holds exactly P actions at every step, so a decision happens every step.

Timing (docs/design.md §6): a query at step ``s`` sees ``o_s`` and predicts K actions for steps
``s+P .. s+P+K-1`` (ACT is trained on exactly those chunks, see ``sernf_policy.act_actor``);
the action the rollout queues at step ``t`` is executed at ``t+P``. Its predictions are the
queries ``s = t-K+1 .. t`` of the current episode batch, each at index ``t - s``, so the
observation-to-execution delay is the same P steps the chunked actors have. With ``P = 0`` this
is ACT's original scheme (query at ``t``, execute at ``t``).

Pure numpy: ``predict_fn(obs_history, prefix) -> [n, K, A]`` is any predictor (for a policy,
``Policy.predict_full_chunk_batch``). Batches restart the history through the ``reset`` hook
that ``rollout_chunked`` calls at every batch reset.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np

__all__ = ["TemporalEnsemble", "ensemble_weights"]

PredictFn = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
"""``predict_fn(obs_history {k: [n, T, ...]}, prefix [n, P, A]) -> predictions [n, K, A]``."""


def ensemble_weights(count: int, m: float) -> np.ndarray:
    """Normalised weights ``[count]`` of ``count`` predictions ordered oldest first: ``exp(-m i)``."""
    if count < 1:
        raise ValueError(f"need at least one prediction, got {count}")
    w = np.exp(-float(m) * np.arange(count, dtype=np.float64))
    return w / w.sum()


class TemporalEnsemble:
    """Stateful ``act_fn`` returning one ensembled action ``[n, 1, A]`` per call (see module doc).

    Use it with ``rollout_chunked(env, ensemble, T, P, H=1, ...)``.
    """

    def __init__(self, predict_fn: PredictFn, chunk_len: int, m: float = 0.01) -> None:
        if not callable(predict_fn):
            raise ValueError("TemporalEnsemble: predict_fn must be callable")
        if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1:
            raise ValueError(f"TemporalEnsemble: chunk_len must be a positive int, got {chunk_len!r}")
        if not (math.isfinite(m) and m >= 0):
            raise ValueError(f"TemporalEnsemble: m must be a finite number >= 0, got {m!r}")
        self.predict_fn, self.chunk_len, self.m = predict_fn, chunk_len, float(m)
        # The last K predictions, oldest first; older ones no longer cover the current step.
        self._history: deque[np.ndarray] = deque(maxlen=chunk_len)

    def reset(self, obs: dict[str, np.ndarray] | None = None) -> None:
        """Forget all predictions (a new batch of episodes starts)."""
        self._history.clear()

    def __call__(self, obs_history: dict[str, np.ndarray], prefix: np.ndarray) -> np.ndarray:
        prediction = np.asarray(self.predict_fn(obs_history, prefix), dtype=np.float64)
        if prediction.ndim != 3 or prediction.shape[1] != self.chunk_len:
            raise ValueError(f"predict_fn returned {prediction.shape}, expected [n, {self.chunk_len}, A]")
        if self._history and prediction.shape != self._history[-1].shape:
            raise ValueError(f"predict_fn returned {prediction.shape}, earlier {self._history[-1].shape}")
        self._history.append(prediction)
        count = len(self._history)
        weights = ensemble_weights(count, self.m)
        # The j-th oldest prediction was made count-1-j steps ago: its entry for this step.
        stacked = np.stack([p[:, count - 1 - j] for j, p in enumerate(self._history)])  # [count, n, A]
        action = np.tensordot(weights, stacked, axes=1)  # [n, A]
        return action[:, None].astype(np.float32)
