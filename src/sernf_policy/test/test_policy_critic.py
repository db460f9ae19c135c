"""Chunk critic ensemble: shapes, min over critics, batched scoring == one by one."""

from __future__ import annotations

import pytest
import torch

from sernf_policy.critic import ChunkCritic, ChunkCriticConfig


def tiny_critic(**kw) -> ChunkCritic:
    cfg = ChunkCriticConfig(
        action_dim=3, horizon=4, prefix_len=2, obs_dim=12, d_model=16, num_heads=2, num_layers=2,
        ff_dim=16, num_bins=21, **kw,
    )
    return ChunkCritic(cfg)


def inputs(b=3, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(b, 7, 12, generator=gen)
    prefix = torch.rand(b, 2, 3, generator=gen) * 2 - 1
    chunks = torch.rand(b, n, 4, 3, generator=gen) * 2 - 1
    return obs, prefix, chunks


def test_shapes():
    critic = tiny_critic()
    obs, prefix, chunks = inputs()
    assert critic(obs, prefix, chunks[:, 0]).shape == (2, 3, 21)
    assert critic.score(obs, prefix, chunks).shape == (2, 3, 5, 21)
    assert critic.min_value(obs, prefix, chunks).shape == (3, 5)


def test_min_value_is_min_over_members():
    critic = tiny_critic(num_critics=3).eval()
    obs, prefix, chunks = inputs()
    with torch.no_grad():
        logits = critic.score(obs, prefix, chunks)
        per_member = critic.hl_gauss.to_value(logits)  # [M, B, N]
        manual = torch.minimum(torch.minimum(per_member[0], per_member[1]), per_member[2])
        got = critic.min_value(obs, prefix, chunks)
    assert torch.allclose(got, manual)
    assert not torch.allclose(per_member[0], per_member[1])  # members really differ


def test_members_are_independently_initialised():
    critic = tiny_critic()
    a, b = critic.members
    assert not torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.action_embed[0].weight, b.action_embed[0].weight)


def test_score_equals_one_by_one():
    critic = tiny_critic().eval()
    obs, prefix, chunks = inputs(b=2, n=4)
    with torch.no_grad():
        batched = critic.score(obs, prefix, chunks)
        for i in range(2):
            for j in range(4):
                single = critic(obs[i : i + 1], prefix[i : i + 1], chunks[i : i + 1, j])  # [M, 1, Z]
                assert torch.allclose(batched[:, i, j], single[:, 0], atol=1e-5)


def test_prefix_and_chunk_both_matter():
    critic = tiny_critic().eval()
    obs, prefix, chunks = inputs(b=1, n=1)
    with torch.no_grad():
        base = critic(obs, prefix, chunks[:, 0])
        assert not torch.allclose(base, critic(obs, prefix, -chunks[:, 0]))
        assert not torch.allclose(base, critic(obs, -prefix, chunks[:, 0]))


def test_no_prefix_and_projection_free_obs():
    cfg = ChunkCriticConfig(action_dim=2, horizon=3, prefix_len=0, obs_dim=16, d_model=16, num_heads=2, num_layers=1, ff_dim=8)
    critic = ChunkCritic(cfg)
    assert isinstance(critic.members[0].obs_proj, torch.nn.Identity)
    out = critic.min_value(torch.randn(2, 4, 16), torch.zeros(2, 0, 2), torch.zeros(2, 3, 3, 2))
    assert out.shape == (2, 3)


def test_bad_shapes_raise():
    critic = tiny_critic()
    obs, prefix, chunks = inputs()
    with pytest.raises(ValueError, match="prefix"):
        critic(obs, prefix[:, :1], chunks[:, 0])
    with pytest.raises(ValueError, match="chunk"):
        critic.score(obs, prefix, chunks[:, 0])
    with pytest.raises(ValueError, match="obs_tokens"):
        critic(obs[..., :5], prefix, chunks[:, 0])


@pytest.mark.parametrize("kwargs", [{"num_critics": 0}, {"d_model": 10, "num_heads": 4}, {"v_min": 1.0, "v_max": 0.0}, {"prefix_len": -1}])
def test_config_validation(kwargs):
    base = {"action_dim": 2, "horizon": 2, "prefix_len": 1, "obs_dim": 8}
    with pytest.raises(ValueError):
        ChunkCriticConfig(**{**base, **kwargs})
