"""The optimised model paths give the reference paths' numbers (sernf_policy.fast_paths).

Fixed seeds, same weights, both paths: chunks, scores, log-densities and gradients agree within
float32 rounding. Each comparison would fail if an optimised path dropped a row, a residual, a
norm, a dropout switch or a layer (they change the numbers by far more than the tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters as dynamo_counters

from sernf_policy import critic as critic_module
from sernf_policy.critic import ChunkCritic, ChunkCriticConfig
from sernf_policy.encoders import EncoderConfig
from sernf_policy.fast_paths import fast_paths_enabled, reference_paths
from sernf_policy.flow import ChunkFlow, ChunkFlowConfig
from sernf_policy.policy import Policy, PolicyConfig

SPEC = {"hand": {"kind": "lowdim", "shape": [5]}, "cube": {"kind": "lowdim", "shape": [3]}}


def _perturbed_policy(horizon: int, prefix_len: int, critic: dict, seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    cfg = PolicyConfig.create(
        SPEC, action_dim=4, obs_history=2, prefix_len=prefix_len, horizon=horizon,
        encoder=EncoderConfig(token_dim=32), flow={"num_layers": 4, "hidden_dim": 32, "num_heads": 4},
        critic=critic, num_samples=16,
    )
    policy = Policy(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in policy.flow.layers:  # the s / b heads start at zero (identity couplings)
            for head in (layer.conditioner.head_s, layer.conditioner.head_b):
                head[-1].weight.copy_(torch.randn(head[-1].weight.shape, generator=gen) * 0.3)
                head[-1].bias.copy_(torch.randn(head[-1].bias.shape, generator=gen) * 0.1)
    policy.fit_normalizers(np.random.default_rng(seed).uniform(-2, 2, size=(200, 4)))
    return policy


def _inputs(batch: int, prefix_len: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    obs = {k: rng.normal(size=(batch, 2, v["shape"][0])).astype(np.float32) for k, v in SPEC.items()}
    return obs, rng.uniform(-1.5, 1.5, size=(batch, prefix_len, 4)).astype(np.float32)


def test_reference_paths_switch_is_scoped():
    assert fast_paths_enabled()
    with reference_paths():
        assert not fast_paths_enabled()
        with reference_paths():
            assert not fast_paths_enabled()
        assert not fast_paths_enabled()
    assert fast_paths_enabled()


@pytest.mark.parametrize(
    ("horizon", "prefix_len", "critic"),
    [
        (6, 2, {"d_model": 32, "num_heads": 4, "num_layers": 3, "ff_dim": 24}),  # cube-like timing
        (5, 0, {"d_model": 32, "num_heads": 4, "num_layers": 1, "ff_dim": 24, "norm_first": True}),
        (1, 1, {"d_model": 48, "num_heads": 4, "num_layers": 2, "ff_dim": 24}),  # H=1: dims partition
    ],
)
def test_act_batch_matches_the_reference_path(horizon, prefix_len, critic):
    policy = _perturbed_policy(horizon, prefix_len, critic)
    obs, prefix = _inputs(3, prefix_len)
    fast_chunks, fast_info = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(7))
    with reference_paths():
        ref_chunks, ref_info = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(7))
    assert fast_chunks.shape == (3, horizon, 4)
    np.testing.assert_array_equal(fast_info["index"], ref_info["index"])
    np.testing.assert_allclose(fast_chunks, ref_chunks, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast_info["q"], ref_info["q"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast_info["log_prob"], ref_info["log_prob"], rtol=1e-4, atol=1e-3)
    # The candidates really differ in score, so equal indices are a real check.
    assert policy.config.num_samples > 1 and np.ptp(ref_info["q"]) >= 0.0


@pytest.mark.parametrize("head_std", [0.3, 3.0])  # 3.0: most candidates on the action clamp
def test_best_of_n_acting_gives_sample_and_choose_outputs(head_std):
    """Plain best-of-N acting recomputes the density of a clamped candidate only if it is
    chosen; the outputs are those of sample() (which fixes every clamped candidate) + choice."""
    policy = _perturbed_policy(6, 2, {"d_model": 32, "num_heads": 4, "num_layers": 3, "ff_dim": 24})
    with torch.no_grad():
        for layer in policy.flow.layers:
            for head in (layer.conditioner.head_s, layer.conditioner.head_b):
                head[-1].weight.mul_(head_std / 0.3)
    obs, prefix = _inputs(3, 2)
    chunks_raw, info = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(5))
    policy.eval()
    prefix_norm = policy.action_normalizer.normalize(torch.as_tensor(prefix))
    with torch.inference_mode():
        chunks, log_prob = policy.sample(obs, prefix_norm, 16, policy.config.sigma_sample,
                                         generator=torch.Generator().manual_seed(5))
        want = policy._choose(obs, prefix_norm, chunks, log_prob, "best_of_n")
        on_clamp = (chunks.abs() >= 1.0 - policy.flow.config.clamp_eps).flatten(2).any(-1)
    chosen_on_clamp = on_clamp[torch.arange(3), want[3]]
    assert bool(chosen_on_clamp.all()) == (head_std == 3.0)  # the recompute really runs (or not)
    np.testing.assert_array_equal(info["index"], want[3].numpy())
    np.testing.assert_allclose(chunks_raw, want[0].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(info["q"], want[2].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(info["log_prob"], want[1].numpy(), rtol=1e-5, atol=1e-4)


def test_all_candidate_scores_match_the_reference_path():
    policy = _perturbed_policy(6, 2, {"d_model": 32, "num_heads": 4, "num_layers": 3, "ff_dim": 24}).eval()
    obs, prefix = _inputs(2, 2)
    prefix_norm = policy.action_normalizer.normalize(torch.as_tensor(prefix))
    with torch.no_grad():
        chunks, log_prob = policy.sample(obs, prefix_norm, 16, 0.7, generator=torch.Generator().manual_seed(1))
        q = policy.min_q(obs, prefix_norm, chunks)
        with reference_paths():
            ref_chunks, ref_log_prob = policy.sample(obs, prefix_norm, 16, 0.7, generator=torch.Generator().manual_seed(1))
            ref_q = policy.min_q(obs, prefix_norm, chunks)
    assert float(ref_q.std()) > 1e-4  # scores that differ between candidates
    torch.testing.assert_close(chunks, ref_chunks, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log_prob, ref_log_prob, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(q, ref_q, rtol=1e-4, atol=1e-6)


def _no_dropout(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0


def _grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


@pytest.mark.parametrize("horizon", [6, 1])
def test_flow_training_log_prob_and_gradients_match(horizon):
    torch.manual_seed(0)
    flow = ChunkFlow(ChunkFlowConfig(action_dim=3, horizon=horizon, context_dim=16, num_layers=4,
                                     hidden_dim=32, num_heads=4))
    with torch.no_grad():
        for layer in flow.layers:
            for head in (layer.conditioner.head_s, layer.conditioner.head_b):
                head[-1].weight.normal_(0.0, 0.3)
    flow.train()
    context = torch.randn(5, 7, 16)
    actions = torch.rand(5, horizon, 3) * 1.8 - 0.9
    results = []
    for reference in (False, True):
        flow.zero_grad()
        with reference_paths() if reference else torch.enable_grad():
            log_prob = flow.log_prob(actions, context)
            samples, sample_lp = flow.sample(context, 3, 1.0, generator=torch.Generator().manual_seed(2))
        (log_prob.sum() + sample_lp.sum() + samples.square().sum()).backward()
        results.append((log_prob.detach(), samples.detach(), _grads(flow)))
    (lp, smp, grad), (ref_lp, ref_smp, ref_grad) = results
    torch.testing.assert_close(lp, ref_lp, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(smp, ref_smp, rtol=1e-4, atol=1e-5)
    assert grad.shape == ref_grad.shape and float(ref_grad.abs().max()) > 0
    torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-3 * float(ref_grad.abs().max()))


@pytest.mark.parametrize("batched_ensemble", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_critic_logits_and_gradients_match(norm_first, num_layers, batched_ensemble, monkeypatch):
    # Small critics run as one batched ensemble, wide ones member by member: check both.
    monkeypatch.setattr(critic_module, "_ENSEMBLE_MAX_WIDTH", 1 << 20 if batched_ensemble else 0)
    torch.manual_seed(0)
    critic = ChunkCritic(ChunkCriticConfig(action_dim=3, horizon=4, prefix_len=2, obs_dim=24, d_model=32,
                                           num_heads=4, num_layers=num_layers, ff_dim=16, norm_first=norm_first))
    tokens, prefix, chunks = torch.randn(3, 5, 24), torch.rand(3, 2, 3), torch.rand(3, 7, 4, 3)
    critic.eval()
    with torch.no_grad():
        fast_score, fast_fwd = critic.score(tokens, prefix, chunks), critic(tokens, prefix, chunks[:, 0])
        with reference_paths():  # eval + no_grad: PyTorch's fused encoder kernel
            ref_score, ref_fwd = critic.score(tokens, prefix, chunks), critic(tokens, prefix, chunks[:, 0])
    torch.testing.assert_close(fast_score, ref_score, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_fwd, ref_fwd, rtol=1e-4, atol=1e-5)
    critic.train()
    _no_dropout(critic)
    grads = []
    for reference in (False, True):
        critic.zero_grad()
        with reference_paths() if reference else torch.enable_grad():
            critic(tokens, prefix, chunks[:, 0]).square().sum().backward()
        grads.append(_grads(critic))
    assert float(grads[1].abs().max()) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-4 * float(grads[1].abs().max()))


def test_critic_dropout_is_active_in_training_on_the_fast_path():
    torch.manual_seed(0)
    critic = ChunkCritic(ChunkCriticConfig(action_dim=3, horizon=4, prefix_len=1, obs_dim=16, d_model=16,
                                           num_heads=2, num_layers=2, ff_dim=16, dropout=0.5)).train()
    tokens, prefix, chunk = torch.randn(4, 3, 16), torch.rand(4, 1, 3), torch.rand(4, 4, 3)
    assert not torch.equal(critic(tokens, prefix, chunk), critic(tokens, prefix, chunk))
    critic.eval()
    assert torch.equal(critic(tokens, prefix, chunk), critic(tokens, prefix, chunk))


def test_coupling_plan_follows_a_loaded_partition():
    cfg = ChunkFlowConfig(action_dim=2, horizon=4, context_dim=8, num_layers=2, hidden_dim=16, num_heads=2)
    flow = ChunkFlow(cfg)
    context = torch.randn(2, 3, 8)
    before = flow.layers[0].plan(context).rows.tolist()
    other = ChunkFlow(ChunkFlowConfig(**{**cfg.__dict__, "seed": 5}))
    flow.load_state_dict(other.state_dict())
    after = flow.layers[0].plan(context).rows.tolist()
    want = torch.nonzero(~other.layers[0].keep_mask.any(-1)).flatten().tolist()
    assert after == want
    assert before != after or flow.layers[0].keep_mask.equal(ChunkFlow(cfg).layers[0].keep_mask)


def test_training_after_acting_uses_plain_tensors():
    """act_batch runs under inference_mode; what it caches must still serve training after."""
    policy = _perturbed_policy(6, 2, {"d_model": 32, "num_heads": 4, "num_layers": 1, "ff_dim": 24})
    obs, prefix = _inputs(2, 2)
    policy.act_batch(obs, prefix)
    policy.train()
    prefix_norm = policy.action_normalizer.normalize(torch.as_tensor(prefix))
    chunk = torch.zeros(2, 6, 4)
    loss = -policy.log_prob(obs, prefix_norm, chunk).mean() - policy.min_q(obs, prefix_norm, chunk[:, None]).mean()
    loss.backward()
    assert all(p.grad is not None for p in policy.flow.parameters() if p.requires_grad)


def test_acting_follows_critic_weights_changed_in_place():
    """The stacked critic weights cached for acting are rebuilt after an in-place update."""
    policy = _perturbed_policy(6, 2, {"d_model": 32, "num_heads": 4, "num_layers": 2, "ff_dim": 24})
    obs, prefix = _inputs(2, 2)
    before = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(4))[1]["q"]
    with torch.no_grad():  # what an optimiser step or load_state_dict does to the parameters
        for member in policy.critic.members:
            member.head.bias.add_(torch.linspace(-1.0, 1.0, member.head.bias.numel()))
    after = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(4))[1]["q"]
    with reference_paths():
        ref = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(4))[1]["q"]
    np.testing.assert_allclose(after, ref, rtol=1e-4, atol=1e-5)
    assert np.abs(after - before).max() > 1e-3


def test_acting_follows_flow_weights_changed_in_place():
    """The couplings' acting-time constants (query-embedding rows, joined head weights) are
    rebuilt after an in-place update."""
    policy = _perturbed_policy(6, 2, {"d_model": 32, "num_heads": 4, "num_layers": 2, "ff_dim": 24})
    obs, prefix = _inputs(2, 2)
    before = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # what an optimiser step or load_state_dict does to the parameters
        for layer in policy.flow.layers:
            conditioner = layer.conditioner
            conditioner.query_embed.add_(torch.linspace(-1.0, 1.0, conditioner.query_embed.numel()))
            conditioner.head_b[0].bias.add_(0.5)
    after = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(4))
    with reference_paths():
        ref = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(4))
    np.testing.assert_allclose(after[0], ref[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(after[1]["log_prob"], ref[1]["log_prob"], rtol=1e-4, atol=1e-3)
    assert np.abs(after[1]["log_prob"] - before[1]["log_prob"]).max() > 1e-2


@pytest.mark.slow
def test_compiled_acting_matches_eager():
    """Policy.compile_for_acting (torch.compile; a minute or more) chooses the eager chunks."""
    policy = _perturbed_policy(6, 2, {"d_model": 32, "num_heads": 4, "num_layers": 2, "ff_dim": 24})
    obs, prefix = _inputs(2, 2)
    eager_chunks, eager_info = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(9))
    policy.compile_for_acting()
    assert policy.flow._compiled_inverse is not None and policy.critic._compiled_score is not None
    dynamo_counters.clear()
    chunks, info = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(9))
    # One whole graph each for the couplings and the critics: a graph break (e.g. tracing
    # torch.is_inference_mode_enabled) silently falls back to eager for the coupling loop.
    assert not dynamo_counters["graph_break"], dict(dynamo_counters["graph_break"])
    assert dynamo_counters["stats"]["unique_graphs"] == 2, dict(dynamo_counters["stats"])
    np.testing.assert_array_equal(info["index"], eager_info["index"])
    np.testing.assert_allclose(chunks, eager_chunks, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(info["log_prob"], eager_info["log_prob"], rtol=1e-4, atol=1e-3)
    # The policy node's warm-up before a compiled checkpoint goes live: same shapes, no recompile.
    assert policy.warm_up(batch_size=2).shape == chunks.shape
    # Training after compiled acting still runs eagerly with gradients.
    policy.train()
    prefix_norm = policy.action_normalizer.normalize(torch.as_tensor(prefix))
    samples, log_prob = policy.sample(obs, prefix_norm, 3, 1.0)
    (samples.square().sum() + log_prob.sum()).backward()
    assert all(p.grad is not None for p in policy.flow.parameters() if p.requires_grad)
