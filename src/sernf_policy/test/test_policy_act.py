"""Policy: parameter groups, action selection (Alg. 2) and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sernf_policy.config_io import to_jsonable
from sernf_policy.policy import Policy, PolicyConfig


def test_actor_and_critic_parameters_are_disjoint_and_complete(tiny_policy, tiny_config):
    actor = {id(p) for p in tiny_policy.actor_parameters()}
    critic = {id(p) for p in tiny_policy.critic_parameters()}
    assert actor and critic and not (actor & critic)
    assert actor | critic == {id(p) for p in tiny_policy.parameters()}
    no_critic = Policy(tiny_config(critic=False))
    assert list(no_critic.critic_parameters()) == []


def test_learner_facing_shapes(tiny_policy, batch):
    obs, prefix = batch(3)
    policy = tiny_policy
    obs_t = {k: torch.as_tensor(v) for k, v in obs.items()}
    prefix_n = policy.action_normalizer.normalize(torch.as_tensor(prefix))
    ctx = policy.actor_context(obs_t, prefix_n)
    assert ctx.shape == (3, policy.actor_encoder.num_tokens + 1, 16)
    assert policy.critic_tokens(obs_t).shape == (3, policy.critic_encoder.num_tokens, 16)
    chunks, log_prob = policy.sample(obs_t, prefix_n, num_samples=4, sigma=0.7)
    assert chunks.shape == (3, 4, 3, 2) and log_prob.shape == (3, 4)
    assert policy.log_prob(obs_t, prefix_n, chunks[:, 0]).shape == (3,)
    assert policy.min_q(obs_t, prefix_n, chunks).shape == (3, 4)


def test_best_of_n_returns_the_argmax_candidate(tiny_policy, batch, monkeypatch):
    obs, prefix = batch(4)
    seen = {}

    def fake_min_q(obs_, prefix_norm, chunks_norm):
        seen["chunks"] = chunks_norm.clone()
        q = chunks_norm[..., 0].sum(-1)  # predictable: prefer large first action dims
        seen["q"] = q
        return q

    monkeypatch.setattr(tiny_policy, "min_q", fake_min_q)
    chunks, info = tiny_policy.act_batch(obs, prefix)
    best = seen["q"].argmax(dim=1)
    expected = tiny_policy.action_normalizer.unnormalize(seen["chunks"][torch.arange(4), best])
    assert np.array_equal(info["index"], best.numpy())
    assert np.allclose(chunks, expected.numpy(), atol=1e-6)
    assert np.allclose(info["q"], seen["q"].max(dim=1).values.numpy())
    assert seen["chunks"].shape == (4, 6, 3, 2)


def test_best_of_n_with_the_real_critic_matches_min_q(tiny_policy, batch):
    obs, prefix = batch(2)
    tiny_policy.fit_normalizers(np.random.default_rng(0).uniform(-3, 3, size=(100, 2)))
    gen = torch.Generator().manual_seed(5)
    chunks, info = tiny_policy.act_batch(obs, prefix, generator=gen)
    tiny_policy.eval()
    with torch.no_grad():
        prefix_n = tiny_policy.action_normalizer.normalize(torch.as_tensor(prefix))
        cands, _ = tiny_policy.sample(obs, prefix_n, 6, 0.7, generator=torch.Generator().manual_seed(5))
        q = tiny_policy.min_q(obs, prefix_n, cands)
    assert np.array_equal(info["index"], q.argmax(1).numpy())
    assert np.allclose(info["q"], q.max(1).values.numpy(), atol=1e-6)
    expected = tiny_policy.action_normalizer.unnormalize(cands[torch.arange(2), q.argmax(1)])
    assert np.allclose(chunks, expected.numpy(), atol=1e-5)


def test_most_likely_without_critic(batch, monkeypatch, tiny_config):
    policy = Policy(tiny_config(critic=False))
    obs, prefix = batch(3)
    seen = {}
    original = policy.flow.sample

    def recording_sample(*args, **kwargs):
        out = original(*args, **kwargs)
        seen["chunks"], seen["log_prob"] = out
        return out

    monkeypatch.setattr(policy.flow, "sample", recording_sample)
    chunks, info = policy.act_batch(obs, prefix)
    best = seen["log_prob"].argmax(1)
    assert info["q"] is None
    assert np.array_equal(info["index"], best.numpy())
    assert np.allclose(info["log_prob"], seen["log_prob"].max(1).values.numpy())
    assert np.allclose(chunks, seen["chunks"][torch.arange(3), best].numpy(), atol=1e-6)


def test_most_likely_and_single_selection_with_a_critic(batch, tiny_config):
    obs, prefix = batch(2)
    policy = Policy(tiny_config(selection="most_likely"))
    _, info = policy.act_batch(obs, prefix)
    assert info["q"] is None
    single = Policy(tiny_config(selection="single"))
    _, info = single.act_batch(obs, prefix)
    assert np.array_equal(info["index"], [0, 0])


def test_act_restores_training_mode_and_returns_raw_units(tiny_policy, batch):
    obs, prefix = batch(1)
    tiny_policy.fit_normalizers(np.random.default_rng(0).uniform(10, 20, size=(100, 2)))
    tiny_policy.train()
    chunk, info = tiny_policy.act({k: v[0] for k, v in obs.items()}, prefix[0])
    assert tiny_policy.training
    assert chunk.shape == (3, 2) and chunk.dtype == np.float32
    assert (chunk > 9).all() and (chunk < 21).all()  # raw units of the fitted range
    assert set(info) == {"log_prob", "q", "index", "fallback"}


def test_lowdim_observations_are_normalised(tiny_policy, batch):
    obs, prefix = batch(2)
    tiny_policy.fit_normalizers(np.zeros((4, 2)) + [[0.0, 1.0]], observations={"hand": obs["hand"] * 100})
    normed = tiny_policy.normalize_obs({**obs, "hand": obs["hand"] * 100, "stamp": "ignored"})
    assert normed["hand"].abs().max() < 1.0 and "stamp" not in normed
    with pytest.raises(ValueError, match="'nope'"):
        tiny_policy.fit_normalizers(np.zeros((2, 2)), observations={"nope": np.zeros((2, 1))})


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda o, p: o.pop("hand"), "'hand'"),
        (lambda o, p: o.__setitem__("hand", o["hand"][:, :1]), "'hand'"),
        (lambda o, p: o.__setitem__("cube", np.full_like(o["cube"], np.nan)), "'cube'"),
        (lambda o, p: o.__setitem__("cube", o["cube"][:1]), "'cube'"),
        (lambda o, p: o.__setitem__("hand", np.array([["a"]])), "'hand'"),
        (lambda o, p: p.__setitem__(..., np.inf), "prefix"),
    ],
)
def test_bad_batch_inputs_raise_value_error_naming_the_key(tiny_policy, batch, mutate, match):
    obs, prefix = batch(2)
    mutate(obs, prefix)
    with pytest.raises(ValueError, match=match):
        tiny_policy.act_batch(obs, prefix)


def test_bad_single_inputs_raise(tiny_policy, batch):
    obs, prefix = batch(1)
    single = {k: v[0] for k, v in obs.items()}
    with pytest.raises(ValueError, match="prefix"):
        tiny_policy.act(single, prefix)  # batched prefix given to act()
    with pytest.raises(ValueError, match="'hand'"):
        tiny_policy.act({**single, "hand": obs["hand"]}, prefix[0])
    with pytest.raises(ValueError, match="dict"):
        tiny_policy.act([1, 2], prefix[0])


def test_rgb_observations_must_be_uint8(batch, tiny_config):
    spec = {"cam": {"kind": "rgb", "shape": [32, 32, 3]}, "hand": {"kind": "lowdim", "shape": [3]}}
    policy = Policy(tiny_config(spec=spec, critic=False, num_samples=2))
    obs = {"cam": np.zeros((1, 2, 32, 32, 3), dtype=np.uint8), "hand": np.zeros((1, 2, 3))}
    chunks, _ = policy.act_batch(obs, np.zeros((1, 1, 2)))
    assert chunks.shape == (1, 3, 2)
    with pytest.raises(ValueError, match="'cam'.*uint8"):
        policy.act_batch({**obs, "cam": obs["cam"].astype(np.float32)}, np.zeros((1, 1, 2)))


def test_config_json_round_trip_and_validation(tiny_config):
    cfg = tiny_config()
    again = PolicyConfig.from_dict(to_jsonable(cfg))
    assert again == cfg
    data = to_jsonable(cfg)
    with pytest.raises(ValueError, match="unknown"):
        PolicyConfig.from_dict({**data, "surprise": 1})
    data["flow"]["horizon"] = 4
    with pytest.raises(ValueError, match="flow"):
        PolicyConfig.from_dict(data)
    with pytest.raises(ValueError, match="selection"):
        tiny_config(selection="random")


def _candidates(policy, obs, prefix, seed):
    """The N candidates, their log-probs and every critic's values, as act_batch draws them."""
    policy.eval()
    with torch.no_grad():
        prefix_n = policy.action_normalizer.normalize(torch.as_tensor(prefix))
        cands, log_prob = policy.sample(obs, prefix_n, policy.config.num_samples, 0.7,
                                        generator=torch.Generator().manual_seed(seed))
        qs = policy.q_values(obs, prefix_n, cands)
    return cands, log_prob, qs


