"""rollout_chunked: the chunk timing of docs/design.md §6 exactly, batching, recording format, errors."""

import json

import numpy as np
import pytest

from sernf_data.spec import ObsKeySpec
from sernf_sim.evaluation import ChunkTiming, make_gif, rollout_chunked
from sernf_sim.point_expert import ExpertConfig, PointExpert
from sernf_sim.point_task import PointEpisodeConfig, PointTask

HOLD = -1.0


class CounterEnv:
    """Minimal env following the contract: observation "t" is the step index, so a recorded
    history shows exactly which steps the policy saw. Env ``j`` ends after ``configs[j]`` steps
    (terminated, or truncated with ``truncate=True``); actions are clipped to ``±clip``."""

    action_dim = 2

    def __init__(self, num_envs, default_length=20, clip=1e6, truncate=False, control_hz=5.0):
        self.num_envs = num_envs
        self.default_length = default_length
        self.clip = clip
        self.truncate = truncate
        self.control_hz = control_hz
        self.resets = []  # (seed, configs) per reset
        self.received = []  # actions passed to step, per step since the last reset

    @property
    def observation_spec(self):
        return {"t": ObsKeySpec((1,), "lowdim"), "img": ObsKeySpec((4, 4, 3), "rgb")}

    def hold_action(self, obs):
        return np.full((self.num_envs, 2), HOLD, np.float32)

    def reset(self, seed=None, configs=None):
        self.resets.append((seed, None if configs is None else list(configs)))
        n = self.num_envs
        self.length = np.array(configs if configs is not None else [self.default_length] * n)
        self.t = np.zeros(n, np.int64)
        self.ended = np.zeros(n, bool)
        self.received = []
        return self._obs()

    def step(self, actions):
        self.received.append(np.array(actions, copy=True))
        active = ~self.ended
        self.t += active
        ended_now = active & (self.t >= self.length)
        self.ended |= ended_now
        reward = np.where(active, self.t.astype(np.float32), 0.0)
        success = self.length % 2 == 0
        info = {
            "executed_action": np.clip(actions, -self.clip, self.clip).astype(np.float32),
            "success": success,
            "subtask_success": {"even": success, "odd": ~success},
        }
        done = self.ended.copy()
        if self.truncate:
            return self._obs(), reward, np.zeros_like(done), done, info
        return self._obs(), reward, done, np.zeros_like(done), info

    def _obs(self):
        img = np.broadcast_to(
            (self.t % 256).astype(np.uint8)[:, None, None, None], (self.num_envs, 4, 4, 3)
        )
        return {"t": self.t[:, None].astype(np.float32), "img": img.copy()}


class RecordingActFn:
    """Returns recognizable chunks (value 1000*(k+1) + h for call k, step h) and records every
    call's inputs."""

    def __init__(self, H):
        self.H = H
        self.calls = []  # (obs_history, prefix, chunk)
        self.resets = 0

    def reset(self, obs):
        self.resets += 1

    def __call__(self, hist, prefix):
        n = prefix.shape[0]
        k = len(self.calls)
        chunk = np.zeros((n, self.H, 2), np.float32)
        chunk[:, :, 0] = 1000 * (k + 1) + np.arange(self.H)
        chunk[:, :, 1] = np.arange(n)[:, None]
        self.calls.append(({key: v.copy() for key, v in hist.items()}, prefix.copy(), chunk))
        return chunk


