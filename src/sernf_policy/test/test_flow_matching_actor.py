"""Flow-matching chunk actor (Table I baseline): config validation, shapes, causal masking, the
8-step sampler keeping both modes of a bimodal chunk distribution after a short training, and
the policy / checkpoint plumbing of ``actor="flow_matching"`` (no likelihood: one sample)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sernf_policy.encoders import EncoderConfig
from sernf_policy.flow_matching_actor import (
    FlowMatchingActorConfig,
    FlowMatchingChunkActor,
    time_embedding,
)
from sernf_policy.policy import Policy, PolicyConfig

LOWDIM_SPEC = {"hand": {"kind": "lowdim", "shape": [3]}, "cube": {"kind": "lowdim", "shape": [2]}}  # conftest's


def make_actor(horizon=3, action_dim=2, context_dim=8, **kw) -> FlowMatchingChunkActor:
    cfg = FlowMatchingActorConfig(action_dim=action_dim, horizon=horizon, context_dim=context_dim,
                                  **{"num_blocks": 2, "hidden_dim": 16, "num_heads": 2, "dropout": 0.0, **kw})
    return FlowMatchingChunkActor(cfg)


def randomize(actor: FlowMatchingChunkActor, std: float = 0.3) -> FlowMatchingChunkActor:
    """Give the zero-initialised gates and head weights, so the velocity depends on its inputs."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in actor.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return actor.eval()


@pytest.mark.parametrize(("field", "value", "match"), [
    ("num_blocks", 0, "num_blocks"), ("hidden_dim", 15, "divisible"), ("num_steps", 0, "num_steps"),
    ("integrator", "rk4", "integrator"), ("time_sampling", "logit", "time_sampling"), ("dropout", 1.0, "dropout"),
    ("causal", 1, "causal"), ("horizon", True, "horizon"), ("mlp_ratio", float("nan"), "mlp_ratio"),
])
def test_config_validation(field, value, match):
    kw = {"action_dim": 2, "horizon": 3, "context_dim": 8, "hidden_dim": 16, "num_heads": 2, field: value}
    with pytest.raises(ValueError, match=match):
        FlowMatchingActorConfig(**kw)


def test_defaults_are_the_papers_g3_values():
    cfg = FlowMatchingActorConfig(action_dim=2, horizon=10, context_dim=512)
    assert (cfg.hidden_dim, cfg.num_heads, cfg.num_blocks, cfg.mlp_hidden_dim, cfg.dropout, cfg.num_steps) == (
        512, 8, 4, 2048, 0.1, 8)
    assert cfg.causal and cfg.integrator == "euler"
    assert FlowMatchingActorConfig.from_dict(json.loads(json.dumps(cfg.__dict__))) == cfg


