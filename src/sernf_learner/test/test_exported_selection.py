"""A stage's exported policy selects chunks the way its critic allows: an IL-only export acts by
its most likely candidate (its critic is untrained); after a critic stage it uses best-of-N.
``act()`` takes a per-call selection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_trainer import tiny_config

from sernf_learner.configs import EvalConfig
from sernf_learner.trainer import Trainer
from sernf_policy.policy import Policy


def _no_eval(cfg):
    cfg.trainer = dataclasses.replace(cfg.trainer, eval=EvalConfig(episodes=0))
    return cfg


def test_il_export_acts_by_likelihood_and_critic_stages_export_best_of_n(tmp_path):
    cfg = _no_eval(tiny_config())
    Trainer(cfg, tmp_path / "il", "il").run()
    il = Policy.load(tmp_path / "il" / "policy_il")
    assert il.critic is not None and il.config.selection == "most_likely"

    Trainer(cfg, tmp_path / "rl", "critic_warmup", init_policy=tmp_path / "il" / "policy_il").run()
    warmed = Policy.load(tmp_path / "rl" / "policy_critic_warmup")
    assert warmed.config.selection == "best_of_n"

    # A policy started from a critic-trained export keeps best-of-N after an IL-only stage.
    Trainer(cfg, tmp_path / "again", "il", init_policy=tmp_path / "rl" / "policy_critic_warmup").run()
    assert Policy.load(tmp_path / "again" / "policy_il").config.selection == "best_of_n"


def test_act_takes_a_per_call_selection(tmp_path):
    cfg = _no_eval(tiny_config())
    Trainer(cfg, tmp_path / "il", "il").run()
    policy = Policy.load(tmp_path / "il" / "policy_il")
    c = policy.config
    obs = {k: np.zeros((c.obs_history, *v.shape), dtype=np.float32) for k, v in c.observation_spec.items()}
    prefix = np.zeros((c.prefix_len, c.action_dim), dtype=np.float32)
    _, likely = policy.act(obs, prefix)
    assert likely["q"] is None  # most_likely: no critic scoring
    _, scored = policy.act(obs, prefix, selection="best_of_n")
    assert scored["q"] is not None
    with pytest.raises(ValueError, match="selection"):
        policy.act(obs, prefix, selection="argmax")
