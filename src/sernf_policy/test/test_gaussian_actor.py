"""Gaussian chunk actor (ablation of the flow): exact tanh-Gaussian likelihood, reparameterised
sampling, gradients, dropout, and the policy / checkpoint plumbing of ``actor="gaussian"``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import distributions as D

from sernf_policy.gaussian_actor import GaussianActorConfig, GaussianChunkActor
from sernf_policy.policy import Policy, PolicyConfig

LOWDIM_SPEC = {"hand": {"kind": "lowdim", "shape": [3]}, "cube": {"kind": "lowdim", "shape": [2]}}  # conftest's


def make_actor(horizon=3, action_dim=2, context_dim=8, perturb=0.3, **kw) -> GaussianChunkActor:
    cfg = GaussianActorConfig(action_dim=action_dim, horizon=horizon, context_dim=context_dim,
                              num_layers=2, hidden_dim=16, num_heads=2, **kw)
    actor = GaussianChunkActor(cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # give the zero-initialised heads weights: a context-dependent Gaussian
        for head in (actor.head_mean, actor.head_log_std):
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * perturb)
            head.bias.copy_(torch.randn(head.bias.shape, generator=gen) * perturb)
    return actor.eval()


def reference(actor: GaussianChunkActor, context: torch.Tensor) -> D.Distribution:
    """The same distribution from torch.distributions: tanh of an independent Normal."""
    mean, log_std = actor.distribution(context)
    base = D.Independent(D.Normal(mean, log_std.exp()), 2)
    return D.TransformedDistribution(base, [D.TanhTransform()])


def test_log_prob_matches_torch_distributions_tanh_normal():
    actor = make_actor().double()
    context = torch.randn(5, 4, 8, dtype=torch.float64)
    chunks, lp_sample = actor.sample(context, num_samples=1, sigma=1.0)
    chunks = chunks[:, 0]  # [B, H, A]
    ref = reference(actor, context).log_prob(chunks)
    assert torch.allclose(actor.log_prob(chunks, context), ref, atol=1e-8, rtol=1e-8)
    assert torch.allclose(lp_sample[:, 0], ref, atol=1e-6, rtol=1e-6)
    # A chunk the actor did not sample (e.g. a demo chunk) too.
    data = torch.rand(5, 3, 2, dtype=torch.float64) * 1.8 - 0.9
    assert torch.allclose(actor.log_prob(data, context), reference(actor, context).log_prob(data), atol=1e-8)


def test_density_integrates_to_one_on_the_bounded_support():
    actor = make_actor(horizon=1, action_dim=1).double()
    context = torch.randn(1, 2, 8, dtype=torch.float64)
    grid = torch.linspace(-1 + 1e-9, 1 - 1e-9, 100_001, dtype=torch.float64)
    with torch.no_grad():
        lp = actor.log_prob(grid.view(-1, 1, 1), context.expand(len(grid), -1, -1))
    assert torch.trapezoid(lp.exp(), grid).item() == pytest.approx(1.0, abs=1e-3)


def test_tempered_samples_report_the_model_density_and_stay_in_bounds():
    actor = make_actor().double()  # float64: recomputing atanh of saturated samples is exact enough
    context = torch.randn(3, 4, 8, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    chunks, lp = actor.sample(context, num_samples=7, sigma=0.7, generator=gen)
    assert chunks.shape == (3, 7, 3, 2) and lp.shape == (3, 7)
    assert chunks.abs().max() < 1.0
    again = actor.log_prob(chunks.flatten(0, 1), context.repeat_interleave(7, 0)).view(3, 7)
    assert torch.allclose(lp, again, atol=1e-6)
    same, _ = actor.sample(context, 7, 0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(chunks, same)
    # sigma narrows the sampler, not the model: smaller sigma -> samples closer to tanh(mean)
    mean, _ = actor.distribution(context)
    wide, _ = actor.sample(context, 2000, 1.0, generator=torch.Generator().manual_seed(1))
    narrow, _ = actor.sample(context, 2000, 0.3, generator=torch.Generator().manual_seed(1))
    dist = lambda x: (torch.atanh(x.clamp(-0.999999, 0.999999)) - mean.unsqueeze(1)).abs().mean()  # noqa: E731
    assert dist(narrow) < 0.5 * dist(wide)


def test_gradients_flow_to_every_parameter_and_the_context():
    actor = make_actor(perturb=0.0).train()  # from the zero-initialised heads, as in training
    actor.set_dropout(0.0)
    opt = torch.optim.Adam(actor.parameters(), lr=1e-2)
    data = torch.rand(8, 3, 2) * 1.6 - 0.8
    for _ in range(3):  # the first step moves the zero heads; then gradients reach the decoder
        context = torch.randn(8, 4, 8, requires_grad=True)
        chunks, _ = actor.sample(context, 4, 1.0)  # reparameterised: the Q term's path
        loss = -actor.log_prob(data, context, add_noise=True).mean() + chunks.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    no_grad = [n for n, p in actor.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad
    assert context.grad is not None and context.grad.abs().sum() > 0
    # The sample path alone carries gradient to the mean head (reparameterisation).
    actor.zero_grad()
    actor.sample(torch.randn(2, 4, 8), 3, 0.7)[0].sum().backward()
    assert actor.head_mean.weight.grad.abs().sum() > 0 and actor.head_log_std.weight.grad.abs().sum() > 0


def test_init_matches_the_flow_at_identity_and_nll_learns():
    actor = GaussianChunkActor(GaussianActorConfig(action_dim=2, horizon=3, context_dim=8, num_layers=1,
                                                   hidden_dim=16, num_heads=2))
    mean, log_std = actor.distribution(torch.randn(4, 2, 8))
    assert torch.allclose(mean, torch.zeros_like(mean)) and torch.allclose(log_std, torch.zeros_like(log_std))
    context = torch.randn(64, 2, 8)
    data = torch.tanh(context[:, :1, :2].repeat(1, 3, 1))  # a context-dependent target chunk
    opt = torch.optim.Adam(actor.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = -actor.log_prob(data, context).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 3.0


def test_set_dropout_reaches_every_dropout():
    actor = make_actor(dropout=0.0)
    actor.set_dropout(0.3)
    assert actor.config.dropout == 0.3
    ps = [m.p for m in actor.modules() if isinstance(m, torch.nn.Dropout)]
    assert ps and all(p == 0.3 for p in ps)
    assert all(m.dropout == 0.3 for m in actor.modules() if isinstance(m, torch.nn.MultiheadAttention))
    with pytest.raises(ValueError):
        actor.set_dropout(1.0)


@pytest.mark.parametrize("bad", [dict(hidden_dim=10, num_heads=4), dict(num_layers=0), dict(dropout=1.0),
                                 dict(init_log_std=3.0), dict(clamp_eps=0.5), dict(noise_std=-1.0)])
def test_config_validation(bad):
    kw = dict(action_dim=2, horizon=3, context_dim=8, hidden_dim=16, num_heads=2) | bad
    with pytest.raises(ValueError, match="GaussianActorConfig"):
        GaussianActorConfig(**kw)


# ------------------------------------------------------------------------- policy plumbing


def gaussian_policy_config(tiny_config, **kwargs) -> PolicyConfig:
    return tiny_config(actor="gaussian", gaussian={"num_layers": 1, "hidden_dim": 16, "num_heads": 2}, **kwargs)


def test_policy_checkpoint_round_trip_with_the_gaussian_actor(tmp_path, batch, tiny_config):
    policy = Policy(gaussian_policy_config(tiny_config))
    assert isinstance(policy.flow, GaussianChunkActor) and policy.config.flow is None
    with torch.no_grad():
        policy.flow.head_mean.weight.normal_(0, 0.3)
        policy.flow.head_log_std.weight.normal_(0, 0.3)
    policy.fit_normalizers(np.random.default_rng(0).uniform(-2, 5, size=(64, 2)))
    policy.save(tmp_path / "g", metadata={"stage": "il"})
    header = json.loads((tmp_path / "g" / "config.json").read_text())
    assert header["config"]["actor"] == "gaussian" and header["config"]["flow"] is None
    assert header["config"]["gaussian"]["hidden_dim"] == 16
    loaded = Policy.load(tmp_path / "g")
    assert loaded.config == policy.config and isinstance(loaded.flow, GaussianChunkActor)
    sa, sb = policy.state_dict(), loaded.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    obs, prefix = batch(3)
    for selection in ("best_of_n", "most_likely"):
        policy.config.selection = loaded.config.selection = selection
        a = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(2))
        b = loaded.act_batch(obs, prefix, generator=torch.Generator().manual_seed(2))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1]["index"], b[1]["index"])
        assert a[0].shape == (3, 3, 2)


def test_policy_config_validates_the_actor_choice(tiny_config):
    flow_cfg = tiny_config()
    gauss_cfg = gaussian_policy_config(tiny_config)
    assert flow_cfg.actor == "flow" and flow_cfg.gaussian is None  # the default is unchanged
    kwargs = dict(observation_spec=LOWDIM_SPEC, action_dim=2, obs_history=2, prefix_len=1, horizon=3,
                  encoder=flow_cfg.encoder)
    with pytest.raises(ValueError, match="actor must be one of"):
        PolicyConfig(flow=flow_cfg.flow, actor="diffusion", **kwargs)
    with pytest.raises(ValueError, match="gaussian must be None"):
        PolicyConfig(flow=flow_cfg.flow, gaussian=gauss_cfg.gaussian, **kwargs)
    with pytest.raises(ValueError, match="flow must be None"):
        PolicyConfig(flow=flow_cfg.flow, gaussian=gauss_cfg.gaussian, actor="gaussian", **kwargs)
    with pytest.raises(ValueError, match="GaussianActorConfig"):
        PolicyConfig(flow=None, actor="gaussian", **kwargs)
    with pytest.raises(ValueError, match="ChunkFlowConfig"):
        PolicyConfig(flow=None, **kwargs)
    # Old checkpoints' config.json has neither key: it still loads as a flow policy.
    from sernf_policy.config_io import to_jsonable

    old = to_jsonable(flow_cfg)
    del old["actor"], old["gaussian"]
    assert PolicyConfig.from_dict(old) == flow_cfg


def test_critic_horizon_in_the_policy_config(tiny_config):
    cfg = tiny_config(critic=True)
    assert cfg.critic_horizon == cfg.horizon == 3
    per_step = PolicyConfig.create(LOWDIM_SPEC, 2, 2, 1, 3, encoder=cfg.encoder,
                                   flow={"num_layers": 2, "hidden_dim": 16, "num_heads": 2},
                                   critic={"horizon": 1, "d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 16})
    assert per_step.critic_horizon == 1
    policy = Policy(per_step)
    assert policy.critic.members[0].action_pos.shape[0] == 1 + 1  # T_a = P + 1
    chunks = torch.rand(2, 5, 3, 2) * 2 - 1
    assert torch.equal(policy.critic_actions(chunks), chunks[..., :1, :])
    obs = {"hand": torch.randn(2, 2, 3), "cube": torch.randn(2, 2, 2)}
    prefix = torch.zeros(2, 1, 2)
    q = policy.min_q(obs, prefix, chunks)
    # Chunks that share their first action get the same value: only a_{t+P} is scored.
    other = chunks.clone()
    other[..., 1:, :] = torch.rand_like(other[..., 1:, :])
    policy.eval()
    assert torch.equal(policy.min_q(obs, prefix, chunks), policy.min_q(obs, prefix, other))
    assert q.shape == (2, 5)
    for bad in (2, 4):  # only the chunked (H) and the per-step (1) critic
        with pytest.raises(ValueError, match="critic.horizon"):
            PolicyConfig.create(LOWDIM_SPEC, 2, 2, 1, 3, encoder=cfg.encoder,
                                critic={"horizon": bad, "d_model": 16, "num_heads": 2})
