"""ACT (Table I baseline): config validation, shapes, the CVAE's KL term, reconstruction of its
training chunks at z = 0, and the policy / checkpoint plumbing of ``actor="act"`` (its own
20-action chunk, no prefix in its context, one deterministic prediction)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sernf_policy.act_actor import ACTActorConfig, ACTChunkActor
from sernf_policy.encoders import EncoderConfig
from sernf_policy.policy import Policy, PolicyConfig

LOWDIM_SPEC = {"hand": {"kind": "lowdim", "shape": [3]}, "cube": {"kind": "lowdim", "shape": [2]}}  # conftest's


def make_actor(horizon=4, chunk_len=6, action_dim=2, context_dim=8, **kw) -> ACTChunkActor:
    cfg = ACTActorConfig(action_dim=action_dim, horizon=horizon, context_dim=context_dim, chunk_len=chunk_len,
                         **{"latent_dim": 4, "hidden_dim": 16, "num_heads": 2, "encoder_layers": 1,
                            "decoder_layers": 1, "dropout": 0.0, **kw})
    return ACTChunkActor(cfg)


@pytest.fixture
def one_thread():
    """Training tests run on one thread: on a loaded 2-core machine two threads are far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("chunk_len", 3, "chunk_len"), ("latent_dim", 0, "latent_dim"), ("hidden_dim", 15, "divisible"),
    ("kl_weight", -1.0, "kl_weight"), ("ensemble_m", float("inf"), "ensemble_m"), ("dropout", 1.0, "dropout"),
    ("temporal_ensembling", "yes", "temporal_ensembling"), ("encoder_layers", True, "encoder_layers"),
])
def test_config_validation(field, value, match):
    kw = {"action_dim": 2, "horizon": 4, "context_dim": 8, "hidden_dim": 16, "num_heads": 2, field: value}
    with pytest.raises(ValueError, match=match):
        ACTActorConfig(**kw)


def test_defaults_are_the_papers_g3_values():
    cfg = ACTActorConfig(action_dim=2, horizon=10, context_dim=512)
    assert (cfg.chunk_len, cfg.latent_dim, cfg.kl_weight, cfg.ensemble_m) == (20, 32, 10.0, 0.01)
    assert (cfg.hidden_dim, cfg.num_heads, cfg.encoder_layers, cfg.decoder_layers, cfg.mlp_hidden_dim) == (
        512, 8, 3, 3, 2048)
    assert cfg.dropout == 0.1 and cfg.causal and cfg.temporal_ensembling
    assert ACTActorConfig.from_dict(json.loads(json.dumps(cfg.__dict__))) == cfg


def test_shapes_and_deterministic_acting_at_the_prior_mean():
    actor = make_actor().eval()
    context = torch.randn(3, 5, 8)
    full = actor.predict(context)
    assert full.shape == (3, 6, 2) and full.abs().max() <= 1.0
    chunks = actor.sample(context, num_samples=4, sigma=0.7, generator=torch.Generator().manual_seed(0))
    assert chunks.shape == (3, 4, 4, 2)
    assert torch.equal(chunks, full[:, None, :4].expand(-1, 4, -1, -1))  # the first H of K, z = 0
    assert torch.equal(actor.predict(context), full)
    mu, log_var = actor.posterior(torch.rand(3, 6, 2), context[:, :2])
    assert mu.shape == log_var.shape == (3, 4)
    mu0, _ = actor.posterior(torch.rand(3, 6, 2), context[:, :0])  # no low-dim keys: actions only
    assert mu0.shape == (3, 4)
    with pytest.raises(ValueError, match="actions"):
        actor.posterior(torch.rand(3, 4, 2), context[:, :2])
    with pytest.raises(ValueError, match="context"):
        actor.predict(torch.randn(3, 5, 7))


def test_loss_is_l1_plus_weighted_kl_and_the_kl_pulls_the_posterior_to_the_prior():
    torch.manual_seed(0)
    actor = make_actor(kl_weight=0.0).train()
    chunks, context = torch.rand(8, 6, 2) * 2 - 1, torch.randn(8, 5, 8)
    loss, parts = actor.loss(chunks, context, context[:, 3:])
    assert loss.item() == pytest.approx(parts["il/act_l1"], rel=1e-5) and parts["il/act_kl"] >= 0
    with torch.no_grad():  # a posterior far from N(0, I): the KL term is large and weighted
        actor.latent_head.bias.fill_(1.0)
    actor.config.kl_weight = 10.0
    torch.manual_seed(1)
    loss, parts = actor.loss(chunks, context, context[:, 3:])
    assert parts["il/act_kl"] > 1.0
    assert loss.item() == pytest.approx(parts["il/act_l1"] + 10.0 * parts["il/act_kl"], rel=1e-4)


