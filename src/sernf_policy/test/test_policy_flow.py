"""Math of the chunk flow: bijection, exact log-det, normalisation, expressiveness."""

from __future__ import annotations

import math

import pytest
import torch

from sernf_policy.flow import ChunkFlow, ChunkFlowConfig, coupling_keep_masks, select_context_kv

CONFIGS = [  # (H, A, K): odd H, H=1 (split over actions), A=1, H=A=1
    (3, 2, 4),
    (5, 3, 3),
    (1, 3, 4),
    (2, 1, 4),
    (1, 1, 2),
    (4, 2, 5),
]


def make_flow(h: int, a: int, k: int, perturb, d: int = 6, **kw) -> ChunkFlow:
    cfg = ChunkFlowConfig(action_dim=a, horizon=h, context_dim=d, num_layers=k, hidden_dim=16, num_heads=2, **kw)
    flow = perturb(ChunkFlow(cfg), std=0.1).double().eval()
    return flow


@pytest.mark.parametrize(("h", "a", "k"), CONFIGS)
def test_inverse_of_forward_is_identity(h, a, k, perturb):
    flow = make_flow(h, a, k, perturb)
    ctx = torch.randn(7, 3, 6, dtype=torch.float64)
    actions = torch.rand(7, h, a, dtype=torch.float64) * 1.9 - 0.95
    z, logdet = flow.forward_transform(actions, ctx)
    back, logdet_inv = flow.inverse_transform(z, ctx)
    assert torch.allclose(back, actions, atol=1e-6, rtol=0)
    assert torch.allclose(logdet + logdet_inv, torch.zeros_like(logdet), atol=1e-6)
    # the flow is not secretly the identity on the pre-tanh values
    assert (z - torch.atanh(actions)).abs().max() > 1e-2


@pytest.mark.parametrize(("h", "a", "k"), CONFIGS)
def test_forward_of_n_chunks_per_context_is_per_chunk(h, a, k, perturb):
    flow = make_flow(h, a, k, perturb)
    ctx = torch.randn(2, 3, 6, dtype=torch.float64)
    actions = torch.rand(2, 5, h, a, dtype=torch.float64) * 1.9 - 0.95  # [B, N, H, A]
    z, logdet = flow.forward_transform(actions, ctx)
    assert z.shape == actions.shape and logdet.shape == (2, 5)
    for i in range(5):
        z_i, logdet_i = flow.forward_transform(actions[:, i], ctx)
        torch.testing.assert_close(z[:, i], z_i)
        torch.testing.assert_close(logdet[:, i], logdet_i)
    back, logdet_inv = flow.inverse_transform(z, ctx)
    torch.testing.assert_close(back, actions)
    torch.testing.assert_close(logdet + logdet_inv, torch.zeros_like(logdet))
    with pytest.raises(ValueError, match="batch mismatch"):
        flow.forward_transform(actions, ctx[:1])


@pytest.mark.parametrize(("h", "a", "k"), [(3, 2, 4), (1, 3, 3), (2, 1, 4), (1, 1, 2)])
def test_log_prob_matches_autograd_jacobian(h, a, k, perturb):
    flow = make_flow(h, a, k, perturb)
    ctx = torch.randn(1, 2, 6, dtype=torch.float64)
    actions = torch.rand(1, h, a, dtype=torch.float64) * 1.6 - 0.8

    def transform(flat: torch.Tensor) -> torch.Tensor:
        z, _ = flow.forward_transform(flat.view(1, h, a), ctx)
        return z.reshape(-1)

    jac = torch.autograd.functional.jacobian(transform, actions.reshape(-1))  # [HA, HA]
    _, logabsdet = torch.linalg.slogdet(jac)
    z = transform(actions.reshape(-1))
    brute = -0.5 * (z * z).sum() - 0.5 * z.numel() * math.log(2 * math.pi) + logabsdet
    _, logdet = flow.forward_transform(actions, ctx)
    assert abs(logdet.item() - logabsdet.item()) < 1e-6
    assert abs(flow.log_prob(actions, ctx).item() - brute.item()) < 1e-6


