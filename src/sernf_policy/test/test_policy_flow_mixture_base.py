"""The chunk flow with a learned mixture base distribution (``ChunkFlowConfig.base_components >= 1``)."""

from __future__ import annotations

import pytest
import torch

from sernf_policy.cuda_graph_acting import ActingGraph
from sernf_policy.flow import ChunkFlow, ChunkFlowConfig
from sernf_policy.policy import Policy


def mixture_flow(perturb, h: int = 1, a: int = 2, components: int = 3, seed: int = 1) -> ChunkFlow:
    """A double-precision flow whose couplings and mixture heads all carry random weights."""
    cfg = ChunkFlowConfig(action_dim=a, horizon=h, context_dim=6, num_layers=4, hidden_dim=16, num_heads=2,
                          base_components=components)
    flow = perturb(ChunkFlow(cfg), std=0.1, seed=seed)
    gen = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for head in (flow.base.logits, flow.base.mean, flow.base.log_std):
            head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=gen))
            head.bias.copy_(0.3 * torch.randn(head.bias.shape, generator=gen))
        flow.base.log_std.bias.sub_(0.5)  # narrower components: next to no mass beyond the tanh clamp
    return flow.double().eval()


def test_mixture_density_integrates_to_one(perturb, density_grid):
    """Riemann sum over (-1, 1)^2 with cells uniform in atanh(a) (as for the N(0, I) base)."""
    flow = mixture_flow(perturb)
    points, cell_area = density_grid(200)
    points = points.view(-1, 1, 2)
    ctx = torch.randn(1, 2, 6, dtype=torch.float64).expand(points.shape[0], 2, 6)
    with torch.no_grad():
        log_p = flow.log_prob(points, ctx)
        standard = ChunkFlow(ChunkFlowConfig(**{**vars(flow.config), "base_components": 0})).double().eval()
        standard.load_state_dict({k: v for k, v in flow.state_dict().items() if not k.startswith("base.")})
        log_p_standard = standard.log_prob(points, ctx)
    assert abs((log_p.exp() * cell_area).sum().item() - 1.0) < 0.02
    assert (log_p - log_p_standard).abs().max() > 0.5  # the base really is another density


def test_samples_follow_the_mixture_density(perturb, histogram):
    """H = A = 1: the histogram of 40k samples at sigma 1 matches the density's mass per bin, so
    components are drawn with their weights and scaled by their own deviations."""
    flow = mixture_flow(perturb, h=1, a=1, components=3, seed=2)
    ctx = torch.randn(1, 2, 6, dtype=torch.float64)
    torch.manual_seed(0)
    observed, expected = histogram(flow, ctx)
    assert expected.sum() > 0.98
    assert (observed - expected).abs().max() < 0.01
    with torch.no_grad():  # the weights matter: another weighting gives another histogram
        flow.base.logits.bias.add_(torch.tensor([3.0, 0.0, -3.0], dtype=torch.float64))
    other, _ = histogram(flow, ctx)
    assert (other - expected).abs().max() > 0.03


@pytest.mark.parametrize("components", [1, 3])
def test_sampled_log_prob_is_the_model_density(perturb, components):
    flow = mixture_flow(perturb, h=3, a=2, components=components)
    ctx = torch.randn(2, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        actions, log_prob = flow.sample(ctx, num_samples=5, sigma=0.5)
        again = flow.log_prob(actions.flatten(0, 1), ctx.repeat_interleave(5, dim=0)).view(2, 5)
    torch.testing.assert_close(log_prob, again, atol=1e-8, rtol=1e-8)


def test_mixture_sample_is_reparameterised(perturb):
    flow = mixture_flow(perturb, h=2, a=2).train()
    ctx = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    actions, _ = flow.sample(ctx, num_samples=3)
    actions.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert flow.base.mean.weight.grad.abs().sum() > 0 and flow.base.log_std.weight.grad.abs().sum() > 0


def test_mixture_separates_a_bimodal_context_dependent_distribution():
    """Chunks are all +m(c) or all -m(c) (m depends on the context): after NLL training the most
    likely of 16 samples at sigma 0.1 lies on a mode for every context, not between them, and
    sigma 1 keeps both modes."""
    torch.manual_seed(0)
    cfg = ChunkFlowConfig(action_dim=2, horizon=2, context_dim=4, num_layers=2, hidden_dim=16, num_heads=2,
                          noise_std=0.01, base_components=2)
    flow = ChunkFlow(cfg)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)

    def modes(ctx):  # [B, 1, 4] -> mode magnitude [B, 1, 1] in [0.3, 0.7]
        return 0.5 + 0.2 * torch.tanh(ctx[:, :, :1])

    for _ in range(400):
        ctx = torch.randn(128, 1, 4)
        sign = torch.randint(0, 2, (128, 1, 1)).float() * 2 - 1
        chunk = sign * modes(ctx) + 0.03 * torch.randn(128, 2, 2)
        loss = -flow.log_prob(chunk, ctx, add_noise=True).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    ctx = torch.randn(64, 1, 4)
    with torch.no_grad():
        chunks, log_prob = flow.sample(ctx, 16, sigma=0.1)
        best = chunks[torch.arange(64), log_prob.argmax(dim=1)]  # [64, 2, 2]
        wide, _ = flow.sample(ctx, 200, sigma=1.0)
    distance_to_mode = (best.abs() - modes(ctx)).abs().amax(dim=(1, 2))
    assert distance_to_mode.max() < 0.1
    positive = (wide.mean(dim=(2, 3)) > 0).float().mean().item()
    assert 0.35 <= positive <= 0.65


def test_mixture_needs_its_component_draw_and_refuses_bad_config(perturb):
    flow = mixture_flow(perturb, h=2, a=2)
    ctx = torch.randn(2, 3, 6, dtype=torch.float64)
    eps = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="component_u"):
        flow.transform_noise(ctx, eps, 0.7)
    with pytest.raises(ValueError, match="component_u"):
        flow.transform_noise(ctx, eps, 0.7, torch.rand(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="base_components"):
        ChunkFlowConfig(action_dim=2, horizon=2, context_dim=4, base_components=-1)


def test_mixture_policy_round_trips_and_refuses_a_cuda_graph(tmp_path, tiny_config, batch):
    config = tiny_config()
    config.flow.base_components = 2
    policy = Policy(config)
    with torch.no_grad():
        policy.flow.base.logits.bias.copy_(torch.tensor([0.5, -0.5]))
    policy.save(tmp_path / "mix")
    loaded = Policy.load(tmp_path / "mix")
    assert loaded.config.flow.base_components == 2
    assert torch.equal(loaded.flow.base.logits.bias, policy.flow.base.logits.bias)
    obs, prefix = batch(2)
    out_a = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(3))
    out_b = loaded.act_batch(obs, prefix, generator=torch.Generator().manual_seed(3))
    assert (out_a[0] == out_b[0]).all()
    with pytest.raises(ValueError, match="base_components"):
        ActingGraph(policy, 1, 4, 0.7, "best_of_n")