@pytest.mark.parametrize("T, P, H", [(1, 3, 10), (4, 2, 6), (2, 0, 3), (3, 4, 2), (1, 1, 1)])
def test_chunk_timing_follows_design(T, P, H):
    lengths = [23, 7, 30]
    env = CounterEnv(num_envs=3)
    act = RecordingActFn(H)
    result = rollout_chunked(env, act, T, P, H, num_episodes=3, configs=lengths)
    n = 3

    # Decisions at t = 0, H, 2H, ... until the longest episode ends.
    assert len(act.calls) == -(-max(lengths) // H)
    # The executed sequence: P hold actions, then the chunks back to back.
    seq = np.concatenate(
        [np.full((n, P, 2), HOLD, np.float32)] + [c for _, _, c in act.calls], axis=1
    )
    for k, (hist, prefix, _) in enumerate(act.calls):
        t = k * H
        live = np.array(lengths) > t  # envs still running at this decision
        assert hist["t"].shape == (n, T, 1) and hist["img"].shape == (n, T, 4, 4, 3)
        # History o_{t-T+1..t}, oldest first, padded by repeating o_0 at the start.
        expected_hist = np.maximum(np.arange(t - T + 1, t + 1), 0)
        for j in np.flatnonzero(live):
            np.testing.assert_array_equal(hist["t"][j, :, 0], expected_hist)
            np.testing.assert_array_equal(hist["img"][j, :, 0, 0, 0], expected_hist % 256)
        # Prefix: the P queued actions a_{t..t+P-1}: hold at the first decision, afterwards the
        # last P actions of the previous chunk (the queue's content when P > H).
        assert prefix.shape == (n, P, 2)
        np.testing.assert_array_equal(prefix, seq[:, t : t + P])
        if k == 0:
            np.testing.assert_array_equal(prefix, HOLD)
        elif P <= H:
            np.testing.assert_array_equal(prefix, act.calls[k - 1][2][:, H - P :])

    assert act.resets == 1
    for j, (steps, meta) in enumerate(result.episodes):
        L = lengths[j]
        assert (
            meta["extra"]["length"] == L and meta["terminated"] and not meta["extra"]["truncated"]
        )
        # Executed actions: prefix, then chunk, in order, cut at the episode end.
        np.testing.assert_array_equal(steps["action"], seq[j, :L])
        # o_t is the observation before a_t.
        np.testing.assert_array_equal(steps["t"][:, 0], np.arange(L))
        np.testing.assert_array_equal(steps["reward"], np.arange(1, L + 1))
        np.testing.assert_allclose(steps["timestamp"], np.arange(L) / 5.0)
        assert meta["extra"]["return"] == pytest.approx(L * (L + 1) / 2)
    # Finished envs only ever receive the hold action afterwards.
    received = np.stack(env.received)  # [t, n, A]
    for j, L in enumerate(lengths):
        np.testing.assert_array_equal(received[L:, j], HOLD)


def test_recorded_episode_format():
    env = CounterEnv(num_envs=2, default_length=9)
    result = rollout_chunked(env, RecordingActFn(4), 2, 1, 4, num_episodes=2, seed=3)
    steps, meta = result.episodes[0]
    assert set(steps) == {"t", "img", "action", "reward", "timestamp"}
    assert steps["t"].shape == (9, 1) and steps["t"].dtype == np.float32
    assert steps["img"].shape == (9, 4, 4, 3) and steps["img"].dtype == np.uint8
    assert steps["action"].shape == (9, 2) and steps["action"].dtype == np.float32
    assert steps["reward"].shape == (9,) and steps["reward"].dtype == np.float32
    assert steps["timestamp"].dtype == np.float64
    assert all(v.flags.c_contiguous for v in steps.values())
    json.dumps(meta)  # plain JSON
    # Top-level keys are exactly what EpisodeStore.append_episode accepts; the rest is "extra".
    assert set(meta) == {"success", "subtask_success", "terminated", "extra"}
    result = rollout_chunked(env, RecordingActFn(4), 2, 1, 4, num_episodes=2, source="online")
    assert result.metadata[0]["source"] == "online"
    steps, meta = result.episodes[0]
    assert meta["subtask_success"] == {"even": False, "odd": True}
    assert meta["success"] is False and meta["extra"]["config_index"] == -1
    assert meta["extra"]["episode_index"] == 0 and meta["extra"]["env_index"] == 0
    json.dumps(result.summary())
    assert result.subtask_success_rates == {"even": 0.0, "odd": 1.0}
    assert result.mean_length == 9 and result.num_episodes == 2


def test_batches_configs_seeds_and_reset_hook():
    env = CounterEnv(num_envs=2)
    act = RecordingActFn(3)
    configs = [5, 8, 3]
    result = rollout_chunked(env, act, 1, 2, 3, num_episodes=5, configs=configs, seed=11)
    assert [m["extra"]["config_index"] for m in result.metadata] == [0, 1, 2, 0, 1]
    assert [m["extra"]["episode_index"] for m in result.metadata] == list(range(5))
    assert [m["extra"]["length"] for m in result.metadata] == [5, 8, 3, 5, 8]
    assert result.success_rate == pytest.approx(2 / 5)
    # Per-episode outcomes in episode order, the same as each episode's metadata.
    assert result.episode_success == [int(m["success"]) for m in result.metadata]
    assert sum(result.episode_success) == 2 and len(result.episode_success) == 5
    assert act.resets == 3 and len(env.resets) == 3
    # The last batch has one episode; the spare env slot is padded with a valid config.
    assert env.resets[2][1] == [8, 8]
    seeds = [s for s, _ in env.resets]
    assert len(set(seeds)) == 3
    env2 = CounterEnv(num_envs=2)
    rollout_chunked(env2, RecordingActFn(3), 1, 2, 3, num_episodes=5, configs=configs, seed=11)
    assert [s for s, _ in env2.resets] == seeds  # deterministic in `seed`
    assert result.metadata[4]["extra"]["reset_seed"] == seeds[2]


def test_record_false_and_truncation_and_clipping():
    env = CounterEnv(num_envs=2, default_length=6, truncate=True, clip=5.0)
    result = rollout_chunked(env, RecordingActFn(4), 1, 2, 4, num_episodes=2, record=False)
    assert result.episodes == [] and len(result.metadata) == 2
    assert all(m["extra"]["truncated"] and not m["terminated"] for m in result.metadata)
    result = rollout_chunked(env, RecordingActFn(4), 1, 2, 4, num_episodes=2)
    # The chunk values (1000+) were clipped by the env; the clipped values are recorded.
    np.testing.assert_array_equal(result.episodes[0][0]["action"][2:, 0], 5.0)


def test_bad_act_fn_and_env_are_reported():
    env = CounterEnv(num_envs=2)
    with pytest.raises(ValueError, match="shape"):
        rollout_chunked(env, lambda h, p: np.zeros((2, 3, 2)), 1, 1, 4, num_episodes=2)
    with pytest.raises(ValueError, match="non-finite"):
        rollout_chunked(env, lambda h, p: np.full((2, 4, 2), np.nan), 1, 1, 4, num_episodes=2)
    with pytest.raises(RuntimeError, match="max_steps"):
        rollout_chunked(
            CounterEnv(2, default_length=10**6), RecordingActFn(4), 1, 1, 4, 2, max_steps=50
        )
    with pytest.raises(ValueError, match="T >= 1"):
        rollout_chunked(env, RecordingActFn(4), 0, 1, 4, num_episodes=2)

    class NoExecuted(CounterEnv):
        def step(self, actions):
            out = super().step(actions)
            del out[4]["executed_action"]
            return out

    with pytest.raises(KeyError, match="executed_action"):
        rollout_chunked(NoExecuted(2), RecordingActFn(4), 1, 1, 4, num_episodes=2)

    class NoHz(CounterEnv):
        def __init__(self, n):
            super().__init__(n)
            del self.control_hz

    with pytest.raises(AttributeError, match="control_hz"):
        rollout_chunked(NoHz(2), RecordingActFn(4), 1, 1, 4, num_episodes=2)
    # ... unless given explicitly.
    r = rollout_chunked(NoHz(2), RecordingActFn(4), 1, 1, 4, num_episodes=2, control_hz=2.0)
    np.testing.assert_allclose(r.episodes[0][0]["timestamp"][:3], [0.0, 0.5, 1.0])


def test_chunk_timing_validation():
    with pytest.raises(ValueError):
        ChunkTiming(T=1, P=-1, H=4)
    with pytest.raises(ValueError):
        ChunkTiming(T=1, P=1, H=0)
    with pytest.raises(ValueError):
        ChunkTiming(T=1.5, P=1, H=4)


def test_point_task_recording_replays_exactly():
    # Re-executing the recorded actions from the recorded start reproduces every recorded
    # observation: the record is o_t before a_t and a_t as executed.
    env = PointTask(num_envs=8, seed=2)
    expert = PointExpert(env.config, ExpertConfig.from_quality(0.5), seed=3)
    result = rollout_chunked(env, expert.chunk_act_fn(8), 2, 2, 8, num_episodes=8, seed=1)
    single = PointTask(num_envs=1)
    for steps, meta in result.episodes:
        obs = single.reset(configs=[PointEpisodeConfig.from_dict(meta["extra"]["config"])])
        total = 0.0
        for t in range(meta["extra"]["length"]):
            np.testing.assert_array_equal(obs["state"][0], steps["state"][t])
            obs, r, term, trunc, _ = single.step(steps["action"][t : t + 1])
            total += float(r[0])
        assert bool(term[0]) == meta["terminated"] and bool(trunc[0]) == meta["extra"]["truncated"]
        assert total == meta["extra"]["return"] == float(meta["success"])
        np.testing.assert_array_equal(steps["action"][:2], 0.0)  # P=2 hold actions first


def test_make_gif_roundtrip(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    env = PointTask(num_envs=1)
    env.reset()
    frames = []
    for _ in range(5):
        frames.append(env.render(size=24)[0])
        env.step(np.array([[0.05, 0.05]]))
    path = make_gif(np.stack(frames), tmp_path / "sub" / "ep.gif", fps=5)
    assert path.exists() and sorted(p.name for p in path.parent.iterdir()) == ["ep.gif"]
    back = imageio.mimread(path)
    assert len(back) == 5 and back[0].shape[:2] == (24, 24)
    with pytest.raises(ValueError, match="uint8"):
        make_gif(np.zeros((2, 4, 4, 3), np.float32), tmp_path / "x.gif")
    with pytest.raises(ValueError, match=r"\[L, h, w, 3\]"):
        make_gif(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.gif")


def test_prefixes_are_queued_in_executed_form_so_they_match_the_recorded_actions():
    """The prefix a decision sees is the executed (clipped) form of the queued actions, i.e. the
    actions the replay stores for those steps (the learner trains on recorded prefixes)."""
    env = PointTask(num_envs=2, seed=0)
    seen = []

    def act(hist, prefix):
        seen.append(prefix.copy())
        return np.full((2, 4, 2), 5.0 * env.config.max_step, dtype=np.float32)  # far over the limit

    result = rollout_chunked(env, act, 1, 2, 4, num_episodes=2, seed=0)
    steps, _ = result.episodes[0]
    assert len(seen) >= 2
    # Decision k >= 1 happens at step 4k and sees the actions queued for steps 4k .. 4k+1.
    for k in range(1, len(seen)):
        rows = slice(4 * k, 4 * k + 2)
        if steps["action"][rows].shape[0] < 2:
            break
        np.testing.assert_array_equal(seen[k][0], steps["action"][rows])
    assert np.linalg.norm(seen[1][0], axis=-1).max() <= env.config.max_step * (1 + 1e-5)


def test_summary_counts_episodes_the_policy_node_would_have_held():
    """Envs that report ``joints_past_range`` (the hand task) get the fraction of such episodes
    and the success rate counting them as failures; others (the point task) do not."""
    from sernf_sim.hand_pick_place.config import DomainShift
    from sernf_sim.hand_pick_place.env import HandPickPlace

    def hold(env):
        return lambda obs, prefix: np.repeat(env.hold_action()[:, None], 4, axis=1)

    calm = HandPickPlace(num_envs=2, max_steps=3)
    summary = rollout_chunked(calm, hold(calm), 1, 1, 4, num_episodes=2).summary()
    assert summary["joints_past_range_rate"] == 0.0
    assert summary["success_rate_if_held"] == summary["success_rate"]
    noisy = HandPickPlace(num_envs=2, max_steps=3, domain_shift=DomainShift(obs_noise_std=5.0))
    result = rollout_chunked(noisy, hold(noisy), 1, 1, 4, num_episodes=2)
    assert result.summary()["joints_past_range_rate"] == 1.0 and result.success_rate_if_held == 0.0
    assert all(m["extra"]["joints_past_range"] is True for m in result.metadata)
    json.dumps(result.summary())  # plain JSON for the eval reports
    point = PointTask(num_envs=2, seed=2)
    expert = PointExpert(point.config, ExpertConfig.from_quality(0.5), seed=3)
    plain = rollout_chunked(point, expert.chunk_act_fn(4), 1, 1, 4, num_episodes=2)
    assert "joints_past_range_rate" not in plain.summary() and plain.joints_past_range_rate is None
