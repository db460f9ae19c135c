"""Transition windows (chunk timing, docs/design.md §6 / Fig. 7), samplers, mixing and resume."""

from __future__ import annotations

import json
import uuid

import fsspec
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sernf_data.spec import ObsKeySpec
from sernf_data.store import EpisodeStore, StoreSpec
from sernf_learner.transitions import (
    ChunkTiming,
    EmptyReplayError,
    MixedSampler,
    TransitionSampler,
    batch_to_torch,
)

SPEC = StoreSpec(
    obs={"cam": ObsKeySpec((2, 2, 3), "rgb"), "q": ObsKeySpec((1,), "lowdim")},
    action_dim=2,
    control_rate_hz=20.0,
)


def indexed_episode(length: int, rewards=None, marker: float = 0.0) -> dict[str, np.ndarray]:
    """Everything encodes the step index i: q = marker + i, cam = i, action = (i, -i)."""
    i = np.arange(length)
    return {
        "cam": (i[:, None, None, None] % 256 + np.zeros((1, 2, 2, 3))).astype(np.uint8),
        "q": (marker + i[:, None]).astype(np.float32),
        "action": np.stack([i, -i], axis=1).astype(np.float32),
        "reward": (i + 1.0 if rewards is None else np.asarray(rewards, dtype=np.float64)).astype(np.float32),
        "timestamp": i / 20.0,
    }


@pytest.fixture
def mem_uri():
    made = []

    def new() -> str:
        uri = f"memory://transitions-{uuid.uuid4().hex}"
        made.append(uri)
        return uri

    yield new
    for uri in made:
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def store_with(uri: str, episodes: list[tuple[dict, dict]]) -> EpisodeStore:
    store = EpisodeStore(uri, mode="a", spec=SPEC)
    for steps, meta in episodes:
        store.append_episode(steps, {"source": "demo", "success": True, **meta})
    return store


def np_batch(batch: dict) -> dict:
    return {k: ({kk: vv.numpy() for kk, vv in v.items()} if isinstance(v, dict) else v.numpy()) for k, v in batch.items()}


# ------------------------------------------------------------------------- timing config


def test_chunk_timing_validation():
    assert ChunkTiming(T=4, P=2, H=6).discount == pytest.approx(0.997**6)
    for bad in (dict(T=0, P=1, H=2), dict(T=1, P=-1, H=2), dict(T=1, P=3, H=2), dict(T=1, P=2, H=2), dict(T=1, P=1, H=0),
                dict(T=1, P=1, H=2, gamma=0.0), dict(T=1, P=1, H=2, gamma=1.5), dict(T=True, P=1, H=2)):
        with pytest.raises(ValueError, match="ChunkTiming"):
            ChunkTiming(**bad)


# ---------------------------------------------------------------------- boundary windows


