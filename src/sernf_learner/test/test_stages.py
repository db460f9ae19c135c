"""Algorithm contracts of the training stages (what each stage updates and what it leaves
alone), the TD target and Polyak math, the HL-Gauss critic loss, and a short distillation run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from sernf_data.store import EpisodeStore, StoreSpec
from sernf_learner.critic_warmup import CriticWarmup, CriticWarmupConfig, train_critic_warmup
from sernf_learner.distill import Distillation, DistillConfig, _MixedController, train_distill
from sernf_learner.il import ILConfig, ImitationLearning, train_il
from sernf_learner.offline_rl import ActorConfig, OfflineRL, OfflineRLConfig, _actor_loss
from sernf_learner.online_rl import OnlineRL, OnlineRLConfig
from sernf_learner.td_targets import (
    CriticConfig,
    TargetCritic,
    critic_update,
    make_critic_optimizer,
    next_value,
    polyak_update,
    td_target,
)
from sernf_learner.transitions import ChunkTiming, TransitionSampler
from sernf_policy.encoders import EncoderConfig
from sernf_policy.fast_paths import reference_paths
from sernf_policy.policy import Policy, PolicyConfig
from sernf_sim.datasets import mixed_point_dataset
from sernf_sim.point_expert import PointExpert
from sernf_sim.point_task import PointTask

T, P, H = 1, 2, 4
TIMING = ChunkTiming(T=T, P=P, H=H, gamma=0.99)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def tiny_policy(store: EpisodeStore, dropout: float = 0.1) -> Policy:
    spec = {k: {"shape": list(v.shape), "kind": v.kind} for k, v in store.spec.obs.items()}
    cfg = PolicyConfig.create(
        spec, store.spec.action_dim, T, P, H,
        encoder=EncoderConfig(token_dim=16),
        flow={"num_layers": 2, "hidden_dim": 16, "num_heads": 2},
        critic={"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 16, "dropout": dropout},
        num_samples=4,
    )
    policy = Policy(cfg)
    snap = store.load_arrays()
    policy.fit_normalizers(snap.arrays["action"], {"state": snap.arrays["state"]})
    return policy


@pytest.fixture(scope="module")
def point_store(tmp_path_factory) -> EpisodeStore:
    """Four point-task demos (one per expert quality: successes and failures)."""
    path = tmp_path_factory.mktemp("replay") / "demo"
    episodes = mixed_point_dataset(n=4, seed=3, T=T, P=P, H=H, num_envs=4)
    env = PointTask(num_envs=1)
    store = EpisodeStore(path, "a", StoreSpec(obs=env.observation_spec, action_dim=2, control_rate_hz=10.0))
    for steps, meta in episodes:
        store.append_episode(steps, meta)
    assert any(m["success"] for _, m in episodes) and not all(m["success"] for _, m in episodes)
    return EpisodeStore(path, "r")


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def identical(before: list[torch.Tensor], params) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, params, strict=True))


def changed_all_groups(before: list[torch.Tensor], params) -> bool:
    return not identical(before, params)


# ----------------------------------------------------------------------------- stage contracts


def test_stage1_il_changes_only_the_actor(point_store):
    policy = tiny_policy(point_store)
    actor0, critic0 = snapshot(policy.actor_parameters()), snapshot(policy.critic_parameters())
    learner = ImitationLearning(policy, ILConfig(steps=3, batch_size=16, dropout=0.5))
    sampler = TransitionSampler(point_store, TIMING, 16, seed=0, success_only=True)
    metrics = train_il(learner, sampler)
    assert np.isfinite(metrics["il/nll"])
    assert policy.flow.config.dropout == 0.5
    assert identical(critic0, policy.critic_parameters())
    assert not identical(actor0, policy.actor_parameters())


def test_stage2_critic_warmup_leaves_the_actor_bit_identical(point_store):
    policy = tiny_policy(point_store)
    actor0, critic0 = snapshot(policy.actor_parameters()), snapshot(policy.critic_parameters())
    flags0 = [p.requires_grad for p in policy.actor_parameters()]
    target = TargetCritic(policy)
    learner = CriticWarmup(policy, target, CriticWarmupConfig(steps=3, batch_size=16))
    train_critic_warmup(learner, TransitionSampler(point_store, TIMING, 16, seed=0))
    assert identical(actor0, policy.actor_parameters())
    assert not identical(critic0, policy.critic_parameters())
    # The target critics moved towards the online ones, and the actor got its flags back.
    assert not identical(critic0, [p for p in target.parameters()])
    assert [p.requires_grad for p in policy.actor_parameters()] == flags0


def test_stage3_offline_rl_changes_actor_and_critic(point_store):
    policy = tiny_policy(point_store)
    actor0, critic0 = snapshot(policy.actor_parameters()), snapshot(policy.critic_parameters())
    learner = OfflineRL(policy, TargetCritic(policy), OfflineRLConfig(steps=2, batch_size=16))
    sampler = TransitionSampler(point_store, TIMING, 16, seed=0)
    for _ in range(2):
        metrics = learner.update(sampler.sample())
    assert {"critic/loss", "critic/q_mean", "critic/target_mean", "actor/q", "actor/bc_nll", "actor/loss"} <= set(metrics)
    assert not identical(actor0, policy.actor_parameters())
    assert not identical(critic0, policy.critic_parameters())
    assert policy.flow.config.dropout == 0.1  # RL dropout (G2)


def test_actor_update_every_skips_actor_steps(point_store):
    policy = tiny_policy(point_store)
    learner = OfflineRL(policy, TargetCritic(policy),
                        OfflineRLConfig(batch_size=16, actor=ActorConfig(update_every=2)))
    sampler = TransitionSampler(point_store, TIMING, 16, seed=0)
    actor0 = snapshot(policy.actor_parameters())
    first = learner.update(sampler.sample())  # update 0: critic and actor
    actor1, critic1 = snapshot(policy.actor_parameters()), snapshot(policy.critic_parameters())
    assert not identical(actor0, policy.actor_parameters())
    second = learner.update(sampler.sample())  # update 1: critic only
    assert identical(actor1, policy.actor_parameters())
    assert not identical(critic1, policy.critic_parameters())
    assert second["actor/loss"] == first["actor/loss"]  # the last actor step's metrics
    assert learner.state_dict()["num_updates"] == 2


def _online_learner(policy, bc_weight: float) -> OnlineRL:
    cfg = OnlineRLConfig(batch_size=16, actor=ActorConfig(bc_weight=bc_weight))
    return OnlineRL(policy, TargetCritic(policy), cfg)


def test_stage4_bc_term_is_exactly_zero_without_offline_samples(point_store):
    batch = TransitionSampler(point_store, TIMING, 16, seed=0, is_offline=False).sample()
    assert not batch["is_offline"].any()
    base = tiny_policy(point_store)
    results = []
    for bc_weight in (0.1, 0.0):
        policy = copy.deepcopy(base)
        learner = _online_learner(policy, bc_weight)
        torch.manual_seed(7)
        metrics = learner.update(batch)
        results.append((metrics, snapshot(policy.actor_parameters())))
    (m_bc, actor_bc), (_, actor_nobc) = results
    assert m_bc["actor/bc_nll"] == 0.0
    assert m_bc["actor/offline_fraction"] == 0.0
    # With no offline sample, λ = 0.1 and λ = 0 give bit-identical actor updates.
    assert all(torch.equal(a, b) for a, b in zip(actor_bc, actor_nobc, strict=True))


def test_stage4_bc_term_uses_only_offline_samples(point_store):
    policy = tiny_policy(point_store, dropout=0.0)
    policy.flow.config.noise_std = 0.0  # deterministic NLL for the comparison
    batch = TransitionSampler(point_store, TIMING, 16, seed=0).sample()
    mask = torch.zeros(16, dtype=torch.bool)
    mask[::3] = True
    batch["is_offline"] = mask
    learner = _online_learner(policy, 0.1)
    policy.flow.set_dropout(0.0)
    norm = policy.action_normalizer
    with torch.no_grad():
        expected = -policy.log_prob(
            {k: v[mask] for k, v in batch["obs"].items()},
            norm.normalize(batch["prefix"][mask]), norm.normalize(batch["chunk"][mask]),
        ).mean().item()
        everything = -policy.log_prob(batch["obs"], norm.normalize(batch["prefix"]), norm.normalize(batch["chunk"])).mean().item()
    assert expected != pytest.approx(everything)
    # The actor loss is evaluated before its step but after the critic step: the critic does
    # not enter the NLL, so the expected value is unchanged by it.
    metrics = learner.update(batch)
    assert metrics["actor/bc_nll"] == pytest.approx(expected, rel=1e-5)
    assert metrics["actor/offline_fraction"] == pytest.approx(mask.float().mean().item())


def test_batches_say_whether_their_episode_succeeded(point_store):
    batch = TransitionSampler(point_store, TIMING, 64, seed=1).sample_numpy()
    success = np.array([bool(m["success"]) for m in point_store.load_arrays().episodes])
    np.testing.assert_array_equal(batch["episode_success"], success[batch["episode"]])
    assert batch["episode_success"].any() and not batch["episode_success"].all()


def test_bc_success_only_takes_the_nll_on_successful_offline_episodes(point_store):
    """``ActorConfig.bc_success_only``: the λ·NLL term over offline rows of successful episodes
    only (Stage I's data); off, over every offline row."""
    policy = tiny_policy(point_store, dropout=0.0)
    policy.flow.config.noise_std = 0.0  # deterministic NLL for the comparison
    policy.flow.set_dropout(0.0)
    batch = TransitionSampler(point_store, TIMING, 32, seed=2).sample()
    offline = torch.ones(32, dtype=torch.bool)
    offline[::4] = False
    batch["is_offline"] = offline
    good = offline & batch["episode_success"]
    assert 0 < int(good.sum()) < int(offline.sum())
    norm = policy.action_normalizer

    def nll(rows):
        with torch.no_grad():
            return -policy.log_prob({k: v[rows] for k, v in batch["obs"].items()}, norm.normalize(batch["prefix"][rows]),
                                    norm.normalize(batch["chunk"][rows])).mean().item()

    for only, rows in ((True, good), (False, offline)):
        with torch.no_grad():
            _, _, _, bc_nll, mask = _actor_loss(policy, batch, ActorConfig(bc_success_only=only))
        assert torch.equal(mask, rows)
        assert bc_nll.item() == pytest.approx(nll(rows), rel=1e-5)
    assert nll(good) != pytest.approx(nll(offline))
    with pytest.raises(ValueError, match="bc_success_only"):
        ActorConfig(bc_success_only=1)


@pytest.mark.parametrize("offline_every", [1, 3])
def test_actor_loss_projects_the_context_once_for_both_flow_passes(point_store, offline_every):
    """The reparameterised samples and the data NLL share each coupling's context keys and
    values (one ``cross_kv`` projection per coupling, not two), and the loss and its gradients
    are those of the two passes projecting the context themselves."""
    policy = tiny_policy(point_store)
    policy.train()
    batch = TransitionSampler(point_store, TIMING, 16, seed=0).sample()
    mask = torch.zeros(16, dtype=torch.bool)
    mask[::offline_every] = True
    batch["is_offline"] = mask
    config = ActorConfig()
    calls = []
    hooks = [layer.conditioner.cross_kv.register_forward_hook(lambda *_: calls.append(1))
             for layer in policy.flow.layers]
    torch.manual_seed(5)
    loss = _actor_loss(policy, batch, config)[0]
    assert len(calls) == len(policy.flow.layers)
    with reference_paths():  # the reference paths keep a projection per pass (earlier runs, bit for bit)
        _actor_loss(policy, batch, config)
    assert len(calls) == 3 * len(policy.flow.layers)
    for hook in hooks:
        hook.remove()
    params = [p for p in policy.actor_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)

    # The same objective with each flow pass projecting the context itself.
    torch.manual_seed(5)
    norm = policy.action_normalizer
    prefix = norm.normalize(batch["prefix"])
    context = policy.actor_context(batch["obs"], prefix)
    chunks, _ = policy.flow.sample(context, config.num_samples, config.sigma)
    q = policy.min_q(batch["obs"], prefix, chunks)
    scale = config.q_alpha / q.detach().abs().mean().clamp_min(1e-6).item()
    nll = -policy.flow.log_prob(norm.normalize(batch["chunk"][mask]), context[mask], add_noise=True).mean()
    expected = -scale * q.mean() + config.bc_weight * nll
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    for got, want in zip(grads, torch.autograd.grad(expected, params, allow_unused=True), strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ TD target math


class _StubActor(nn.Module):
    """Proposes all-zero chunks; has the modules ``next_value`` switches to eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.actor_encoder, self.prefix_tokenizer, self.flow = nn.Identity(), nn.Identity(), nn.Identity()

    def sample(self, obs, prefix_norm, num_samples, sigma):
        b, _, a = prefix_norm.shape
        return torch.zeros(b, num_samples, 3, a), torch.zeros(b, num_samples)


class _StubTarget:
    """Q̄(o', chunk_n) = x(o') + n: the n-th candidate is worth n more."""

    def min_q(self, policy, obs, prefix_norm, chunks):
        x = obs["x"][:, -1, 0].double()  # [B]
        return x[:, None] + torch.arange(chunks.shape[1], dtype=torch.float64)[None]


@pytest.mark.parametrize("terminated", [True, False])
def test_td_target_equals_hand_computed_numbers(tmp_path, terminated):
    # One episode of L = 5 steps with P = 2, H = 3: decision steps t = 0, 1, 2 (t <= L-1-P).
    # Observation x_t = t + 1; the only reward is r_4 = 1 on the last step; γ = 0.5, γ^H = 0.125.
    timing = ChunkTiming(T=1, P=2, H=3, gamma=0.5)
    spec = StoreSpec(obs={"x": {"shape": [1], "kind": "lowdim"}}, action_dim=1, control_rate_hz=10.0)
    store = EpisodeStore(tmp_path / "ep", "a", spec)
    store.append_episode(
        {
            "x": np.arange(1, 6, dtype=np.float32)[:, None],
            "action": np.zeros((5, 1), np.float32),
            "reward": np.array([0, 0, 0, 0, 1], np.float32),
            "timestamp": np.arange(5) / 10.0,
        },
        {"source": "demo", "success": True, "terminated": terminated},
    )
    sampler = TransitionSampler(store, timing, batch_size=8, seed=0)
    [(t, batch)] = list(sampler.iter_episode(0))  # the real per-episode iteration of the sampler
    assert t.tolist() == [0, 1, 2]
    cfg = CriticConfig(next_action="sample", next_num_samples=1)
    q_next = next_value(_StubActor(), _StubTarget(), batch["next_obs"], batch["next_prefix"], cfg)
    y = td_target(batch["reward"].double(), batch["discount"].double(), batch["done"].double(), q_next)
    # Q̄(o') = x(o') (stub). By hand:
    # t=0: Σγ^i r over r0..r2 = 0, not done, o' = o_3 (x=4): y = 0.125·4 = 0.5
    # t=1: r1..r3 = 0, not done, o' = o_4 (x=5):             y = 0.125·5 = 0.625
    # t=2: r2..r4 -> γ²·1 = 0.25; the last step lies in the window:
    #      terminated -> done, y = 0.25; truncated -> bootstrap from o_4 (clamped): 0.25 + 0.625
    last = 0.25 if terminated else 0.875
    assert batch["done"].tolist() == [0.0, 0.0, 1.0 if terminated else 0.0]
    np.testing.assert_allclose(y.numpy(), [0.5, 0.625, last], rtol=0, atol=1e-12)


def test_next_value_sample_mean_vs_best_of_n():
    obs = {"x": torch.tensor([[[2.0]], [[5.0]]])}
    prefix = torch.zeros(2, 2, 1)
    mean = next_value(_StubActor(), _StubTarget(), obs, prefix, CriticConfig(next_action="sample", next_num_samples=4))
    best = next_value(_StubActor(), _StubTarget(), obs, prefix, CriticConfig(next_action="best_of_n", next_num_samples=4))
    np.testing.assert_allclose(mean.numpy(), [2 + 1.5, 5 + 1.5])
    np.testing.assert_allclose(best.numpy(), [2 + 3, 5 + 3])


def test_polyak_update_exact_numbers():
    target = [torch.tensor([1.0, 2.0, -4.0]), torch.tensor([[8.0]])]
    online = [torch.tensor([5.0, -2.0, 0.0]), torch.tensor([[0.0]])]
    polyak_update(target, online, tau=0.25)  # 0.25·online + 0.75·target
    assert target[0].tolist() == [2.0, 1.0, -3.0]
    assert target[1].tolist() == [[6.0]]
    assert online[0].tolist() == [5.0, -2.0, 0.0]  # the online side is untouched
    t = [torch.tensor([1.0], dtype=torch.float64)]
    polyak_update(t, [torch.tensor([3.0], dtype=torch.float64)], tau=0.05)
    assert t[0].item() == pytest.approx(0.05 * 3.0 + 0.95 * 1.0, abs=1e-15)
    with pytest.raises(ValueError):
        polyak_update(target, online[:1], tau=0.1)


def test_target_critic_follows_the_online_critic_by_tau(point_store):
    policy = tiny_policy(point_store)
    target = TargetCritic(policy)
    online = list(policy.critic_parameters())
    with torch.no_grad():
        for p in online:
            p.add_(1.0)
    before = snapshot(target.parameters())
    target.update(policy, tau=0.25)
    for b, t, o in zip(before, target.parameters(), online, strict=True):
        torch.testing.assert_close(t, 0.25 * o + 0.75 * b, rtol=0, atol=1e-6)
    assert all(not p.requires_grad for p in target.parameters())


def test_hl_gauss_critic_loss_decreases_on_a_fixed_batch(point_store):
    policy = tiny_policy(point_store, dropout=0.0)
    target = TargetCritic(policy)
    cfg = CriticConfig(lr=3e-3, tau=0.0)  # a frozen target: the TD targets stay fixed
    optimizer = make_critic_optimizer(policy, cfg)
    batch = TransitionSampler(point_store, TIMING, 32, seed=1).sample()
    norm, hl = policy.action_normalizer, policy.critic.hl_gauss

    def cross_entropy() -> float:
        """HL-Gauss CE of the online critics to the (fixed) TD targets, computed independently."""
        with torch.no_grad():
            torch.manual_seed(0)
            q_next = next_value(policy, target, batch["next_obs"], norm.normalize(batch["next_prefix"]), cfg)
            y = td_target(batch["reward"], batch["discount"], batch["done"], q_next)
            tokens = policy.critic_tokens(batch["obs"])
            logits = policy.critic(tokens, norm.normalize(batch["prefix"]), norm.normalize(batch["chunk"]))
            return hl.loss(logits, y.expand(logits.shape[0], -1)).mean().item()

    before = cross_entropy()
    for _ in range(25):
        torch.manual_seed(0)  # the same â' every step
        metrics = critic_update(policy, target, optimizer, batch, cfg)
    after = cross_entropy()
    assert after < 0.8 * before, (before, after)
    assert metrics["critic/loss"] == pytest.approx(after, rel=0.05)


# -------------------------------------------------------------------------------- distillation


def test_distillation_with_the_scripted_expert_reduces_nll_and_decays_p_teacher(point_store):
    policy = tiny_policy(point_store)
    cfg = DistillConfig(iterations=4, episodes_per_iteration=4, updates_per_iteration=15, batch_size=64,
                        lr=3e-3, p_teacher_decay=0.5, obs_noise_std=0.01, obs_offset_std=0.02)
    learner = Distillation(policy, cfg)
    logged = []

    class Log:
        def log(self, step, metrics, stage_step=None):
            logged.append(dict(metrics))

    train_distill(learner, PointTask(num_envs=4, seed=0), lambda seed: PointExpert(seed=seed).chunk_act_fn(H),
                  logger=Log())
    assert [m["distill/p_teacher"] for m in logged] == [1.0, 0.5, 0.25, 0.125]
    assert logged[0]["distill/teacher_fraction"] == 1.0  # p = 1: the teacher always acts
    assert logged[-1]["distill/teacher_fraction"] < 1.0
    assert logged[-1]["distill/nll"] < logged[0]["distill/nll"]
    assert learner.buffer.size == sum(1 for _ in range(learner.buffer.size))


def test_distillation_noise_offset_is_constant_within_an_episode(point_store):
    policy = tiny_policy(point_store)
    cfg = DistillConfig(obs_noise_std=0.0, obs_offset_std=0.1)
    ctrl = _MixedController(policy, teacher=None, config=cfg, p_teacher=1.0, rng=np.random.default_rng(0))
    obs = PointTask(num_envs=3, seed=0).reset()
    hist = {k: v[:, None] for k, v in obs.items()}
    ctrl.reset(obs)
    d1 = ctrl.student_view(hist)["state"] - hist["state"]
    d2 = ctrl.student_view(hist)["state"] - hist["state"]
    np.testing.assert_array_equal(d1, d2)  # same episode: same offset, no per-step noise
    assert np.abs(d1).min() > 0
    ctrl.reset(obs)
    assert not np.allclose(ctrl.student_view(hist)["state"] - hist["state"], d1)  # new episode
    cfg2 = DistillConfig(obs_noise_std=0.05, obs_offset_std=0.0)
    ctrl2 = _MixedController(policy, teacher=None, config=cfg2, p_teacher=1.0, rng=np.random.default_rng(0))
    ctrl2.reset(obs)
    assert not np.array_equal(ctrl2.student_view(hist)["state"], ctrl2.student_view(hist)["state"])


def test_evaluation_runs_on_its_own_thread_count_and_restores_the_run_s(point_store):
    """``evaluate_policy(threads=k)`` acts on k torch threads and gives the run its own back,
    also when the rollout fails; a bad count is refused before anything runs."""
    from sernf_learner.online_rl import evaluate_policy

    seen: list[int] = []

    class ThreadRecordingTask(PointTask):
        fail = False

        def step(self, actions):
            seen.append(torch.get_num_threads())
            if self.fail:
                raise RuntimeError("simulator stopped")
            return super().step(actions)

    policy = tiny_policy(point_store)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = evaluate_policy(policy, ThreadRecordingTask(num_envs=2, seed=0), 2, num_samples=4, sigma=0.5,
                                 seed=1, threads=2)
        assert result.num_episodes == 2 and seen and set(seen) == {2}
        assert torch.get_num_threads() == 1
        failing = ThreadRecordingTask(num_envs=2, seed=0)
        failing.fail = True
        with pytest.raises(RuntimeError, match="simulator stopped"):
            evaluate_policy(policy, failing, 2, num_samples=4, sigma=0.5, seed=1, threads=2)
        assert torch.get_num_threads() == 1
        seen.clear()
        evaluate_policy(policy, ThreadRecordingTask(num_envs=2, seed=0), 2, num_samples=4, sigma=0.5, seed=1)
        assert set(seen) == {1}  # threads=0: the caller's setting
        for bad in (-1, 1.5, True):
            with pytest.raises(ValueError, match="threads"):
                evaluate_policy(policy, ThreadRecordingTask(num_envs=2, seed=0), 2, num_samples=4, sigma=0.5,
                                threads=bad)
    finally:
        torch.set_num_threads(before)


class ActionRecordingTask(PointTask):
    """The point task, keeping every batch of actions it executed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.actions: list[np.ndarray] = []

    def step(self, actions):
        self.actions.append(np.array(actions, copy=True))
        return super().step(actions)


def test_evaluation_draws_its_candidates_from_its_own_seed(point_store):
    """``evaluate_policy`` samples the candidates from a generator seeded with its ``seed``: the
    same seed executes the same actions whatever state torch's global RNG is in, it leaves that
    RNG where it was (training does not depend on evaluating), and another seed draws others."""
    from sernf_learner.online_rl import evaluate_policy

    policy = tiny_policy(point_store)

    def executed(seed: int, global_seed: int) -> np.ndarray:
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        env = ActionRecordingTask(num_envs=2, seed=0)
        evaluate_policy(policy, env, 2, num_samples=4, sigma=1.0, seed=seed)
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG did not move
        return np.concatenate(env.actions)

    first = executed(seed=3, global_seed=0)
    np.testing.assert_array_equal(executed(seed=3, global_seed=123), first)
    other = executed(seed=4, global_seed=0)
    rows = min(len(first), len(other))
    assert not np.allclose(other[:rows], first[:rows])


def test_online_rounds_are_evaluated_with_the_evaluation_settings(point_store, tmp_path):
    """``train_online_rl`` evaluates with ``eval_num_samples`` / ``eval_sigma`` (the trainer
    passes ``trainer.eval``'s), not with the collection's N and σ: at σ = 1e-6 its evaluation
    executes the same actions as a separate evaluation of the final policy at those settings."""
    from sernf_learner.online_rl import evaluate_policy, train_online_rl
    from sernf_learner.transitions import MixedSampler

    policy = tiny_policy(point_store)
    online = EpisodeStore(tmp_path / "online", "a", point_store.spec)
    sampler = MixedSampler(TransitionSampler(point_store, TIMING, 16, seed=0, is_offline=True),
                           TransitionSampler(online, TIMING, 16, seed=1, is_offline=False), rho=0.5, seed=2)
    learner = OnlineRL(policy, TargetCritic(policy), OnlineRLConfig(
        iterations=1, episodes_per_iteration=2, updates_per_iteration=1, batch_size=16, num_samples=4,
        sigma=0.7, eval_every=1, eval_episodes=2))
    during = ActionRecordingTask(num_envs=2, seed=0)
    train_online_rl(learner, PointTask(num_envs=2, seed=0), online, sampler, run_id="t", eval_env=during,
                    eval_seed=5, eval_num_samples=2, eval_sigma=1e-6)
    after = ActionRecordingTask(num_envs=2, seed=0)
    evaluate_policy(policy, after, 2, num_samples=2, sigma=1e-6, seed=5)
    assert during.actions and len(during.actions) == len(after.actions)
    np.testing.assert_allclose(np.stack(during.actions), np.stack(after.actions), atol=1e-4)