@pytest.mark.parametrize(("h", "a"), [(1, 2), (2, 1)])
def test_density_integrates_to_one(h, a, perturb, density_grid):
    """Riemann sum of exp(log_prob) over a fine grid on (-1, 1)^2 (cells uniform in atanh(a))."""
    flow = make_flow(h, a, 4, perturb)
    points, cell_area = density_grid(200)
    points = points.view(-1, h, a)
    ctx = torch.randn(1, 2, 6, dtype=torch.float64).expand(points.shape[0], 2, 6)
    with torch.no_grad():
        log_p = flow.log_prob(points, ctx)
        identity = ChunkFlow(flow.config).double().eval()
        identity.load_state_dict(flow.state_dict())
        for layer in identity.layers:
            for head in (layer.conditioner.head_s, layer.conditioner.head_b):
                head[-1].weight.zero_()
                head[-1].bias.zero_()
        log_p_identity = identity.log_prob(points, ctx)
    mass = (log_p.exp() * cell_area).sum().item()
    assert abs(mass - 1.0) < 0.02
    assert (log_p - log_p_identity).abs().max() > 0.1  # really a non-identity flow
    # the check has teeth: dropping the atanh Jacobian (log 1/(1-a^2)) breaks normalisation
    without_atanh = log_p + torch.log1p(-(points**2)).sum(dim=(1, 2))
    assert abs((without_atanh.exp() * cell_area).sum().item() - 1.0) > 0.2


def test_sample_log_prob_is_model_density(perturb):
    flow = make_flow(3, 2, 4, perturb)
    ctx = torch.randn(2, 3, 6, dtype=torch.float64)
    actions, log_prob = flow.sample(ctx, num_samples=5, sigma=0.7)
    assert actions.shape == (2, 5, 3, 2) and log_prob.shape == (2, 5)
    assert actions.abs().max() < 1.0
    again = flow.log_prob(actions.flatten(0, 1), ctx.repeat_interleave(5, dim=0)).view(2, 5)
    assert torch.allclose(log_prob, again, atol=1e-8)