@pytest.mark.parametrize("terminated", [True, False])
def test_boundary_windows_by_hand(mem_uri, terminated):
    L, gamma = 12, 0.9
    timing = ChunkTiming(T=3, P=2, H=4, gamma=gamma)
    store = store_with(mem_uri(), [(indexed_episode(L), {"terminated": terminated})])
    sampler = TransitionSampler(store, timing, batch_size=4, seed=0)
    np.testing.assert_array_equal(sampler.decision_steps(0), np.arange(L - 2))  # t = 0 .. L-1-P
    ts = np.array([0, 5, 7, 8, 9])
    b = np_batch(batch_to_torch(sampler.build_batch(np.zeros(5, np.int64), ts)))

    def acts(idx):
        return np.stack([np.array(idx), -np.array(idx)], axis=-1).astype(np.float32)

    # t = 0: history padded with o_0, everything else inside the episode
    np.testing.assert_array_equal(b["obs"]["q"][0, :, 0], [0, 0, 0])
    np.testing.assert_array_equal(b["obs"]["cam"][0, :, 0, 0, 0], [0, 0, 0])
    np.testing.assert_array_equal(b["prefix"][0], acts([0, 1]))
    np.testing.assert_array_equal(b["chunk"][0], acts([2, 3, 4, 5]))
    np.testing.assert_array_equal(b["chunk_mask"][0], [1, 1, 1, 1])
    np.testing.assert_array_equal(b["next_obs"]["q"][0, :, 0], [2, 3, 4])
    np.testing.assert_array_equal(b["next_prefix"][0], acts([4, 5]))  # = last P actions of the chunk
    assert b["reward"][0] == pytest.approx(1 + 2 * gamma + 3 * gamma**2 + 4 * gamma**3)
    # t = 5: middle
    np.testing.assert_array_equal(b["obs"]["q"][1, :, 0], [3, 4, 5])
    np.testing.assert_array_equal(b["chunk"][1], acts([7, 8, 9, 10]))
    np.testing.assert_array_equal(b["next_obs"]["q"][1, :, 0], [7, 8, 9])
    np.testing.assert_array_equal(b["next_prefix"][1], acts([9, 10]))
    assert b["reward"][1] == pytest.approx(6 + 7 * gamma + 8 * gamma**2 + 9 * gamma**3)
    # t = 9 = L-1-P: last valid step; one real chunk action, padding with a_{L-1}
    np.testing.assert_array_equal(b["prefix"][4], acts([9, 10]))
    np.testing.assert_array_equal(b["chunk"][4], acts([11, 11, 11, 11]))
    np.testing.assert_array_equal(b["chunk_mask"][4], [1, 0, 0, 0])
    np.testing.assert_array_equal(b["next_obs"]["q"][4, :, 0], [9, 10, 11])  # at min(t+H, L-1) = 11
    np.testing.assert_array_equal(b["next_prefix"][4], acts([11, 11]))
    assert b["reward"][4] == pytest.approx(10 + 11 * gamma + 12 * gamma**2)  # only r_9..r_11 exist
    # done: last step 11 inside t..t+H-1 only from t = 8 on, and only if terminated
    np.testing.assert_array_equal(b["done"], [0, 0, 0, float(terminated), float(terminated)])
    np.testing.assert_allclose(b["discount"], gamma**4)
    with pytest.raises(IndexError, match="valid decision steps"):
        sampler.build_batch(np.array([0]), np.array([10]))


@pytest.mark.parametrize("terminated", [True, False])
def test_td_numbers_three_step_episode(mem_uri, terminated):
    """Rewards [0, 0, 1], H=2, P=1, T=1: the numbers a TD target is built from."""
    gamma = 0.99
    store = store_with(mem_uri(), [(indexed_episode(3, rewards=[0, 0, 1]), {"terminated": terminated})])
    sampler = TransitionSampler(store, ChunkTiming(T=1, P=1, H=2, gamma=gamma), batch_size=2, seed=0)
    (t, batch), = list(sampler.iter_episode(0))
    np.testing.assert_array_equal(t, [0, 1])
    np.testing.assert_allclose(batch["reward"].numpy(), [0.0, gamma], rtol=1e-6)
    np.testing.assert_array_equal(batch["done"].numpy(), [0.0, 1.0 if terminated else 0.0])
    np.testing.assert_allclose(batch["discount"].numpy(), [gamma**2, gamma**2], rtol=1e-6)
    np.testing.assert_array_equal(batch["chunk_mask"].numpy(), [[1, 1], [1, 0]])
    np.testing.assert_array_equal(batch["chunk"].numpy()[:, :, 0], [[1, 2], [2, 2]])
    np.testing.assert_array_equal(batch["next_obs"]["q"].numpy()[:, 0, 0], [2, 2])
    np.testing.assert_array_equal(batch["next_prefix"].numpy()[:, 0, 0], [2, 2])


