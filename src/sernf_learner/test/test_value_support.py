"""The critic's HL-Gauss support must hold the data's returns: checked before critic stages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_trainer import tiny_config

from sernf_learner.trainer import Trainer
from sernf_learner.value_support import ReturnRange, check_value_support, returns_to_go_range


def test_returns_to_go_are_discounted_per_episode():
    rewards = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    got = returns_to_go_range(rewards, np.array([4, 7]), gamma=0.5)
    # Episode 1: G = [0.5 + 0.125, 1 + 0.25, 0.5, 1]; episode 2: [0.25, 0.5, 1].
    assert got == ReturnRange(low=0.25, high=1.25, episodes=2)
    assert returns_to_go_range(rewards, np.array([4, 7]), gamma=1.0).high == 2.0


@pytest.mark.parametrize(("rewards", "ends", "match"), [
    (np.array([0.0, np.nan]), np.array([2]), "NaN"),
    (np.array([0.0, 1.0]), np.array([3]), "episode_ends"),
    (np.array([[0.0]]), np.array([1]), "1-D"),
])
def test_bad_inputs_are_refused(rewards, ends, match):
    with pytest.raises(ValueError, match=match):
        returns_to_go_range(rewards, ends, gamma=0.9)


def test_a_support_narrower_than_the_returns_fails_loudly_with_the_values_to_set():
    with pytest.raises(ValueError, match=r"returns up to 1\.900 > v_max = 1\.0.*\[0, 2\]"):
        check_value_support(0.0, 1.0, ReturnRange(0.0, 1.9, 3), "demo store")
    with pytest.raises(ValueError, match="v_min"):
        check_value_support(0.0, 1.0, ReturnRange(-0.5, 0.9, 3), "demo store")
    check_value_support(0.0, 2.0, ReturnRange(0.0, 1.9, 3), "demo store")  # fits


def test_trainer_refuses_critic_stages_whose_support_cannot_hold_the_offline_returns(tmp_path):
    cfg = tiny_config()
    cfg.policy = dataclasses.replace(cfg.policy, v_max=0.5)  # point demos reach a return of ~1
    with pytest.raises(ValueError, match="value support"):
        Trainer(cfg, tmp_path / "run", "critic_warmup")
    Trainer(cfg, tmp_path / "il_only", "il")  # imitation alone trains no critic: no check