def test_sample_and_log_prob_agree_when_samples_hit_the_clamp(perturb):
    """A flow with strongly perturbed weights pushes many samples onto the tanh bound: the
    returned log-density is then the one :meth:`log_prob` gives for the returned (clamped)
    chunk, not that of the unclamped point."""
    torch.manual_seed(3)
    flow = perturb(ChunkFlow(ChunkFlowConfig(action_dim=2, horizon=3, context_dim=6, num_layers=4,
                                             hidden_dim=16, num_heads=2)), std=3.0).double().eval()
    ctx = 5.0 * torch.randn(4, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        actions, log_prob = flow.sample(ctx, num_samples=64, sigma=1.5)
        again = flow.log_prob(actions.flatten(0, 1), ctx.repeat_interleave(64, dim=0)).view(4, 64)
    bound = 1.0 - flow.config.clamp_eps
    on_clamp = (actions.abs() >= bound).flatten(2).any(-1)
    assert on_clamp.float().mean() > 0.2, "the perturbed flow should put mass on the bound"
    assert actions.abs().max() <= bound
    torch.testing.assert_close(log_prob, again, atol=1e-6, rtol=1e-8)


def test_sample_is_reparameterised(perturb):
    flow = make_flow(2, 2, 2, perturb).train()
    ctx = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    actions, _ = flow.sample(ctx, num_samples=3)
    actions.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    head = flow.layers[0].conditioner.head_b[-1].weight
    assert head.grad is not None and head.grad.abs().sum() > 0


@pytest.mark.parametrize("base_components", [0, 1])
def test_shared_context_keys_and_values_give_the_same_samples_densities_and_gradients(perturb, base_components):
    """Passes given ``context_kv`` (computed once) compute what they compute from the context
    themselves: the same draws, densities (also for a subset of the contexts) and gradients."""
    flow = make_flow(3, 2, 4, perturb, base_components=base_components).train()
    ctx = torch.randn(5, 3, 6, dtype=torch.float64, requires_grad=True)
    data = torch.rand(5, 3, 2, dtype=torch.float64) * 1.8 - 0.9
    rows = torch.tensor([True, False, True, True, False])

    def losses(shared: bool):
        torch.manual_seed(4)  # the same draws (noise and dropout masks) for both
        kv = flow.context_kv(ctx) if shared else None
        sample_kw = {"context_kv": kv} if shared else {}
        rows_kw = {"context_kv": select_context_kv(kv, rows)} if shared else {}
        actions, log_prob = flow.sample(ctx, 3, 0.7, **sample_kw)
        nll = -flow.log_prob(data[rows], ctx[rows], add_noise=True, **rows_kw)
        return actions, log_prob, nll

    separate, shared = losses(False), losses(True)
    for a, b in zip(separate, shared, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # forward: bit for bit
    grads = []
    for parts in (separate, shared):
        total = sum(p.sum() for p in parts)
        grads.append(torch.autograd.grad(total, [ctx, *flow.parameters()], allow_unused=True))
    for a, b in zip(*grads, strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)


def test_shared_context_keys_and_values_cover_clamped_samples(perturb):
    """Samples on the clamp get their density recomputed from the shared keys and values of
    their own contexts."""
    torch.manual_seed(3)
    flow = perturb(ChunkFlow(ChunkFlowConfig(action_dim=2, horizon=3, context_dim=6, num_layers=4,
                                             hidden_dim=16, num_heads=2)), std=3.0).double().eval()
    ctx = 5.0 * torch.randn(4, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        actions, log_prob = flow.sample(ctx, 32, 1.5, generator=torch.Generator().manual_seed(0))
        again, log_prob_shared = flow.sample(ctx, 32, 1.5, generator=torch.Generator().manual_seed(0),
                                             context_kv=flow.context_kv(ctx))
    assert (actions.abs() >= 1.0 - flow.config.clamp_eps).any(), "the perturbed flow should reach the clamp"
    assert torch.equal(again, actions) and torch.equal(log_prob_shared, log_prob)


def test_shared_context_keys_and_values_are_checked(perturb):
    flow = make_flow(3, 2, 4, perturb)
    ctx = torch.randn(4, 3, 6, dtype=torch.float64)
    kv = flow.context_kv(ctx)
    with pytest.raises(ValueError, match="context_kv must hold"):
        flow.sample(ctx[:2], 2, context_kv=kv)  # another batch
    with pytest.raises(ValueError, match="context_kv must hold"):
        flow.log_prob(torch.zeros(4, 3, 2, dtype=torch.float64), ctx, context_kv=kv[:-1])  # a layer short
    mixture = ChunkFlow(ChunkFlowConfig(action_dim=2, horizon=3, context_dim=6, num_layers=2, hidden_dim=16,
                                        num_heads=2, components=2))
    with pytest.raises(ValueError, match="mixture of 2 flows"):
        mixture.context_kv(torch.randn(4, 3, 6))


def test_fresh_flow_is_identity_coupling():
    cfg = ChunkFlowConfig(action_dim=2, horizon=4, context_dim=5, num_layers=3, hidden_dim=16, num_heads=2)
    flow = ChunkFlow(cfg).eval()
    actions = torch.rand(3, 4, 2) * 1.8 - 0.9
    z, _ = flow.forward_transform(actions, torch.randn(3, 2, 5))
    assert torch.allclose(z, torch.atanh(actions), atol=1e-5)


def test_noise_only_in_training_with_flag(perturb):
    flow = make_flow(2, 2, 2, perturb)
    ctx = torch.randn(4, 2, 6, dtype=torch.float64)
    actions = torch.rand(4, 2, 2, dtype=torch.float64) - 0.5
    base = flow.log_prob(actions, ctx)
    assert torch.equal(base, flow.log_prob(actions, ctx, add_noise=True))  # eval: no noise
    flow.train()
    assert torch.equal(base, flow.log_prob(actions, ctx))  # training, flag off: no noise
    assert not torch.equal(base, flow.log_prob(actions, ctx, add_noise=True))


def test_log_prob_is_finite_at_the_bounds(perturb):
    flow = make_flow(2, 2, 2, perturb)
    actions = torch.tensor([[[1.0, -1.0], [0.0, 1.5]]], dtype=torch.float64)
    assert torch.isfinite(flow.log_prob(actions, torch.zeros(1, 1, 6, dtype=torch.float64))).all()


def test_partitions_cover_every_action_and_are_stored():
    for h, a in [(3, 2), (6, 1), (1, 4)]:
        masks = coupling_keep_masks(h, a, 6, seed=3)
        for k in range(0, 6, 2):  # each pair of layers transforms every entry at least once
            assert bool((~masks[k] | ~masks[k + 1]).all())
            assert bool((masks[k] ^ masks[k + 1]).all())
    flow = ChunkFlow(ChunkFlowConfig(action_dim=2, horizon=5, context_dim=4, num_layers=4, seed=7, hidden_dim=8, num_heads=2))
    names = [n for n in flow.state_dict() if n.endswith("keep_mask")]
    assert len(names) == 4
    other = ChunkFlow(ChunkFlowConfig(action_dim=2, horizon=5, context_dim=4, num_layers=4, seed=8, hidden_dim=8, num_heads=2))
    assert any(not torch.equal(flow.state_dict()[n], other.state_dict()[n]) for n in names)


def test_set_dropout_changes_every_dropout():
    flow = ChunkFlow(ChunkFlowConfig(action_dim=2, horizon=2, context_dim=4, num_layers=2, hidden_dim=8, num_heads=2, dropout=0.5))
    flow.set_dropout(0.1)
    assert all(m.p == 0.1 for m in flow.modules() if isinstance(m, torch.nn.Dropout))
    assert flow.config.dropout == 0.1


def test_compiled_training_keeps_attention_dropout():
    """Under torch.compile in training mode every attention of the couplings, self and cross,
    drops out at the configured rate: acting's shared-context cross-attention (no dropout) is
    for code without dropout only. The graph dynamo hands to the backend is read directly."""
    rates: list[float] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs):
        for node in gm.graph.nodes:
            if "scaled_dot_product_attention" in str(node.target):
                rates.append(float(node.kwargs.get("dropout_p", node.args[4] if len(node.args) > 4 else 0.0)))
        return gm.forward

    cfg = ChunkFlowConfig(action_dim=3, horizon=4, context_dim=6, num_layers=2, hidden_dim=16, num_heads=2, dropout=0.3)
    flow = ChunkFlow(cfg).train()
    actions, context = torch.rand(5, 4, 3) * 1.8 - 0.9, torch.randn(5, 3, 6)
    torch._dynamo.reset()
    try:
        torch.compile(flow.log_prob, backend=recording_backend, dynamic=False)(actions, context)
        assert len(rates) == 2 * cfg.num_layers  # a self- and a cross-attention per coupling
        assert rates == [0.3] * len(rates)
        rates.clear()
        flow.eval()  # without dropout the compiled code may take the shared-context layout
        torch.compile(flow.log_prob, backend=recording_backend, dynamic=False)(actions, context)
        assert rates and set(rates) == {0.0}
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"action_dim": 0},
        {"horizon": -1},
        {"hidden_dim": 12, "num_heads": 8},
        {"dropout": 1.0},
        {"noise_std": -0.1},
        {"num_layers": 2.5},
    ],
)
def test_config_validation(kwargs):
    base = {"action_dim": 2, "horizon": 2, "context_dim": 4}
    with pytest.raises(ValueError):
        ChunkFlowConfig(**{**base, **kwargs})


