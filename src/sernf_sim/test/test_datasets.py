"""Expert demonstration datasets: format, determinism and the mixed-quality point dataset."""

import json
from functools import partial

import numpy as np

from sernf_sim.datasets import MIXED_POINT_QUALITIES, generate_demos, mixed_point_dataset
from sernf_sim.point_expert import ExpertConfig, PointExpert
from sernf_sim.point_task import PointTask


def test_mixed_point_dataset_has_intended_success_band_and_real_failures():
    episodes = mixed_point_dataset(n=200, seed=0)
    meta = [m for _, m in episodes]
    assert len(episodes) == 200
    success = np.mean([m["success"] for m in meta])
    # Intended ~53 % (expected value over seeds); allow sampling noise of n=200.
    assert 0.45 <= success <= 0.65, success
    timeouts = sum(m["extra"]["truncated"] for m in meta)
    collisions = sum(m["terminated"] and not m["success"] for m in meta)
    assert timeouts >= 20 and collisions >= 10
    assert sum(m["success"] for m in meta) + timeouts + collisions == 200
    # Every quality level is represented and episodes are shuffled across them.
    qualities = [m["extra"]["expert_quality"] for m in meta]
    assert sorted(set(qualities)) == sorted(MIXED_POINT_QUALITIES)
    assert qualities[:50] != sorted(qualities[:50])
    assert all(m["source"] == "demo" for m in meta)


def test_episode_format_matches_the_replay_contract():
    episodes = mixed_point_dataset(n=12, seed=1)
    for steps, meta in episodes:
        L = meta["extra"]["length"]
        assert set(steps) == {"state", "action", "reward", "timestamp"}
        assert steps["state"].shape == (L, 6) and steps["state"].dtype == np.float32
        assert steps["action"].shape == (L, 2) and steps["action"].dtype == np.float32
        assert steps["reward"].shape == (L,) and steps["timestamp"].shape == (L,)
        assert float(steps["reward"].sum()) == float(meta["success"])
        # Sparse reward: only the last step of a successful episode is rewarded.
        assert not steps["reward"][:-1].any()
        assert np.linalg.norm(steps["action"], axis=-1).max() <= 0.05 * (1 + 1e-6)
        json.dumps(meta)


def test_generate_demos_is_deterministic_and_labels_source():
    def run():
        expert = PointExpert(config=ExpertConfig.from_quality(0.5), seed=4)
        return generate_demos(
            partial(PointTask, num_envs=5), expert, 7, 2, 2, 8, seed=9, extra_metadata={"tag": "x"}
        )

    a, b = run(), run()
    assert len(a) == 7
    for (sa, ma), (sb, mb) in zip(a, b, strict=True):
        assert ma == mb and ma["source"] == "demo" and ma["extra"]["tag"] == "x"
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])
    c = mixed_point_dataset(n=20, seed=5)
    d = mixed_point_dataset(n=20, seed=5)
    assert [m for _, m in c] == [m for _, m in d]


def _passes_above(steps) -> bool:
    """Whether the successful episode's path crosses x = 0 (the obstacle's centre) above it."""
    xy = steps["state"][:, :2]
    crossing = int(np.argmax(xy[:, 0] >= 0.0))
    return bool(xy[crossing, 1] > 0.0)


def test_mixed_point_dataset_route_probability_selects_the_routes():
    def above(prob):
        episodes = mixed_point_dataset(n=60, seed=2, upper_route_prob=prob)
        return [_passes_above(s) for s, m in episodes if m["success"]]

    # Successful episodes only: a low-quality expert may switch routes once and then time out.
    both, upper, lower = above(0.5), above(1.0), above(0.0)
    assert 0.2 <= np.mean(both) <= 0.8 and len(both) >= 20
    assert np.mean(upper) >= 0.9 and np.mean(lower) <= 0.1
    # The default is both routes, drawn exactly as before the knob existed.
    a, b = mixed_point_dataset(n=8, seed=3), mixed_point_dataset(n=8, seed=3, upper_route_prob=0.5)
    for (sa, _), (sb, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(sa["action"], sb["action"])
