"""Imitation of a mixture of flows (``policy.flow_components >= 2``): each demonstration is
imitated by one flow (``sernf_learner.il.FlowAssignment``), which separates two strategies into
the two flows; the trainer's IL stage runs it on real sampler batches and resumes exactly."""

from __future__ import annotations

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
from sernf_learner.il import ASSIGNMENT_RATE, FlowAssignment, ILConfig
from sernf_learner.trainer import Trainer
from sernf_policy.flow import ChunkFlow, ChunkFlowConfig
from sernf_policy.policy import Policy


def test_each_demonstration_goes_to_the_flow_its_first_chunks_prefer_relative_to_the_others():
    assignment = FlowAssignment(2, seed=0, horizon=10)
    episode = torch.tensor([0, 0, 1, 3, 1])
    step = torch.tensor([0, 9, 3, 0, 10])  # the last chunk starts after the first chunk: no evidence
    per_flow = torch.tensor([[4.0, 5.0], [4.0, 4.0], [12.0, 0.0], [6.0, 2.0], [0.0, 50.0]])
    for _ in range(3):
        chosen = assignment.observe(episode, step, per_flow)
    # Centred over the flows, the evidence is (-0.25, 0.25) for episode 0 (mean of its two early
    # chunks), (6, -6) for episode 1 and (2, -2) for episode 3; their mean is (2.58, -2.58).
    # Relative to it, episode 3's preference for flow 0 is below average: it goes to flow 1.
    assert chosen.tolist() == [1, 1, 0, 1, 0]
    kept = (1 - ASSIGNMENT_RATE) ** 3
    torch.testing.assert_close(assignment.scores[0], (1 - kept) * torch.tensor([-0.25, 0.25]), atol=0.04, rtol=0)
    torch.testing.assert_close(assignment.scores[1], (1 - kept) * torch.tensor([6.0, -6.0]), atol=0.04, rtol=0)
    assert assignment.seen.tolist() == [True, True, False, True]
    torch.testing.assert_close(assignment.shares(), torch.tensor([1 / 3, 2 / 3]))  # over the three seen
    late = FlowAssignment(2, seed=0, horizon=10)
    late.observe(episode[4:], step[4:], per_flow[4:])
    assert not late.seen.any() and late.shares().sum() == 0
    with pytest.raises(ValueError, match="per-flow"):
        assignment.observe(episode, step, per_flow[:, :1])
    with pytest.raises(ValueError, match="negative"):
        assignment.observe(torch.tensor([-1]), torch.tensor([0]), per_flow[:1])
    with pytest.raises(ValueError, match=">= 2 flows"):
        FlowAssignment(1, seed=0, horizon=10)


def test_the_start_is_a_seeded_random_assignment_and_the_state_round_trips():
    a, b, c = (FlowAssignment(3, seed=s, horizon=4) for s in (4, 4, 5))
    ties = torch.zeros(40, 3)  # flows that explain every chunk equally keep the start
    episodes, steps = torch.arange(40), torch.zeros(40, dtype=torch.int64)
    first = a.observe(episodes, steps, ties)
    assert torch.equal(first, b.observe(episodes, steps, ties)) and not torch.equal(first, c.observe(episodes, steps, ties))
    assert len(set(first.tolist())) == 3
    state = a.state_dict()
    restored = FlowAssignment(3, seed=0, horizon=4)
    restored.load_state_dict(state)
    more = torch.randn(40, 3)
    assert torch.equal(restored.observe(episodes, steps, more), a.observe(episodes, steps, more))
    with pytest.raises(ValueError, match="expected"):
        FlowAssignment(2, seed=0, horizon=4).load_state_dict(state)