def test_shape_errors_are_clear(perturb):
    flow = make_flow(2, 2, 2, perturb)
    with pytest.raises(ValueError, match="actions"):
        flow.log_prob(torch.zeros(1, 3, 2, dtype=torch.float64), torch.zeros(1, 1, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="context"):
        flow.sample(torch.zeros(1, 1, 5, dtype=torch.float64), 2)


def test_learns_a_bimodal_chunk_distribution():
    """NLL training on chunks that are all +0.5 or all -0.5: both modes keep ~half the mass."""
    torch.manual_seed(0)
    cfg = ChunkFlowConfig(action_dim=2, horizon=2, context_dim=8, num_layers=6, hidden_dim=32, num_heads=2, noise_std=0.01)
    flow = ChunkFlow(cfg)
    ctx = torch.zeros(1, 1, 8)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(350):
        sign = torch.randint(0, 2, (128, 1, 1)).float() * 2 - 1
        chunk = 0.5 * sign + 0.03 * torch.randn(128, 2, 2)
        loss = -flow.log_prob(chunk, ctx.expand(128, 1, 8), add_noise=True).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        samples, _ = flow.sample(ctx, 2000, sigma=1.0)
    samples = samples[0]
    positive = (samples.mean(dim=(1, 2)) > 0).float().mean().item()
    near_mode = ((samples - 0.5).abs().amax((1, 2)) < 0.15) | ((samples + 0.5).abs().amax((1, 2)) < 0.15)
    assert 0.4 <= positive <= 0.6
    assert near_mode.float().mean().item() > 0.8