def reference_transition(ep: dict, terminated: bool, t: int, tm: ChunkTiming) -> dict:
    """Per-sample loops straight from docs/architecture.md, to check the vectorized gather."""
    L = len(ep["action"])
    hist = [min(max(t - tm.T + 1 + k, 0), L - 1) for k in range(tm.T)]
    tn = min(t + tm.H, L - 1)
    nhist = [max(tn - tm.T + 1 + k, 0) for k in range(tm.T)]
    reward = sum(tm.gamma**i * float(ep["reward"][t + i]) for i in range(tm.H) if t + i < L)
    return {
        "q": ep["q"][hist], "next_q": ep["q"][nhist], "cam": ep["cam"][hist],
        "prefix": ep["action"][[t + j for j in range(tm.P)]],
        "chunk": ep["action"][[min(t + tm.P + j, L - 1) for j in range(tm.H)]],
        "chunk_mask": [float(t + tm.P + j < L) for j in range(tm.H)],
        "next_prefix": ep["action"][[min(t + tm.H + j, L - 1) for j in range(tm.P)]],
        "reward": reward,
        "done": float(terminated and t + tm.H - 1 >= L - 1),
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 15), min_size=1, max_size=4),
    T=st.integers(1, 4), P=st.integers(0, 3), extra=st.integers(0, 5), seed=st.integers(0, 1000),
)
def test_vectorized_batch_matches_reference(mem_uri, lengths, T, P, extra, seed):
    timing = ChunkTiming(T=T, P=P, H=P + 1 + extra, gamma=0.95)
    rng = np.random.default_rng(seed)
    episodes = []
    for n in lengths:
        ep = indexed_episode(n, rewards=rng.normal(size=n), marker=float(rng.integers(100)))
        episodes.append((ep, {"terminated": bool(rng.integers(2))}))
    sampler = TransitionSampler(store_with(mem_uri(), episodes), timing, batch_size=8, seed=seed)
    assert sampler.num_transitions == sum(max(n - P, 0) for n in lengths)
    for e, (ep, meta) in enumerate(episodes):
        seen = []
        for t, batch in sampler.iter_episode(e, batch_size=3):
            b = np_batch(batch)
            for row, tt in enumerate(t):
                ref = reference_transition(ep, meta["terminated"], int(tt), timing)
                np.testing.assert_array_equal(b["obs"]["q"][row], ref["q"])
                np.testing.assert_array_equal(b["obs"]["cam"][row], ref["cam"])
                np.testing.assert_array_equal(b["next_obs"]["q"][row], ref["next_q"])
                np.testing.assert_array_equal(b["prefix"][row].reshape(P, 2), ref["prefix"].reshape(P, 2))
                np.testing.assert_array_equal(b["chunk"][row], ref["chunk"])
                np.testing.assert_array_equal(b["chunk_mask"][row], ref["chunk_mask"])
                np.testing.assert_array_equal(b["next_prefix"][row].reshape(P, 2), ref["next_prefix"].reshape(P, 2))
                assert b["reward"][row] == pytest.approx(ref["reward"], rel=1e-5, abs=1e-5)
                assert b["done"][row] == ref["done"]
            seen.extend(t.tolist())
        assert seen == list(range(max(len(ep["action"]) - P, 0)))


def test_batch_shapes_and_dtypes(mem_uri):
    timing = ChunkTiming(T=4, P=2, H=6)
    store = store_with(mem_uri(), [(indexed_episode(30), {"terminated": False})])
    b = TransitionSampler(store, timing, batch_size=5, seed=1).sample()
    assert b["obs"]["cam"].shape == (5, 4, 2, 2, 3) and b["obs"]["cam"].dtype == torch.uint8
    assert b["obs"]["q"].shape == (5, 4, 1) and b["obs"]["q"].dtype == torch.float32
    assert b["next_obs"]["cam"].shape == (5, 4, 2, 2, 3)
    assert b["prefix"].shape == (5, 2, 2) and b["chunk"].shape == (5, 6, 2) and b["next_prefix"].shape == (5, 2, 2)
    assert b["chunk_mask"].shape == (5, 6)
    for k in ("reward", "discount", "done"):
        assert b[k].shape == (5,) and b[k].dtype == torch.float32
    assert b["is_offline"].dtype == torch.bool and bool(b["is_offline"].all())