def test_per_demonstration_assignment_separates_two_strategies_into_the_two_flows():
    """200 demonstrations of 5 chunks each: every chunk of a demonstration is +m(c) or, for the
    other strategy, -m(c). Imitated per demonstration, the assignment matches the strategies
    (up to the flows' order), each flow alone samples one strategy, the weights stay near 1/2
    and the most likely of 16 samples at sigma 0.1 lies on a mode."""
    torch.manual_seed(0)
    cfg = ChunkFlowConfig(action_dim=2, horizon=2, context_dim=4, num_layers=2, hidden_dim=16, num_heads=2,
                          noise_std=0.01, components=2, base_components=1)
    flow = ChunkFlow(cfg)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    assignment = FlowAssignment(2, seed=0, horizon=5)

    def modes(ctx):  # [B, 1, 4] -> mode magnitude [B, 1, 1] in [0.3, 0.7]
        return 0.5 + 0.2 * torch.tanh(ctx[:, :, :1])

    strategy = torch.randint(0, 2, (200,))
    contexts = torch.randn(200, 5, 1, 4)
    for _ in range(400):
        episode, t = torch.randint(0, 200, (128,)), torch.randint(0, 5, (128,))
        ctx = contexts[episode, t]
        chunk = (2.0 * strategy[episode] - 1).view(-1, 1, 1) * modes(ctx) + 0.03 * torch.randn(128, 2, 2)
        log_w, per_flow = flow.component_log_likelihoods(chunk, ctx, add_noise=True)
        chosen = assignment.observe(episode, t, per_flow)[:, None]
        loss = -(log_w.gather(1, chosen) + per_flow.gather(1, chosen)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    agreement = (assignment.assigned() == strategy).float().mean().item()
    assert agreement in (0.0, 1.0), agreement
    flow.eval()
    ctx = torch.randn(64, 1, 4)
    with torch.no_grad():
        weights = flow.component_log_weights(ctx).exp()[:, 0]
        eps = flow.draw_noise(ctx, 200)
        positive = []
        for u in (0.0, 1.0 - 1e-6):  # uniforms that all pick flow 0, then flow 1
            alone, _, _ = flow.transform_noise(ctx, eps, 1.0, torch.full(eps.shape[:2], u))
            positive.append((alone.mean(dim=(2, 3)) > 0).float().mean().item())
        chunks, log_prob = flow.sample(ctx, 16, sigma=0.1)
        best = chunks[torch.arange(64), log_prob.argmax(dim=1)]
    assert sorted(positive)[0] < 0.2 and sorted(positive)[1] > 0.8, positive
    assert weights.min() > 0.25 and weights.max() < 0.75
    assert (best.abs() - modes(ctx)).abs().amax(dim=(1, 2)).max() < 0.3


def run_config() -> RunConfig:
    return RunConfig(
        seed=3,
        policy=PolicySpec(obs_history=1, prefix_len=2, horizon=4, token_dim=16, flow_layers=2, flow_hidden=16,
                          flow_heads=2, flow_components=2, flow_base_components=1),
        data=DataConfig(generate_point_demos=4, gamma=0.99),
        env=EnvConfig(num_envs=2),
        trainer=TrainerConfig(checkpoint_every=2, log_every=1, tensorboard=False, progress=False,
                              eval=EvalConfig(episodes=2, num_envs=2, num_samples=4, stages=["il"])),
        il=ILConfig(steps=4, batch_size=16, dropout=0.0),
    )


def test_the_il_stage_trains_a_mixture_of_flows_per_demonstration_and_resumes_exactly(tmp_path):
    cfg = run_config()
    trainer = Trainer(cfg, tmp_path / "straight", "il")
    assert trainer.policy.flow.config.components == 2
    stage = trainer._build_stage("il", 0)
    batch = stage.sampler.sample()
    assert batch["episode"].dtype == torch.int64 and batch["episode"].shape == (16,)
    assert batch["step"].dtype == torch.int64 and batch["step"].shape == (16,)
    metrics = stage.learner.update(batch)
    assert {"il/nll", "il/assigned_nll", "il/largest_flow_share"} <= set(metrics)
    assert metrics["il/assigned_nll"] >= metrics["il/nll"]  # one flow's part of the mixture's likelihood
    assert stage.learner.assignment.seen.any()
    with pytest.raises(ValueError, match="'step'"):
        stage.learner.update({k: v for k, v in batch.items() if k != "episode"})
    state = stage.learner.state_dict()
    with pytest.raises(ValueError, match="assignment"):
        stage.learner.load_state_dict({"optimizer": state["optimizer"]})

    trainer = Trainer(cfg, tmp_path / "straight", "il")
    trainer.run()
    exported = Policy.load(tmp_path / "straight" / "policy_il")
    assert exported.config.flow.components == 2
    resumed = Trainer(cfg, tmp_path / "resumed", "il")
    resumed.run(stop_after=2)
    Trainer(cfg, tmp_path / "resumed", "il", resume=True).run()
    a, b = exported.state_dict(), Policy.load(tmp_path / "resumed" / "policy_il").state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="flow_components"):
        PolicySpec(flow_components=2, flow_base_components=2)