def test_shapes_bounds_and_zero_velocity_at_initialisation():
    actor = make_actor().eval()
    context = torch.randn(4, 5, 8)
    chunks = actor.sample(context, num_samples=6, sigma=0.5, generator=torch.Generator().manual_seed(0))
    assert chunks.shape == (4, 6, 3, 2) and chunks.abs().max() <= 1.0
    # adaLN-Zero and a zero head: the ODE does not move, the sample is the tempered noise itself.
    noise = 0.5 * torch.randn((24, 3, 2), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(chunks, noise.clamp(-1, 1).view(4, 6, 3, 2))
    same = actor.sample(context, 6, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(chunks, same)
    with pytest.raises(ValueError, match="context"):
        actor.sample(torch.randn(4, 5, 7), 2)
    with pytest.raises(ValueError, match="sigma"):
        actor.sample(context, 2, sigma=0.0)
    with pytest.raises(ValueError, match="actions"):
        actor.flow_matching_loss(torch.randn(4, 2, 2), context)
    emb = time_embedding(torch.tensor([0.0, 0.5, 1.0]), 15)
    assert emb.shape == (3, 15) and torch.isfinite(emb).all()


def test_self_attention_is_causal_over_the_chunk():
    actor = randomize(make_actor(horizon=4))
    memory, cond = actor.encode_context(torch.randn(2, 3, 8))
    x = torch.randn(2, 4, 2)
    tau = torch.full((2,), 0.3)
    later = x.clone()
    later[:, 2:] += 1.0  # change actions 2 and 3 only
    v, v_later = actor.velocity(x, tau, memory, cond), actor.velocity(later, tau, memory, cond)
    assert torch.allclose(v[:, :2], v_later[:, :2], atol=1e-6)  # earlier tokens do not see later ones
    assert not torch.allclose(v[:, 2:], v_later[:, 2:])
    bidirectional = randomize(make_actor(horizon=4, causal=False))
    memory, cond = bidirectional.encode_context(torch.randn(2, 3, 8))
    assert not torch.allclose(bidirectional.velocity(x, tau, memory, cond)[:, :2],
                              bidirectional.velocity(later, tau, memory, cond)[:, :2])


def test_gradients_reach_the_head_first_then_the_blocks_and_the_context():
    actor = make_actor().train()
    chunks = torch.rand(4, 3, 2) * 2 - 1
    context = torch.randn(4, 5, 8, requires_grad=True)
    actor.flow_matching_loss(chunks, context).backward()
    # adaLN-Zero (DiT): with a zero head only the head learns at the first step ...
    assert actor.head.weight.grad.abs().sum() > 0 and actor.blocks[0].adaln[1].weight.grad.abs().sum() == 0
    opt = torch.optim.SGD(actor.parameters(), lr=0.1)
    for _ in range(3):  # head, then the modulations, then the gates open
        opt.step()
        opt.zero_grad()
        context.grad = None
        loss = actor.flow_matching_loss(chunks, context)
        loss.backward()
    # ... then the gradient flows through the blocks' modulation and into the context tokens.
    assert torch.isfinite(loss) and actor.final_adaln[1].weight.grad.abs().sum() > 0
    assert actor.blocks[0].adaln[1].weight.grad.abs().sum() > 0 and context.grad.abs().sum() > 0
    actor.set_dropout(0.3)
    assert actor.config.dropout == 0.3 and actor.blocks[0].self_attn.dropout == 0.3


@pytest.fixture
def one_thread():
    """Training tests run on one thread: on a loaded 2-core machine two threads are far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("integrator", ["euler", "midpoint"])
def test_eight_step_sampler_keeps_both_modes_of_a_bimodal_chunk_distribution(integrator, one_thread):
    """Demo chunks are all +0.6 or all -0.6 with equal odds (the two strategies of a multimodal
    task). A regression to the mean would put every sample near 0; the flow-matching sampler
    must hit both modes, in comparable shares, with whole chunks committed to one mode."""
    torch.manual_seed(0)
    actor = make_actor(horizon=2, action_dim=1, context_dim=8, hidden_dim=32, num_heads=4, integrator=integrator)
    assert actor.config.num_steps == 8
    context = torch.randn(1, 2, 8)
    opt = torch.optim.AdamW(actor.parameters(), lr=3e-3, weight_decay=1e-4)
    actor.train()
    for _ in range(300):
        sign = torch.where(torch.rand(64) < 0.5, 1.0, -1.0)
        chunks = (0.6 * sign)[:, None, None].expand(-1, 2, 1)
        loss = actor.flow_matching_loss(chunks, context.expand(64, -1, -1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    actor.eval()
    with torch.no_grad():
        samples = actor.sample(context, 600, sigma=1.0, generator=torch.Generator().manual_seed(1))[0]  # [N, H, A]
    means = samples.mean(dim=(1, 2))
    upper, lower = (means > 0.4).float().mean().item(), (means < -0.4).float().mean().item()
    between = (means.abs() < 0.2).float().mean().item()
    assert upper > 0.25 and lower > 0.25 and upper + lower > 0.75, (upper, lower)
    assert between < 0.15, between  # the mean of the two modes is where the data never is
    assert (samples.std(dim=(1, 2)) < 0.2).float().mean() > 0.7  # a chunk does not mix the modes


# ---------------------------------------------------------------------------------- policy


def fm_policy(**overrides) -> Policy:
    cfg = PolicyConfig.create(
        LOWDIM_SPEC, action_dim=2, obs_history=2, prefix_len=2, horizon=4, encoder=EncoderConfig(token_dim=8),
        actor="flow_matching", flow_matching={"num_blocks": 1, "hidden_dim": 16, "num_heads": 2}, **overrides,
    )
    policy = Policy(cfg)
    policy.fit_normalizers(np.array([[-2.0, 0.0], [2.0, 10.0]], dtype=np.float32))
    randomize(policy.flow)
    return policy


def observation(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"hand": rng.normal(size=(batch, 2, 3)).astype(np.float32),
            "cube": rng.normal(size=(batch, 2, 2)).astype(np.float32)}


def test_policy_config_for_flow_matching_is_single_sample_and_critic_free():
    policy = fm_policy()
    cfg = policy.config
    assert cfg.selection == "single" and cfg.critic is None and cfg.flow is None and not cfg.has_likelihood
    assert cfg.imitation_horizon == 4
    with pytest.raises(ValueError, match='selection must be "single"'):
        PolicyConfig.create(LOWDIM_SPEC, 2, 2, 2, 4, encoder=EncoderConfig(token_dim=8), actor="flow_matching",
                            selection="most_likely")
    bad = dict(cfg.__dict__, flow_matching=None)
    with pytest.raises(ValueError, match="flow_matching must be a FlowMatchingActorConfig"):
        PolicyConfig(**bad)
    mismatched = dict(cfg.__dict__, flow_matching=FlowMatchingActorConfig(action_dim=2, horizon=5, context_dim=8,
                                                                         hidden_dim=16, num_heads=2))
    with pytest.raises(ValueError, match="horizon"):
        PolicyConfig(**mismatched)


def test_policy_acts_by_one_sample_of_the_prefix_conditioned_context():
    policy = fm_policy()
    obs, prefix = observation(3), np.zeros((3, 2, 2), dtype=np.float32)
    chunk, info = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, 4, 2) and np.isnan(info["log_prob"]).all() and info["q"] is None
    assert (chunk[..., 0] >= -2.2).all() and (chunk[..., 0] <= 2.2).all()  # the normalised box, in raw units
    # The prefix is part of the context, as for the flow (real-time chunking).
    other, _ = policy.act_batch(obs, prefix + 1.0, generator=torch.Generator().manual_seed(0))
    assert not np.allclose(chunk, other)
    for selection in ("most_likely", "best_of_n"):
        with pytest.raises(ValueError, match="likelihood"):
            policy.act_batch(obs, prefix, selection=selection)
    with pytest.raises(ValueError, match="likelihood"):
        policy.log_prob(obs, torch.zeros(3, 2, 2), torch.zeros(3, 4, 2))


def test_checkpoint_round_trip_reproduces_the_samples(tmp_path):
    policy = fm_policy()
    obs, prefix = observation(2), np.ones((2, 2, 2), dtype=np.float32)
    policy.save(tmp_path / "fm")
    loaded = Policy.load(tmp_path / "fm")
    assert loaded.config.actor == "flow_matching" and loaded.config.flow_matching == policy.config.flow_matching
    a, _ = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(4))
    b, _ = loaded.act_batch(obs, prefix, generator=torch.Generator().manual_seed(4))
    assert np.array_equal(a, b)
