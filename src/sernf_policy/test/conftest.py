"""Shared fixtures for the sernf_policy tests (tiny configs: the suite must stay fast on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sernf_policy.encoders import EncoderConfig
from sernf_policy.flow import ChunkFlow
from sernf_policy.policy import Policy, PolicyConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def perturb_flow_heads(flow: ChunkFlow, std: float = 0.1, seed: int = 1) -> ChunkFlow:
    """Give the zero-initialised s/b heads random weights, so the flow is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in flow.layers:
            for head in (layer.conditioner.head_s, layer.conditioner.head_b):
                last = head[-1]
                last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * std)
                last.bias.copy_(torch.randn(last.bias.shape, generator=gen) * std)
    return flow


@pytest.fixture
def perturb():
    return perturb_flow_heads


def atanh_grid(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells on (-1, 1)^2 for a Riemann sum of a flow's density: ``(points [n*n, 2], cell areas
    [n*n])``. The atanh density piles up near +-1 before dropping to 0, so the edges are
    ``tanh(linspace(-7, 7))``: uniform in atanh(a), fine where the density is steep, and the
    sum is still an ordinary a-space Riemann sum (sensitive to a missing atanh Jacobian)."""
    edges = torch.tanh(torch.linspace(-7.0, 7.0, n + 1, dtype=torch.float64))
    mids, widths = (edges[1:] + edges[:-1]) / 2, edges[1:] - edges[:-1]
    g1, g2 = torch.meshgrid(mids, mids, indexing="ij")
    points = torch.stack([g1.reshape(-1), g2.reshape(-1)], dim=-1)
    return points, (widths[:, None] * widths[None, :]).reshape(-1)


@pytest.fixture
def density_grid():
    return atanh_grid


def sample_histogram(flow: ChunkFlow, ctx: torch.Tensor, num_samples: int = 40_000) -> tuple[torch.Tensor, torch.Tensor]:
    """For a flow with H = A = 1 and one context ``[1, L, D]``: ``(observed, expected)``, the
    fraction of ``num_samples`` samples at sigma 1 in each of 16 bins (uniform in atanh(a) over
    [-4, 4]) and the mass the flow's density puts there (a fine Riemann sum)."""
    edges = torch.tanh(torch.linspace(-4.0, 4.0, 17, dtype=torch.float64))
    fine = torch.tanh(torch.linspace(-6.0, 6.0, 20_001, dtype=torch.float64))
    mids, widths = (fine[1:] + fine[:-1]) / 2, fine[1:] - fine[:-1]
    with torch.no_grad():
        samples, _ = flow.sample(ctx, num_samples, sigma=1.0)
        mass = flow.log_prob(mids.view(-1, 1, 1), ctx.expand(mids.numel(), *ctx.shape[1:])).exp() * widths
    expected = torch.stack([mass[(mids >= lo) & (mids < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    return torch.histogram(samples.flatten(), bins=edges).hist / samples.numel(), expected


@pytest.fixture
def histogram():
    return sample_histogram


LOWDIM_SPEC = {"hand": {"kind": "lowdim", "shape": [3]}, "cube": {"kind": "lowdim", "shape": [2]}}


def tiny_policy_config(spec=None, critic=True, **kwargs) -> PolicyConfig:
    """A policy config with tiny widths (A=2, T=2, P=1, H=3)."""
    return PolicyConfig.create(
        spec or LOWDIM_SPEC,
        action_dim=2,
        obs_history=2,
        prefix_len=1,
        horizon=3,
        encoder=EncoderConfig(token_dim=16),
        flow={"num_layers": 2, "hidden_dim": 16, "num_heads": 2},
        critic=dict(d_model=16, num_heads=2, num_layers=1, ff_dim=16) if critic else False,
        **{"num_samples": 6, **kwargs},
    )


@pytest.fixture
def tiny_config():
    return tiny_policy_config


@pytest.fixture
def tiny_policy() -> Policy:
    policy = Policy(tiny_policy_config())
    perturb_flow_heads(policy.flow)
    return policy


def lowdim_batch(batch: int = 4, rng: np.random.Generator | None = None):
    rng = rng or np.random.default_rng(0)
    obs = {
        "hand": rng.normal(size=(batch, 2, 3)).astype(np.float32),
        "cube": rng.normal(size=(batch, 2, 2)).astype(np.float32),
    }
    prefix = rng.normal(size=(batch, 1, 2)).astype(np.float32)
    return obs, prefix


@pytest.fixture
def batch():
    return lowdim_batch
