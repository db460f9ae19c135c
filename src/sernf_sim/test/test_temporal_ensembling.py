"""ACT's temporal ensembling as a rollout act_fn: weights (oldest prediction heaviest), which
prediction entry each past query contributes, the window of K queries, resets, and the timing
inside rollout_chunked (queried every step, executed P steps later) on the point task."""

from __future__ import annotations

import numpy as np
import pytest

from sernf_sim.evaluation import rollout_chunked
from sernf_sim.point_task import PointTask
from sernf_sim.temporal_ensembling import TemporalEnsemble, ensemble_weights


class ScriptedPredictor:
    """Query number ``s`` (counted from the last reset) predicts ``[s, 100 + i]`` for entry ``i``
    of its chunk, scaled by ``scale``, for every env."""

    def __init__(self, num_envs: int, chunk_len: int, scale: float = 1.0) -> None:
        self.n, self.k, self.scale, self.queries = num_envs, chunk_len, scale, 0

    def __call__(self, obs: dict, prefix: np.ndarray) -> np.ndarray:
        i = np.arange(self.k, dtype=np.float64)
        chunk = np.stack([np.full(self.k, float(self.queries)), 100.0 + i], axis=-1) * self.scale
        self.queries += 1
        return np.repeat(chunk[None], self.n, axis=0)


def expected_action(t: int, chunk_len: int, m: float) -> np.ndarray:
    """The ensembled action of query ``t`` for ScriptedPredictor: queries s = t-K+1 .. t, oldest first."""
    first = max(0, t - chunk_len + 1)
    queries = np.arange(first, t + 1)
    w = np.exp(-m * np.arange(len(queries)))
    w /= w.sum()
    return np.array([np.dot(w, queries), np.dot(w, 100.0 + (t - queries))])


def test_weights_favour_the_oldest_prediction():
    w = ensemble_weights(3, 0.01)
    assert np.allclose(w, np.exp(-0.01 * np.arange(3)) / np.exp(-0.01 * np.arange(3)).sum())
    assert w[0] > w[1] > w[2] and w.sum() == pytest.approx(1.0)
    assert np.allclose(ensemble_weights(4, 0.0), 0.25)  # m = 0: plain mean
    with pytest.raises(ValueError):
        ensemble_weights(0, 0.01)


def test_each_step_averages_the_overlapping_entries_of_the_last_k_queries():
    k, m = 4, 0.5  # a large m makes the weights clearly unequal
    predictor = ScriptedPredictor(num_envs=2, chunk_len=k)
    ensemble = TemporalEnsemble(predictor, chunk_len=k, m=m)
    obs, prefix = {"state": np.zeros((2, 1, 3))}, np.zeros((2, 0, 2))
    for t in range(9):  # past the window: only the last K queries cover a step
        action = ensemble(obs, prefix)
        assert action.shape == (2, 1, 2) and action.dtype == np.float32
        assert np.allclose(action[0, 0], expected_action(t, k, m)), t
        assert np.array_equal(action[0], action[1])
    # Step 0: the first query alone, its entry 0. Step 1: entry 1 of query 0 (weight 1) and
    # entry 0 of query 1 (weight e^-m).
    ensemble.reset()
    predictor.queries = 0
    assert np.allclose(ensemble(obs, prefix)[0, 0], [0.0, 100.0])
    w = np.array([1.0, np.exp(-m)]) / (1.0 + np.exp(-m))
    assert np.allclose(ensemble(obs, prefix)[0, 0], [w[1] * 1.0, w[0] * 101.0 + w[1] * 100.0])


def test_bad_predictions_are_refused():
    ensemble = TemporalEnsemble(lambda obs, prefix: np.zeros((2, 3, 2)), chunk_len=4)
    with pytest.raises(ValueError, match="expected"):
        ensemble({}, np.zeros((2, 0, 2)))
    flip = iter([np.zeros((2, 4, 2)), np.zeros((3, 4, 2))])
    ensemble = TemporalEnsemble(lambda obs, prefix: next(flip), chunk_len=4)
    ensemble({}, np.zeros((2, 0, 2)))
    with pytest.raises(ValueError, match="earlier"):
        ensemble({}, np.zeros((3, 0, 2)))
    for bad in ({"chunk_len": 0}, {"chunk_len": 4, "m": -1.0}, {"chunk_len": 4, "m": float("nan")}):
        with pytest.raises(ValueError):
            TemporalEnsemble(lambda obs, prefix: None, **bad)


def test_rollout_queries_every_step_and_executes_each_ensembled_action_p_steps_later():
    """rollout_chunked with H = 1: one decision per step; the action decided at step t is
    executed (and recorded) at t + P, after the P hold actions of the episode start."""
    k, m, p, scale = 5, 0.3, 2, 1e-4  # small commands: under the task's max_step, nothing clipped
    env = PointTask(num_envs=2, seed=0)
    predictor = ScriptedPredictor(num_envs=2, chunk_len=k, scale=scale)
    ensemble = TemporalEnsemble(predictor, chunk_len=k, m=m)
    result = rollout_chunked(env, ensemble, T=2, P=p, H=1, num_episodes=2, seed=0, record=True)
    steps, _ = result.episodes[0]
    executed = steps["action"]
    length = len(executed)
    assert length > p + k and predictor.queries >= length - p  # a query every step
    assert np.array_equal(executed[:p], np.zeros((p, 2)))  # the hold prefix of the first decision
    for u in range(p, length):
        assert np.allclose(executed[u], scale * expected_action(u - p, k, m), atol=1e-7), u