# ---------------------------------------------------------------------------- sampling


def test_uniform_over_valid_steps_and_filters(mem_uri):
    # lengths 10, 3, 2 (P=2: 8, 1, 0 valid steps); the third is unusable, the second failed
    episodes = [
        (indexed_episode(10, marker=100), {"terminated": True}),
        (indexed_episode(3, marker=200), {"terminated": True, "success": False, "source": "online"}),
        (indexed_episode(2, marker=300), {"terminated": True}),
    ]
    store = store_with(mem_uri(), episodes)
    timing = ChunkTiming(T=1, P=2, H=3)
    all_eps = TransitionSampler(store, timing, batch_size=9000, seed=3)
    q = all_eps.sample_numpy()["obs"]["q"][:, -1, 0]
    episode_of, t = (q // 100).astype(int), (q % 100).astype(int)
    assert set(episode_of) == {1, 2}
    assert t[episode_of == 1].max() == 7 and t[episode_of == 2].max() == 0
    frac_second = np.mean(episode_of == 2)
    assert abs(frac_second - 1 / 9) < 0.02  # proportional to valid steps
    counts = np.bincount(t[episode_of == 1], minlength=8)
    assert counts.min() > 0.8 * counts.mean()
    success = TransitionSampler(store, timing, batch_size=500, seed=3, success_only=True)
    assert set((success.sample_numpy()["obs"]["q"][:, 0, 0] // 100).astype(int)) == {1}
    online = TransitionSampler(store, timing, batch_size=50, seed=3, sources=["online"])
    assert set((online.sample_numpy()["obs"]["q"][:, 0, 0] // 100).astype(int)) == {2}


def test_empty_store_raises_and_refresh_picks_up_episodes(mem_uri):
    uri = mem_uri()
    writer = EpisodeStore(uri, mode="a", spec=SPEC)
    sampler = TransitionSampler(EpisodeStore(uri, mode="r"), ChunkTiming(T=1, P=1, H=2), batch_size=4, seed=0)
    assert sampler.num_transitions == 0
    with pytest.raises(EmptyReplayError, match="no valid decision steps"):
        sampler.sample()
    writer.append_episode(indexed_episode(5, marker=500), {"source": "online", "success": True, "terminated": False})
    assert sampler.num_transitions == 0  # not until refresh
    assert sampler.refresh() == 1
    assert sampler.num_transitions == 4
    assert (sampler.sample()["obs"]["q"] >= 500).all()


def test_state_dict_round_trip_reproduces_batches(mem_uri):
    uri = mem_uri()
    writer = store_with(uri, [(indexed_episode(n, marker=100 * i), {"terminated": i % 2 == 0}) for i, n in enumerate((9, 14, 6))])
    timing = ChunkTiming(T=2, P=1, H=3)
    a = TransitionSampler(EpisodeStore(uri, mode="r"), timing, batch_size=16, seed=7)
    a.sample()
    state = json.loads(json.dumps(a.state_dict()))  # checkpointable as plain JSON
    expected = [np_batch(a.sample()) for _ in range(3)]
    # The store grows after the checkpoint; a restored sampler still replays the saved view.
    writer.append_episode(indexed_episode(50, marker=900), {"source": "online", "success": True, "terminated": True})
    b = TransitionSampler(EpisodeStore(uri, mode="r"), timing, batch_size=16, seed=123)
    assert b.num_episodes == 4
    b.load_state_dict(state)
    assert b.num_episodes == 3
    for want in expected:
        got = np_batch(b.sample())
        np.testing.assert_array_equal(got["obs"]["q"], want["obs"]["q"])
        np.testing.assert_array_equal(got["chunk"], want["chunk"])
        np.testing.assert_array_equal(got["reward"], want["reward"])
    assert b.refresh() == 1 and b.num_episodes == 4
    with pytest.raises(ValueError, match="batch_size"):
        TransitionSampler(EpisodeStore(uri, mode="r"), timing, batch_size=8, seed=0).load_state_dict(state)
    other = store_with(mem_uri(), [(indexed_episode(n), {"terminated": True}) for n in (9, 14, 6)])
    with pytest.raises(ValueError, match="different store"):
        TransitionSampler(other, timing, batch_size=16, seed=0).load_state_dict(state)


# ------------------------------------------------------------------------------ mixing


def two_stores(mem_uri, online_lengths=(20, 25)):
    offline = store_with(mem_uri(), [(indexed_episode(n, marker=1000), {"terminated": True}) for n in (30, 40)])
    online = store_with(mem_uri(), [])
    for n in online_lengths:
        online.append_episode(indexed_episode(n, marker=5000), {"source": "online", "success": False, "terminated": False})
    return offline, online


@pytest.mark.parametrize(("rho", "batch_size"), [(0.5, 7), (0.3, 10), (0.75, 1)])
def test_mixing_ratio_and_flags(mem_uri, rho, batch_size):
    offline, online = two_stores(mem_uri)
    timing = ChunkTiming(T=1, P=1, H=4)
    mixed = MixedSampler(
        TransitionSampler(offline, timing, batch_size, seed=1),
        TransitionSampler(online, timing, batch_size, seed=2, is_offline=False),
        rho=rho, seed=3,
    )
    flags, origin_offline = [], []
    while sum(map(len, flags)) < 10_000:
        b = mixed.sample_numpy()
        assert len(b["is_offline"]) == batch_size
        n_off = int(b["is_offline"].sum())
        assert np.floor(rho * batch_size) <= n_off <= np.ceil(rho * batch_size)
        flags.append(b["is_offline"])
        origin_offline.append(b["obs"]["q"][:, 0, 0] < 5000)
    flags, origin_offline = np.concatenate(flags), np.concatenate(origin_offline)
    np.testing.assert_array_equal(flags, origin_offline)  # each sample marked by where it came from
    assert abs(flags.mean() - rho) < 0.05


def test_empty_online_store_gives_all_offline(mem_uri):
    offline, online = two_stores(mem_uri, online_lengths=())
    timing = ChunkTiming(T=1, P=1, H=4)
    online_sampler = TransitionSampler(online, timing, 32, seed=2, is_offline=False)
    mixed = MixedSampler(TransitionSampler(offline, timing, 32, seed=1), online_sampler, rho=0.5, seed=3)
    b = mixed.sample()
    assert b["is_offline"].all() and b["reward"].shape == (32,)
    online.append_episode(indexed_episode(20, marker=5000), {"source": "online", "success": True, "terminated": True})
    assert mixed.refresh() == 1
    assert 0 < mixed.sample()["is_offline"].sum() < 32


def test_mixed_state_dict_and_validation(mem_uri):
    offline, online = two_stores(mem_uri)
    timing = ChunkTiming(T=1, P=1, H=4)

    def make(seed):
        return MixedSampler(TransitionSampler(offline, timing, 16, seed=seed),
                            TransitionSampler(online, timing, 16, seed=seed + 1, is_offline=False), rho=0.5, seed=seed + 2)

    a = make(0)
    a.sample()
    state = json.loads(json.dumps(a.state_dict()))
    want = [np_batch(a.sample()) for _ in range(2)]
    b = make(40)
    b.load_state_dict(state)
    for w in want:
        got = np_batch(b.sample())
        np.testing.assert_array_equal(got["obs"]["q"], w["obs"]["q"])
        np.testing.assert_array_equal(got["is_offline"], w["is_offline"])
    with pytest.raises(ValueError, match="timings"):
        MixedSampler(TransitionSampler(offline, timing, 16, seed=0),
                     TransitionSampler(online, ChunkTiming(T=1, P=1, H=5), 16, seed=0))
    with pytest.raises(ValueError, match="rho"):
        MixedSampler(TransitionSampler(offline, timing, 16, seed=0), TransitionSampler(online, timing, 16, seed=0), rho=1.2)
