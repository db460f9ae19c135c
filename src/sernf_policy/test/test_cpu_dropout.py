"""The cheaper CPU dropout mask: the rate, the scaling, reproducibility, gradients, fall-backs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sernf_policy import cpu_dropout
from sernf_policy.critic import ChunkCritic, ChunkCriticConfig
from sernf_policy.fast_paths import reference_paths
from sernf_policy.flow import ChunkFlow, ChunkFlowConfig


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_every_lane_drops_at_the_rate(p):
    x = torch.ones(400_000)
    torch.manual_seed(0)
    y = cpu_dropout.dropout(x, p)
    dropped = (y == 0).float()
    # Four elements share one 64-bit draw: check each 16-bit lane, not only the mean (a lane
    # fed by a constant bit would drop never or always).
    per_lane = dropped.view(-1, 4).mean(0)
    sd = math.sqrt(p * (1 - p) / (x.numel() / 4))
    assert torch.all((per_lane - p).abs() < 5 * sd), per_lane


def test_kept_values_are_scaled_to_keep_the_expectation():
    p = 0.1
    x = torch.randn(64, 128)
    torch.manual_seed(1)
    y = cpu_dropout.dropout(x, p)
    keep = y != 0
    lanes = 1 << 16
    scale = lanes / (lanes - round(p * lanes))
    torch.testing.assert_close(y[keep], x[keep] * scale, rtol=0, atol=0)
    ones = cpu_dropout.dropout(torch.ones(1_000_000), p)
    assert abs(ones.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / 1e6)


def test_same_seed_same_mask_and_other_seed_another():
    x = torch.randn(32, 256)
    torch.manual_seed(7)
    a = cpu_dropout.dropout(x, 0.2)
    torch.manual_seed(7)
    b = cpu_dropout.dropout(x, 0.2)
    torch.manual_seed(8)
    c = cpu_dropout.dropout(x, 0.2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_gradient_is_the_scaled_mask():
    x = torch.randn(16, 512, requires_grad=True)
    torch.manual_seed(3)
    y = cpu_dropout.dropout(x, 0.3)
    y.sum().backward()
    mask = (y != 0).float() * (1 << 16) / ((1 << 16) - round(0.3 * (1 << 16)))
    torch.testing.assert_close(x.grad, mask, rtol=0, atol=0)


def test_identity_when_it_cannot_drop_and_refuses_bad_rates():
    x = torch.randn(100, 100)
    assert cpu_dropout.dropout(x, 0.5, training=False) is x
    assert cpu_dropout.dropout(x, 0.0) is x
    for p in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="dropout probability"):
            cpu_dropout.dropout(x, p)


def test_small_tensors_use_torchs_own_dropout():
    x = torch.randn(cpu_dropout.MIN_NUMEL - 1)
    torch.manual_seed(5)
    ours = cpu_dropout.dropout(x, 0.25)
    torch.manual_seed(5)
    native = F.dropout(x, 0.25, training=True)
    assert torch.equal(ours, native)


def _flow_and_critic_outputs(reference: bool):
    """Training-mode outputs of a flow and a critic with dropout, for a fixed seed."""
    torch.manual_seed(0)
    flow = ChunkFlow(ChunkFlowConfig(action_dim=3, horizon=6, context_dim=16, num_layers=2, hidden_dim=32,
                                     num_heads=4, dropout=0.2)).train()
    with torch.no_grad():  # the s / b heads start at zero, where dropout could not show
        for layer in flow.layers:
            for head in (layer.conditioner.head_s, layer.conditioner.head_b):
                head[-1].weight.normal_(0.0, 0.3)
    critic = ChunkCritic(ChunkCriticConfig(action_dim=3, horizon=6, prefix_len=2, obs_dim=16, d_model=32,
                                           num_heads=4, num_layers=2, ff_dim=32, dropout=0.2)).train()
    context, actions = torch.randn(64, 5, 16), torch.rand(64, 6, 3) * 1.8 - 0.9
    tokens, prefix = torch.randn(64, 5, 16), torch.rand(64, 2, 3)
    with reference_paths() if reference else torch.enable_grad():
        torch.manual_seed(1)
        return flow.log_prob(actions, context), critic(tokens, prefix, actions)


@pytest.mark.parametrize("reference", [False, True])
def test_only_the_optimised_training_paths_use_the_cheaper_mask(reference, monkeypatch):
    cheap = _flow_and_critic_outputs(reference)
    monkeypatch.setattr(cpu_dropout, "MIN_NUMEL", 1 << 62)  # every tensor takes torch's own dropout
    native = _flow_and_critic_outputs(reference)
    for ours, theirs in zip(cheap, native, strict=True):
        assert torch.equal(ours, theirs) == reference  # the reference paths keep torch's masks
