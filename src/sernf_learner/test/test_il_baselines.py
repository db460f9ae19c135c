"""The imitation baselines (``policy.actor: flow_matching`` / ``act``) in the learner: the model
the trainer builds (no critic, one sample), the IL stage's loss dispatch on the same sampler (ACT
on its own 20-action chunks), resumption, refusal of the RL stages, and how evaluation executes
ACT (temporal ensembling, a query every step) versus the other actors (a chunk every H steps)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sernf_learner.configs import (
    DataConfig,
    EnvConfig,
    EvalConfig,
    PolicySpec,
    RunConfig,
    TrainerConfig,
)
from sernf_learner.il import ILConfig, ImitationLearning, imitation_loss
from sernf_learner.online_rl import evaluate_policy, policy_act_fn
from sernf_learner.trainer import Trainer, build_policy_config
from sernf_policy.policy import Policy
from sernf_sim.evaluation import rollout_chunked
from sernf_sim.point_task import PointTask
from sernf_sim.temporal_ensembling import TemporalEnsemble

SPEC = {"pos": {"kind": "lowdim", "shape": [2]}}


def tiny_run_config(actor: str, **policy) -> RunConfig:
    return RunConfig(
        seed=3,
        policy=PolicySpec(obs_history=1, prefix_len=2, horizon=4, token_dim=16, flow_layers=2, flow_hidden=16,
                          flow_heads=2, fm_blocks=1, act_layers=1, act_latent_dim=4, actor=actor, **policy),
        data=DataConfig(generate_point_demos=4, gamma=0.99),
        env=EnvConfig(num_envs=2),
        trainer=TrainerConfig(checkpoint_every=2, log_every=1, tensorboard=False, progress=False,
                              eval=EvalConfig(episodes=2, num_envs=2, num_samples=4, stages=["il"])),
        il=ILConfig(steps=4, batch_size=16, dropout=0.0),
    )


def test_trainer_builds_critic_free_single_sample_baselines_from_the_spec():
    fm = build_policy_config(tiny_run_config("flow_matching", fm_steps=5), SPEC, 2)
    assert fm.actor == "flow_matching" and fm.critic is None and fm.flow is None and fm.selection == "single"
    f = fm.flow_matching
    assert (f.num_blocks, f.hidden_dim, f.num_heads, f.num_steps, f.horizon, f.context_dim) == (1, 16, 2, 5, 4, 16)
    act = build_policy_config(tiny_run_config("act", act_kl_weight=3.0), SPEC, 2)
    a = act.act
    assert act.critic is None and act.selection == "single" and act.imitation_horizon == 20
    assert (a.chunk_len, a.latent_dim, a.encoder_layers, a.decoder_layers, a.hidden_dim, a.kl_weight) == (
        20, 4, 1, 1, 16, 3.0)
    assert PolicySpec().act_chunk_len == 20 and PolicySpec().fm_steps == 8 and PolicySpec().fm_blocks == 4
    for bad in (dict(actor="act", horizon=21), dict(act_kl_weight=-1.0), dict(act_ensemble_m=float("nan")),
                dict(fm_steps=0), dict(act_chunk_len=True)):
        with pytest.raises(ValueError, match="PolicySpec"):
            PolicySpec(**bad)


@pytest.mark.parametrize("actor", ["flow_matching", "act"])
def test_il_stage_trains_the_baseline_on_the_same_sampler_and_resumes_exactly(tmp_path, actor):
    cfg = tiny_run_config(actor)
    trainer = Trainer(cfg, tmp_path / "straight", "il")
    stage = trainer._build_stage("il", 0)
    # ACT imitates its own 20-action chunks from the same decision steps (same T, P, gamma).
    want_h = 20 if actor == "act" else 4
    assert stage.sampler.timing == dataclasses.replace(trainer.timing, H=want_h)
    batch = stage.sampler.sample()
    assert batch["chunk"].shape == (16, want_h, 2)
    summary = trainer.run()
    result = summary["results"]["il"]
    assert result["selection"] == "single" and result["num_episodes"] == 2
    exported = Policy.load(tmp_path / "straight" / "policy_il")
    assert exported.config.actor == actor and exported.config.selection == "single"

    resumed = Trainer(cfg, tmp_path / "resumed", "il")
    resumed.run(stop_after=2)
    Trainer(cfg, tmp_path / "resumed", "il", resume=True).run()
    a, b = exported.state_dict(), Policy.load(tmp_path / "resumed" / "policy_il").state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("actor", ["flow_matching", "act"])
def test_imitation_loss_goes_down_and_only_the_actor_learns(tmp_path, actor):
    torch.manual_seed(0)
    trainer = Trainer(tiny_run_config(actor), tmp_path, "il")
    batch = trainer._build_stage("il", 0).sampler.sample()
    learner = ImitationLearning(trainer.policy, ILConfig(steps=1, batch_size=16, lr=3e-3, dropout=0.0))
    first = learner.update(batch)
    for _ in range(40):
        last = learner.update(batch)
    assert "il/nll" not in first and np.isfinite(first["il/loss"]) and first["il/grad_norm"] > 0
    assert last["il/loss"] < 0.7 * first["il/loss"], (first, last)
    if actor == "act":
        assert {"il/act_l1", "il/act_kl"} <= set(last)
    wrong = dict(batch, chunk=batch["chunk"][:, :3])
    with pytest.raises(ValueError, match="imitates"):
        imitation_loss(trainer.policy, wrong)


@pytest.mark.parametrize("stage", ["critic_warmup", "offline_rl", "online_rl", "distill"])
@pytest.mark.parametrize("actor", ["flow_matching", "act"])
def test_stages_that_need_a_likelihood_refuse_the_imitation_only_baselines(tmp_path, actor, stage):
    trainer = Trainer(tiny_run_config(actor), tmp_path, [stage])
    with pytest.raises(ValueError, match="imitation-only"):
        trainer.run()


class RecordingPointTask(PointTask):
    """The point task, keeping every action it is stepped with (to compare executions)."""

    def __init__(self) -> None:
        super().__init__(num_envs=2, seed=0)
        self.actions: list[np.ndarray] = []

    def step(self, actions):
        self.actions.append(np.array(actions, copy=True))
        return super().step(actions)


def test_evaluation_runs_act_with_temporal_ensembling_and_the_others_by_chunks(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_run_config("act", act_chunk_len=6)
    policy = Trainer(cfg, tmp_path, "il").policy
    with torch.no_grad():  # a context-dependent, non-trivial prediction
        policy.flow.head.weight.mul_(30.0)
    t, p = policy.config.obs_history, policy.config.prefix_len

    def executed(run) -> np.ndarray:
        env = RecordingPointTask()
        run(env)
        return np.stack(env.actions)

    def evaluate(env):
        return evaluate_policy(policy, env, 2, num_samples=4, sigma=0.7, seed=5)

    got = executed(evaluate)
    every_step = executed(lambda env: rollout_chunked(
        env, TemporalEnsemble(policy.predict_full_chunk_batch, 6, policy.config.act.ensemble_m), t, p, 1, 2,
        seed=5, record=False))
    chunked = executed(lambda env: rollout_chunked(
        env, policy_act_fn(policy, 4, 0.7), t, p, policy.config.horizon, 2, seed=5, record=False))
    assert np.array_equal(got, every_step)
    assert got.shape != chunked.shape or not np.allclose(got, chunked)  # a different execution
    policy.config.act.temporal_ensembling = False  # then it executes its first H actions per decision
    assert np.array_equal(executed(evaluate), chunked)