def test_act_reconstructs_its_training_chunks(one_thread):
    """Four observations, four distinct 6-action chunks: after a short training the decoder at
    z = 0 gives each observation its own chunk back."""
    torch.manual_seed(0)
    actor = make_actor(hidden_dim=32, num_heads=4, latent_dim=4)
    context = torch.randn(4, 3, 8)
    steps = torch.linspace(0, 1, 6)
    phases = torch.tensor([0.0, 1.5, 3.0, 4.5])
    chunks = 0.6 * torch.sin(4 * steps[None, :, None] + phases[:, None, None] + torch.tensor([0.0, 1.0]))
    assert chunks.shape == (4, 6, 2)
    opt = torch.optim.AdamW(actor.parameters(), lr=3e-3, weight_decay=1e-4)
    actor.train()
    for _ in range(400):
        loss, _ = actor.loss(chunks, context, context[:, 2:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    actor.eval()
    with torch.no_grad():
        error = (actor.predict(context) - chunks).abs().mean(dim=(1, 2))
        untrained = (make_actor(hidden_dim=32, num_heads=4).eval().predict(context) - chunks).abs().mean()
    assert error.max() < 0.08 and untrained > 0.3, (error, untrained)


# ---------------------------------------------------------------------------------- policy


def act_policy(**overrides) -> Policy:
    cfg = PolicyConfig.create(
        LOWDIM_SPEC, action_dim=2, obs_history=2, prefix_len=2, horizon=4, encoder=EncoderConfig(token_dim=8),
        actor="act", act={"chunk_len": 7, "latent_dim": 4, "hidden_dim": 16, "num_heads": 2,
                          "encoder_layers": 1, "decoder_layers": 1}, **overrides,
    )
    policy = Policy(cfg)
    policy.fit_normalizers(np.array([[-2.0, 0.0], [2.0, 10.0]], dtype=np.float32))
    with torch.no_grad():  # a context-dependent head
        policy.flow.head.weight.mul_(20.0)
    return policy


def observation(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"hand": rng.normal(size=(batch, 2, 3)).astype(np.float32),
            "cube": rng.normal(size=(batch, 2, 2)).astype(np.float32)}


def test_policy_config_for_act():
    policy = act_policy()
    cfg = policy.config
    assert cfg.selection == "single" and cfg.critic is None and not cfg.has_likelihood
    assert cfg.imitation_horizon == 7 and cfg.horizon == 4  # its own chunk length, independent of H
    flow_cfg = PolicyConfig.create(LOWDIM_SPEC, 2, 2, 2, 4, encoder=EncoderConfig(token_dim=8))
    with pytest.raises(ValueError, match="critic must be None"):
        PolicyConfig(**dict(cfg.__dict__, critic=flow_cfg.critic))
    with pytest.raises(ValueError, match="act must be None"):
        PolicyConfig(**dict(flow_cfg.__dict__, act=cfg.act))
    with pytest.raises(ValueError, match="chunk_len"):
        PolicyConfig.create(LOWDIM_SPEC, 2, 2, 2, 8, encoder=EncoderConfig(token_dim=8), actor="act",
                            act={"chunk_len": 7, "hidden_dim": 16, "num_heads": 2})


def test_act_context_is_the_observation_tokens_and_its_state_tokens_the_low_dim_ones():
    policy = act_policy()
    obs = observation(3)
    prefix = torch.zeros(3, 2, 2)
    context = policy.actor_context(obs, prefix)
    tokens = policy.actor_encoder(policy.normalize_obs(obs))
    assert torch.equal(context, tokens)  # no prefix tokens: ACT does not condition on the queue
    assert torch.equal(policy.state_tokens(context), tokens)  # low-dim only: every token is a state token
    with pytest.raises(ValueError, match="prefix"):
        policy.actor_context(obs, torch.zeros(3, 1, 2))


def test_policy_acts_with_the_first_h_actions_and_predicts_the_whole_chunk_in_raw_units():
    policy = act_policy()
    obs, prefix = observation(3), np.zeros((3, 2, 2), dtype=np.float32)
    full = policy.predict_full_chunk_batch(obs, prefix)
    chunk, info = policy.act_batch(obs, prefix)
    assert full.shape == (3, 7, 2) and chunk.shape == (3, 4, 2) and np.isnan(info["log_prob"]).all()
    assert np.allclose(chunk, full[:, :4], atol=1e-6)
    assert full[..., 1].min() >= -0.6 and full[..., 1].max() <= 10.6  # the normaliser's box (5 % margin)
    assert not np.allclose(full, policy.predict_full_chunk_batch(observation(3, seed=1), prefix))
    # The prefix is checked but does not change ACT's prediction.
    assert np.array_equal(full, policy.predict_full_chunk_batch(obs, prefix + 3.0))
    with pytest.raises(ValueError, match="prefix"):
        policy.predict_full_chunk_batch(obs, np.zeros((3, 3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="likelihood"):
        policy.act_batch(obs, prefix, selection="most_likely")
    flow_policy = Policy(PolicyConfig.create(LOWDIM_SPEC, 2, 2, 2, 4, encoder=EncoderConfig(token_dim=8),
                                             flow={"num_layers": 1, "hidden_dim": 8, "num_heads": 2}))
    with pytest.raises(ValueError, match="actor='act'"):
        flow_policy.predict_full_chunk_batch(obs, prefix)


def test_checkpoint_round_trip_reproduces_the_prediction(tmp_path):
    policy = act_policy()
    obs, prefix = observation(2), np.ones((2, 2, 2), dtype=np.float32)
    policy.save(tmp_path / "act")
    loaded = Policy.load(tmp_path / "act")
    assert loaded.config.actor == "act" and loaded.config.act == policy.config.act
    assert np.array_equal(policy.predict_full_chunk_batch(obs, prefix), loaded.predict_full_chunk_batch(obs, prefix))
