"""The two ablations of the learning benchmark, and that the default stays what it was.

* per-step critic (``policy.critic_horizon: 1``): the sampler's TD fields follow the chunk's
  first action (reward ``r_{t+P}``, next observation at ``t+1``, prefix ``a_{t+1..t+P}``), the
  bootstrap value scores the first action of a chunk sampled at ``t+1``, and the critic only
  ever sees one action after the prefix;
* Gaussian actor (``policy.actor: gaussian``): trains through every stage, checkpoints, resumes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sernf_data.spec import ObsKeySpec
from sernf_data.store import EpisodeStore, StoreSpec
from sernf_learner.configs import (
    DataConfig,
    EnvConfig,
    EvalConfig,
    PolicySpec,
    RunConfig,
    TrainerConfig,
    load_config,
)
from sernf_learner.critic_warmup import CriticWarmupConfig
from sernf_learner.il import ILConfig
from sernf_learner.offline_rl import ActorConfig, OfflineRLConfig
from sernf_learner.online_rl import OnlineRLConfig
from sernf_learner.td_targets import (
    CriticConfig,
    TargetCritic,
    critic_update,
    next_value,
    td_target,
)
from sernf_learner.trainer import Trainer, build_policy_config
from sernf_learner.transitions import ChunkTiming, TransitionSampler
from sernf_policy.encoders import EncoderConfig
from sernf_policy.gaussian_actor import GaussianChunkActor
from sernf_policy.policy import Policy, PolicyConfig

REPO = Path(__file__).resolve().parents[3]
T, P, H, GAMMA = 2, 2, 4, 0.9
SPEC = StoreSpec(obs={"state": ObsKeySpec((2,), "lowdim")}, action_dim=2, control_rate_hz=10.0)


def episode(length: int, rewards) -> dict[str, np.ndarray]:
    """Everything encodes the step index i: state = (i, 100 + i), action = (i, -i)."""
    i = np.arange(length)
    return {
        "state": np.stack([i, 100 + i], axis=1).astype(np.float32),
        "action": np.stack([i, -i], axis=1).astype(np.float32) / length,
        "reward": np.asarray(rewards, dtype=np.float32),
        "timestamp": i / 10.0,
    }


@pytest.fixture
def store(tmp_path) -> EpisodeStore:
    """Episode 0: 10 steps, rewards 10 + i (all distinct), terminated; episode 1: 8 steps,
    rewards 50 + i, truncated (time limit)."""
    s = EpisodeStore(tmp_path / "replay", "a", SPEC)
    s.append_episode(episode(10, 10.0 + np.arange(10)), {"source": "demo", "success": True, "terminated": True})
    s.append_episode(episode(8, 50.0 + np.arange(8)), {"source": "demo", "success": False, "terminated": False})
    return EpisodeStore(tmp_path / "replay", "r")


# ----------------------------------------------------------------------- transition timing


def test_chunk_timing_td_horizon_validation_and_default():
    assert ChunkTiming(T, P, H, GAMMA, td_horizon=H) == ChunkTiming(T, P, H, GAMMA)  # H is the default
    assert ChunkTiming(T, P, H, GAMMA, td_horizon=H).to_json() == {"T": T, "P": P, "H": H, "gamma": GAMMA}
    per_step = ChunkTiming(T, P, H, GAMMA, td_horizon=1)
    assert per_step.td_steps == 1 and per_step.reward_offset == P and per_step.discount == pytest.approx(GAMMA)
    assert per_step.to_json()["td_horizon"] == 1 and per_step != ChunkTiming(T, P, H, GAMMA)
    for bad in (0, 2, H + 1, True, 1.0):
        with pytest.raises(ValueError, match="td_horizon"):
            ChunkTiming(T, P, H, GAMMA, td_horizon=bad)


def test_per_step_td_fields_use_the_reward_of_the_first_chunk_action_and_step_t_plus_1(store):
    per_step = TransitionSampler(store, ChunkTiming(T, P, H, GAMMA, td_horizon=1), 4, seed=0)
    chunked = TransitionSampler(store, ChunkTiming(T, P, H, GAMMA), 4, seed=0)
    t = np.array([0, 3, 6, 7, 5])  # episode 0 (L=10): last valid decision step is L-1-P = 7
    ep = np.array([0, 0, 0, 0, 1])  # episode 1 (L=8, truncated): t=5 is its last decision step
    b, c = per_step.build_batch(ep, t), chunked.build_batch(ep, t)
    base = np.array([10.0, 10.0, 10.0, 10.0, 50.0])
    # r_{t+P}: the reward after a_{t+P}, the chunk's first action (the one the critic scores).
    assert np.array_equal(b["reward"], base + t + P)
    assert np.allclose(b["discount"], GAMMA)
    # o_{t+1} (history of T = 2 steps: o_t, o_{t+1}) and the queue a_{t+1..t+P} at decision t+1.
    assert np.array_equal(b["next_obs"]["state"][:, :, 0], np.stack([t, t + 1], axis=1))
    length = np.where(ep == 0, 10, 8)
    assert np.allclose(b["next_prefix"][:, :, 0] * length[:, None], np.stack([t + 1, t + 2], axis=1))
    # The scored action a_{t+P} ends episode 0 at t = 7 (its last step 9 = t + P); episode 1 was
    # truncated, so it never stops bootstrapping.
    assert np.array_equal(b["done"], [0, 0, 0, 1, 0])
    # The actor's side of the batch is the chunked one: observation, prefix and H-action chunk.
    for key in ("prefix", "chunk", "chunk_mask", "is_offline"):
        assert np.array_equal(b[key], c[key]), key
    assert np.array_equal(b["obs"]["state"], c["obs"]["state"]) and b["chunk"].shape == (5, H, 2)
    # The chunked critic's fields are unchanged: sum_{i<H} gamma^i r_{t+i}, next decision t + H.
    want = [sum(GAMMA**i * r for i, r in enumerate(base[k] + np.arange(t[k], min(t[k] + H, length[k])))) for k in range(5)]
    assert np.allclose(c["reward"], want)
    assert np.array_equal(c["next_obs"]["state"][:, -1, 0], np.minimum(t + H, length - 1))
    assert np.array_equal(c["done"], [0, 0, 1, 1, 0])


# ------------------------------------------------------------------------ per-step TD target


def tiny_policy(store: EpisodeStore, critic_horizon: int) -> Policy:
    cfg = PolicyConfig.create(
        {"state": {"kind": "lowdim", "shape": [2]}}, 2, T, P, H, encoder=EncoderConfig(token_dim=16),
        flow={"num_layers": 2, "hidden_dim": 16, "num_heads": 2},
        critic={"horizon": critic_horizon, "d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 16},
        num_samples=4,
    )
    policy = Policy(cfg)
    snap = store.load_arrays()
    policy.fit_normalizers(snap.arrays["action"], {"state": snap.arrays["state"]})
    return policy


def test_per_step_td_target_bootstraps_from_the_first_action_of_a_chunk_sampled_at_t_plus_1(store):
    torch.manual_seed(0)
    policy = tiny_policy(store, critic_horizon=1)
    target = TargetCritic(policy)
    cfg = CriticConfig(next_num_samples=3)
    sampler = TransitionSampler(store, ChunkTiming(T, P, H, GAMMA, td_horizon=1), 16, seed=1)
    batch = sampler.sample()
    norm = policy.action_normalizer
    next_prefix = norm.normalize(batch["next_prefix"])

    torch.manual_seed(7)
    value = next_value(policy, target, batch["next_obs"], next_prefix, cfg)
    torch.manual_seed(7)
    policy.eval()
    with torch.no_grad():
        chunks, _ = policy.sample(batch["next_obs"], next_prefix, 3, cfg.next_sigma)  # [B, 3, H, A]
        tokens = target.encoder(policy.normalize_obs(batch["next_obs"]))
        q_first = target.critic.min_value(tokens, next_prefix, chunks[:, :, :1])  # first actions only
    policy.train()
    assert torch.allclose(value, q_first.mean(dim=1))
    # A full-chunk critic could not even take these: the target critic is a per-step one.
    with pytest.raises(ValueError, match="chunk"):
        target.critic.min_value(tokens, next_prefix, chunks)

    y = td_target(batch["reward"], batch["discount"], batch["done"], value)
    seen = []
    hook = policy.critic.register_forward_hook(lambda m, args, out: seen.append(tuple(args[2].shape)))
    opt = torch.optim.SGD([p for p in policy.critic_parameters() if p.requires_grad], lr=0.0)
    torch.manual_seed(7)
    metrics = critic_update(policy, target, opt, batch, cfg)
    hook.remove()
    assert metrics["critic/target_mean"] == pytest.approx(y.mean().item(), rel=1e-6)
    assert (1, 2) in {s[1:] for s in seen} and all(s[1] == 1 for s in seen)  # [B(*N), 1, A] only


def test_policy_scores_chunks_by_their_first_action_with_a_per_step_critic(store):
    torch.manual_seed(0)
    policy = tiny_policy(store, critic_horizon=1).eval()
    obs = {"state": torch.randn(3, T, 2)}
    prefix = torch.zeros(3, P, 2)
    chunks = torch.rand(3, 5, H, 2) * 2 - 1
    tail = chunks.clone()
    tail[:, :, 1:] = torch.rand(3, 5, H - 1, 2) * 2 - 1
    assert torch.equal(policy.min_q(obs, prefix, chunks), policy.min_q(obs, prefix, tail))
    head = chunks.clone()
    head[:, :, 0] = -head[:, :, 0]
    assert not torch.equal(policy.min_q(obs, prefix, chunks), policy.min_q(obs, prefix, head))


# ---------------------------------------------------------------------- trainer end to end


def tiny_run_config(**policy) -> RunConfig:
    return RunConfig(
        seed=3,
        policy=PolicySpec(obs_history=1, prefix_len=2, horizon=4, token_dim=16, flow_layers=2, flow_hidden=16,
                          flow_heads=2, critic_d_model=16, critic_heads=2, critic_layers=1, critic_ff=16,
                          num_samples=4, **policy),
        data=DataConfig(generate_point_demos=4, gamma=0.99),
        env=EnvConfig(num_envs=2),
        trainer=TrainerConfig(checkpoint_every=2, log_every=1, tensorboard=False, progress=False,
                              eval=EvalConfig(episodes=4, num_envs=4, num_samples=4, stages=["online_rl"])),
        il=ILConfig(steps=4, batch_size=16),
        critic_warmup=CriticWarmupConfig(steps=3, batch_size=16),
        offline_rl=OfflineRLConfig(steps=3, batch_size=16, actor=ActorConfig(update_every=2)),
        online_rl=OnlineRLConfig(iterations=2, episodes_per_iteration=2, updates_per_iteration=2, batch_size=16,
                                 num_samples=2),
    )


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    state = {f"trainer/{k}": v for k, v in load_file(str(out / "checkpoints" / ckpt / "trainer.safetensors")).items()
             if not k.startswith("rng/")}
    state.update({f"policy/{k}": v for k, v in Policy.load(out / "policy_online_rl").state_dict().items()})
    return state


@pytest.mark.parametrize("ablation", [{"critic_horizon": 1}, {"actor": "gaussian"}], ids=["per_step", "gaussian"])
def test_trainer_runs_the_ablation_through_all_stages_and_resumes_exactly(tmp_path, ablation):
    cfg = tiny_run_config(**ablation)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    summary = Trainer(cfg, straight, "full").run()
    assert 0.0 <= summary["results"]["online_rl"]["success_rate"] <= 1.0
    trainer = Trainer(cfg, resumed, "full")
    if "critic_horizon" in ablation:
        assert trainer.timing.td_horizon == 1
    # Killed inside offline RL right after its step-2 checkpoint (units: 4 IL + 3 warm-up + 2),
    # so the resumed run restores a mid-stage sampler state, timing included.
    trainer.run(stop_after=9)
    trainer = Trainer(cfg, resumed, "full", resume=True)
    trainer.run()
    a, b = final_weights(straight), final_weights(resumed)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    policy = Policy.load(straight / "policy_online_rl")
    header = json.loads((straight / "policy_online_rl" / "config.json").read_text())["config"]
    if "critic_horizon" in ablation:
        assert policy.config.critic.horizon == 1 and policy.critic.members[0].action_pos.shape[0] == 2 + 1
    else:
        assert isinstance(policy.flow, GaussianChunkActor) and header["actor"] == "gaussian"
        assert header["flow"] is None


def test_default_config_is_unchanged():
    spec = PolicySpec()
    assert spec.actor == "flow" and spec.critic_horizon is None
    config = load_config(REPO / "config" / "point_full.yaml")
    pc = build_policy_config(config, {"pos": {"kind": "lowdim", "shape": [2]}}, 2)
    assert pc.actor == "flow" and pc.gaussian is None and pc.flow is not None
    assert pc.critic.horizon == pc.horizon == config.policy.horizon and pc.critic_horizon == pc.horizon
    # critic_horizon: H spelled out is the same critic as the default
    same = build_policy_config(dataclasses.replace(config, policy=dataclasses.replace(
        config.policy, critic_horizon=config.policy.horizon)), {"pos": {"kind": "lowdim", "shape": [2]}}, 2)
    assert same == pc
    for bad in (dict(actor="diffusion"), dict(critic_horizon=0), dict(critic_horizon=3, horizon=8),
                dict(critic_horizon=9, horizon=8), dict(critic_horizon=True)):
        with pytest.raises(ValueError, match="PolicySpec"):
            PolicySpec(**bad)
