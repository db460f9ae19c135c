"""The actor as a mixture of conditional flows (``ChunkFlowConfig.components >= 2``): exact
densities, sampling and acting. How imitation separates strategies into the flows is tested with
the learner (``sernf_learner/test/test_flow_assignment.py``)."""

from __future__ import annotations

import pytest
import torch

from sernf_policy.cuda_graph_acting import ActingGraph
from sernf_policy.flow import ChunkFlow, ChunkFlowConfig
from sernf_policy.policy import Policy


def flows(perturb, h: int = 1, a: int = 2, components: int = 2, base_components: int = 0, seed: int = 1,
          std: float = 0.15) -> ChunkFlow:
    """A double-precision mixture whose couplings, tokens and weights all carry random values."""
    cfg = ChunkFlowConfig(action_dim=a, horizon=h, context_dim=6, num_layers=4, hidden_dim=16, num_heads=2,
                          components=components, base_components=base_components)
    flow = perturb(ChunkFlow(cfg), std=std, seed=seed)
    gen = torch.Generator().manual_seed(seed + 20)
    with torch.no_grad():
        flow.component_logits.weight.copy_(0.3 * torch.randn(flow.component_logits.weight.shape, generator=gen))
        flow.component_logits.bias.copy_(0.5 * torch.randn(components, generator=gen))
    return flow.double().eval()