def test_q_values_hold_every_critic_and_their_minimum_is_min_q(tiny_policy, batch):
    obs, prefix = batch(3)
    cands, _, qs = _candidates(tiny_policy, obs, prefix, 1)
    assert qs.shape == (2, 3, 6)
    with torch.no_grad():
        prefix_n = tiny_policy.action_normalizer.normalize(torch.as_tensor(prefix))
        torch.testing.assert_close(qs.min(0).values, tiny_policy.min_q(obs, prefix_n, cands))


def test_top_k_selection_only_lets_the_most_likely_candidates_compete(tiny_config, batch):
    policy = Policy(tiny_config(selection_top_k=2))
    obs, prefix = batch(4)
    _, log_prob, qs = _candidates(policy, obs, prefix, 3)
    _, info = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(3))
    top = log_prob.topk(2, dim=1).indices
    q = qs.min(0).values
    expected = top.gather(1, q.gather(1, top).argmax(1, keepdim=True)).squeeze(1)
    assert np.array_equal(info["index"], expected.numpy())
    # Without the restriction the same candidates are ranked by the critics alone.
    unrestricted = Policy(tiny_config())
    unrestricted.load_state_dict(policy.state_dict())
    _, free = unrestricted.act_batch(obs, prefix, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(free["index"], q.argmax(1).numpy())


def test_critics_that_disagree_fall_back_to_the_most_likely_candidate(tiny_config, batch):
    obs, prefix = batch(4)
    probe = Policy(tiny_config())
    _, log_prob, qs = _candidates(probe, obs, prefix, 7)
    q = qs.min(0).values
    best = q.argmax(1)
    spread = (qs.max(0).values - qs.min(0).values)[torch.arange(4), best]
    threshold = float(spread.median())  # some rows above, some not
    guarded = Policy(tiny_config(selection_max_disagreement=threshold))
    guarded.load_state_dict(probe.state_dict())
    _, info = guarded.act_batch(obs, prefix, generator=torch.Generator().manual_seed(7))
    fallback = (spread > threshold).numpy()
    assert fallback.any() and not fallback.all()
    assert np.array_equal(info["fallback"], fallback)
    expected = torch.where(torch.as_tensor(fallback), log_prob.argmax(1), best)
    assert np.array_equal(info["index"], expected.numpy())


@pytest.mark.parametrize("kwargs", [{"selection_top_k": -1}, {"selection_max_disagreement": float("nan")},
                                    {"selection_max_disagreement": -0.1}])
def test_selection_guards_are_validated(tiny_config, kwargs):
    with pytest.raises(ValueError, match="selection_"):
        tiny_config(**kwargs)
