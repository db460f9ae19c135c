"""bench/hand_strategy_split.py reads each demonstration's strategy from its recorded object
states: the clean expert told to pick the box (or the cylinder) is labelled box (cylinder) in
every episode."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sernf_sim.hand_pick_place.demos import hand_demo_dataset
from sernf_sim.hand_pick_place.expert import HandExpertConfig


@pytest.mark.parametrize(("box_prob", "label"), [(1.0, 0), (0.0, 1)])
def test_the_moved_object_is_the_strategy(bench_script, box_prob, label):
    bench = bench_script("hand_strategy_split")
    expert = HandExpertConfig.from_quality(1.0, box_prob=box_prob)
    episodes = hand_demo_dataset(n=3, seed=4, expert_config=expert, num_envs=3)
    assert all(meta["success"] for _, meta in episodes)
    snapshot = SimpleNamespace(
        arrays={"object_state": np.concatenate([steps["object_state"] for steps, _ in episodes])},
        episodes=[{"length": len(steps["action"])} for steps, _ in episodes],
    )
    assert bench.demo_strategies(snapshot).tolist() == [label] * 3