def one_flow(flow: ChunkFlow, m: int, ctx: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log p(a | c, m)`` of flow m alone: the mixture's weights without its log-sum-exp."""
    b = ctx.shape[0]
    token = flow.component_tokens[m].view(1, 1, -1).expand(b, 1, ctx.shape[-1])
    return flow._clamped_log_prob_one(actions, torch.cat([ctx, token], dim=1))


def test_density_integrates_to_one_and_is_the_weighted_sum_of_the_flows(perturb, density_grid):
    flow = flows(perturb)
    points, cell_area = density_grid(200)
    points = points.view(-1, 1, 2)
    ctx = torch.randn(1, 2, 6, dtype=torch.float64).expand(points.shape[0], 2, 6)
    with torch.no_grad():
        log_p = flow.log_prob(points, ctx)
        log_w = flow.component_log_weights(ctx[:1])[0]
        per_flow = torch.stack([one_flow(flow, m, ctx, points) for m in range(2)])  # [M, P]
    assert abs((log_p.exp() * cell_area).sum().item() - 1.0) < 0.02
    for m in range(2):  # each flow is a density too
        assert abs((per_flow[m].exp() * cell_area).sum().item() - 1.0) < 0.02
    torch.testing.assert_close(log_p, torch.logsumexp(log_w[:, None] + per_flow, dim=0))
    assert (per_flow[0] - per_flow[1]).abs().max() > 0.5  # the tokens really make two flows


@pytest.mark.parametrize(("components", "base_components"), [(2, 0), (3, 1)])
def test_sampled_log_prob_is_the_mixture_density(perturb, components, base_components):
    flow = flows(perturb, h=3, a=2, components=components, base_components=base_components)
    ctx = torch.randn(2, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        actions, log_prob = flow.sample(ctx, num_samples=5, sigma=0.5)
        again = flow.log_prob(actions.flatten(0, 1), ctx.repeat_interleave(5, dim=0)).view(2, 5)
    torch.testing.assert_close(log_prob, again, atol=1e-8, rtol=1e-8)


def test_a_clamped_sample_keeps_its_exact_density_without_a_second_pass(perturb):
    # Heads perturbed strongly enough that samples reach the action clamp (as in the issue's
    # finding for one flow): the mixture's density is computed at the returned chunk, so
    # nothing is marked for recomputation and it still equals log_prob of what is returned.
    flow = flows(perturb, h=2, a=2, std=2.0)
    ctx = torch.randn(3, 2, 6, dtype=torch.float64)
    with torch.no_grad():
        actions, log_prob, marked = flow.sample_deferring_clamped(ctx, num_samples=40, sigma=1.0)
        again = flow.log_prob(actions.flatten(0, 1), ctx.repeat_interleave(40, dim=0)).view(3, 40)
    on_clamp = (actions.abs() >= 1.0 - flow.config.clamp_eps).flatten(2).any(dim=-1)
    assert on_clamp.any()
    assert not marked.any()
    torch.testing.assert_close(log_prob, again, atol=1e-8, rtol=1e-8)


def test_samples_follow_the_mixture_density(perturb, histogram):
    """H = A = 1: the histogram of 40k samples at sigma 1 matches the density's mass per bin, so
    each candidate's flow is drawn with its weight."""
    flow = flows(perturb, h=1, a=1, components=2, seed=3, std=0.4)
    with torch.no_grad():  # two flows far apart, so a wrong weighting shows in the histogram
        flow.component_tokens.copy_(3.0 * torch.randn(flow.component_tokens.shape, dtype=torch.float64,
                                                      generator=torch.Generator().manual_seed(5)))
    ctx = torch.randn(1, 2, 6, dtype=torch.float64)
    torch.manual_seed(0)
    observed, expected = histogram(flow, ctx)
    assert expected.sum() > 0.98
    assert (observed - expected).abs().max() < 0.01
    with torch.no_grad():  # the weights matter: other weights give another density and histogram
        flow.component_logits.bias.add_(torch.tensor([3.0, -3.0], dtype=torch.float64))
    other_observed, other_expected = histogram(flow, ctx)
    assert (other_observed - other_expected).abs().max() < 0.01
    assert (other_expected - expected).abs().max() > 0.03


def test_sample_is_reparameterised_through_the_chosen_flow(perturb):
    flow = flows(perturb, h=2, a=2).train()
    ctx = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    actions, log_prob = flow.sample(ctx, num_samples=3)
    (actions.sum() + log_prob.sum()).backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert flow.component_tokens.grad.abs().sum() > 0
    assert flow.component_logits.weight.grad.abs().sum() > 0


def test_refuses_bad_configs_and_a_missing_component_draw(perturb):
    with pytest.raises(ValueError, match="components must be an int >= 1"):
        ChunkFlowConfig(action_dim=2, horizon=2, context_dim=4, components=0)
    with pytest.raises(ValueError, match="base_components 0 or 1"):
        ChunkFlowConfig(action_dim=2, horizon=2, context_dim=4, components=2, base_components=2)
    flow = flows(perturb, h=2, a=2)
    ctx = torch.randn(2, 3, 6, dtype=torch.float64)
    eps = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="component_u"):
        flow.transform_noise(ctx, eps, 0.7)
    with pytest.raises(ValueError, match="no single bijection"):
        flow.forward_transform(torch.zeros(2, 2, 2, dtype=torch.float64), ctx)
    with pytest.raises(ValueError, match="no single bijection"):
        flow.inverse_transform(eps[:, 0], ctx)
    with pytest.raises(ValueError, match="actions must be"):
        flow.log_prob(torch.zeros(2, 3, 2, dtype=torch.float64), ctx)


def test_mixture_policy_round_trips_and_refuses_a_cuda_graph(tmp_path, tiny_config, batch):
    config = tiny_config()
    config.flow.components = 2
    policy = Policy(config)
    with torch.no_grad():
        policy.flow.component_logits.bias.copy_(torch.tensor([0.5, -0.5]))
    policy.save(tmp_path / "mix")
    loaded = Policy.load(tmp_path / "mix")
    assert loaded.config.flow.components == 2
    assert torch.equal(loaded.flow.component_tokens, policy.flow.component_tokens)
    assert torch.equal(loaded.flow.component_logits.bias, policy.flow.component_logits.bias)
    obs, prefix = batch(2)
    out_a = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(3))
    out_b = loaded.act_batch(obs, prefix, generator=torch.Generator().manual_seed(3))
    assert (out_a[0] == out_b[0]).all()
    with pytest.raises(ValueError, match="flow components 1"):
        ActingGraph(policy, 1, 4, 0.7, "best_of_n")
