"""GymnasiumTask: gymnasium envs behind the vectorized task contract, with the chunk timing."""

import math

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from sernf_data.store import EpisodeStore
from sernf_sim.evaluation import rollout_chunked
from sernf_sim.gymnasium_task import (
    GymnasiumEnvConfig,
    GymnasiumEpisodeConfig,
    GymnasiumTask,
    record_demonstrations,
)

MAX_STEP = 0.1


class Reach2D(gymnasium.Env):
    """A point moves by at most MAX_STEP per axis and step towards a goal; ``is_success`` when
    within 0.1 of it (terminated), truncated after ``time_limit`` steps. Counts the actions it
    received, to show what was executed and that ended episodes are not stepped."""

    metadata = {"render_fps": 10}

    def __init__(self, time_limit=30, nan_at_step=None):
        self.observation_space = spaces.Box(-2.0, 2.0, (4,), np.float32)
        self.action_space = spaces.Box(-MAX_STEP, MAX_STEP, (2,), np.float32)
        self.time_limit = time_limit
        self.nan_at_step = nan_at_step
        self.received = []
        self.steps_after_end = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1.0, -0.5, 2)
        self.goal = self.np_random.uniform(0.5, 1.0, 2)
        if options and "goal" in options:
            self.goal = np.asarray(options["goal"], dtype=np.float64)
        self.t, self.ended, self.received = 0, False, []
        return self._obs(), {}

    def step(self, action):
        if self.ended:
            self.steps_after_end += 1
        self.received.append(np.array(action, copy=True))
        self.pos = np.clip(self.pos + np.asarray(action, dtype=np.float64), -2, 2)
        self.t += 1
        reached = bool(np.linalg.norm(self.pos - self.goal) < 0.1)
        truncated = self.t >= self.time_limit and not reached
        self.ended = reached or truncated
        obs = self._obs()
        if self.nan_at_step == self.t:
            obs[0] = np.nan
        return obs, float(reached), reached, truncated, {"is_success": reached, "dist": float(np.linalg.norm(self.pos - self.goal))}

    def _obs(self):
        return np.concatenate([self.pos, self.goal]).astype(np.float32)


class Counter(gymnasium.Env):
    """Observation = step index; the episode ends after ``options["length"]`` steps (terminated);
    actions live in [-5, 5]², so chunks can be seen being clipped."""

    metadata = {"render_fps": 5}

    def __init__(self):
        self.observation_space = spaces.Box(0, 1e6, (1,), np.float32)
        self.action_space = spaces.Box(-5.0, 5.0, (2,), np.float32)
        self.received = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.length = int((options or {}).get("length", 20))
        self.t, self.received = 0, []
        return np.array([0.0], np.float32), {}

    def step(self, action):
        assert self.t < self.length, "stepped after its episode ended"
        self.received.append(np.array(action, copy=True))
        self.t += 1
        done = self.t >= self.length
        return np.array([self.t], np.float32), float(self.t), done, False, {"is_success": self.length % 2 == 0}


class DictEnv(gymnasium.Env):
    metadata = {"render_fps": 20}

    def __init__(self, extra=None):
        entries = {"camera": spaces.Box(0, 255, (8, 8, 3), np.uint8), "joints": spaces.Box(-1, 1, (2, 3), np.float64)}
        entries.update(extra or {})
        self.observation_space = spaces.Dict(entries)
        self.action_space = spaces.Box(-1, 1, (2, 2), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        self.last_action = np.array(action, copy=True)
        return self.observation_space.sample(), 0.0, False, False, {"is_success": False}


def reach_task(num_envs=3, **kwargs):
    return GymnasiumTask(Reach2D, num_envs, **kwargs)


def greedy(obs):
    """Scripted Reach2D controller: full step towards the goal (policy_fn form)."""
    return np.clip(obs[2:] - obs[:2], -MAX_STEP, MAX_STEP)


# ------------------------------------------------------------------------------ the contract


def test_spec_rate_and_action_size_come_from_the_spaces():
    task = reach_task()
    assert {k: (v.kind, v.shape) for k, v in task.observation_spec.items()} == {"state": ("lowdim", (4,))}
    assert task.action_dim == 2 and task.control_hz == 10.0 and task.num_envs == 3

    dict_task = GymnasiumTask(DictEnv, 2)
    assert {k: (v.kind, v.shape) for k, v in dict_task.observation_spec.items()} == {
        "camera": ("rgb", (8, 8, 3)), "joints": ("lowdim", (6,))}
    assert dict_task.action_dim == 4 and dict_task.control_hz == 20.0
    obs = dict_task.reset(seed=0)
    assert obs["camera"].dtype == np.uint8 and obs["camera"].shape == (2, 8, 8, 3)
    assert obs["joints"].dtype == np.float32 and obs["joints"].shape == (2, 6)
    # Flattened commands go back to the env in its own shape; the native form round-trips.
    dict_task.step(np.arange(8, dtype=np.float32).reshape(2, 4) / 10)
    np.testing.assert_allclose(dict_task._envs[1].last_action, [[0.4, 0.5], [0.6, 0.7]], rtol=1e-6)
    native = dict_task.native_observation({k: v[0] for k, v in obs.items()})
    assert native["joints"].shape == (2, 3) and native["camera"].shape == (8, 8, 3)

    class ImageOnly(DictEnv):
        def __init__(self):
            super().__init__()
            self.observation_space = spaces.Box(0, 255, (8, 8, 3), np.uint8)

    assert list(GymnasiumTask(ImageOnly).observation_spec) == ["image"]
    assert GymnasiumTask(Reach2D, control_hz=50).control_hz == 50.0


def test_discrete_actions_and_other_unsupported_spaces_are_refused():
    with pytest.raises(ValueError, match="continuous Box"):
        GymnasiumTask.make("CartPole-v1", 2)

    class DiscreteObs(Reach2D):
        def __init__(self):
            super().__init__()
            self.observation_space = spaces.Discrete(5)

    with pytest.raises(ValueError, match="not supported"):
        GymnasiumTask(DiscreteObs)
    with pytest.raises(ValueError, match="only Box entries"):
        GymnasiumTask(lambda: DictEnv({"mode": spaces.Discrete(3)}))
    with pytest.raises(ValueError, match="cannot be a key"):
        GymnasiumTask(lambda: DictEnv({"action": spaces.Box(-1, 1, (1,))}))

    class NoRate(Reach2D):
        metadata = {}

    with pytest.raises(ValueError, match="pass control_hz"):
        GymnasiumTask(NoRate)
    with pytest.raises(ValueError, match="positive"):
        GymnasiumTask(Reach2D, control_hz=0)
    with pytest.raises(TypeError, match="not a gymnasium.Env"):
        GymnasiumTask(lambda: object())
    with pytest.raises(ValueError, match="num_envs"):
        GymnasiumTask(Reach2D, 0)
    with pytest.raises(ValueError, match="hold_action"):
        GymnasiumTask(Reach2D, hold_action=[0.0, math.nan])


def test_reset_seeds_every_env_reproducibly_and_reports_them():
    task = reach_task(num_envs=3)
    first = task.reset(seed=7)["state"]
    seeds = [c.seed for c in task.episode_configs]
    assert len(set(seeds)) == 3 and not np.allclose(first[0], first[1])
    np.testing.assert_array_equal(task.reset(seed=7)["state"], first)
    assert [c.seed for c in task.episode_configs] == seeds
    assert not np.allclose(task.reset(seed=8)["state"], first)
    # The seeds are the ones gymnasium got: a fresh env reset with them gives the same starts.
    for j, s in enumerate(seeds):
        np.testing.assert_array_equal(Reach2D().reset(seed=s)[0], first[j])
    # Fixed episodes: int seeds, configs (with reset options), or None (derived seed).
    obs = task.reset(seed=7, configs=[seeds[2], GymnasiumEpisodeConfig(seed=11, options={"goal": [0.9, 0.9]}), None])
    np.testing.assert_array_equal(obs["state"][0], first[2])
    np.testing.assert_allclose(obs["state"][1, 2:], [0.9, 0.9])
    np.testing.assert_array_equal(obs["state"][2], first[2])
    assert task.episode_configs[1].to_dict() == {"seed": 11, "options": {"goal": [0.9, 0.9]}}
    # Without a seed: the task's own seeded stream, different at every reset.
    a, b = reach_task(seed=1), reach_task(seed=1)
    np.testing.assert_array_equal(a.reset()["state"], b.reset()["state"])
    assert not np.allclose(a.reset()["state"], b.reset(seed=0)["state"])
    with pytest.raises(ValueError, match="expected 3 configs"):
        task.reset(configs=[1, 2])
    with pytest.raises(TypeError, match="unsupported type"):
        task.reset(configs=[1.5, None, None])


def test_step_clips_to_the_box_and_freezes_ended_envs():
    task = reach_task(num_envs=2)
    obs = task.reset(seed=3)["state"]
    goal0 = obs[0, 2:]
    # Env 0 is teleported next to its goal through its env; env 1 keeps running.
    task._envs[0].pos = goal0 - np.array([0.05, 0.0])
    _, reward, terminated, truncated, info = task.step(np.array([[0.05, 0.0], [3.0, -3.0]]))
    np.testing.assert_allclose(info["executed_action"], [[0.05, 0.0], [MAX_STEP, -MAX_STEP]], rtol=1e-6)
    np.testing.assert_allclose(task._envs[1].received[0], [MAX_STEP, -MAX_STEP], rtol=1e-6)
    assert terminated.tolist() == [True, False] and not truncated.any()
    assert reward.tolist() == [1.0, 0.0] and info["success"].tolist() == [True, False]
    frozen = task._obs["state"][0].copy()
    for _ in range(5):
        obs2, reward, terminated, truncated, info = task.step(np.full((2, 2), 0.05))
        np.testing.assert_array_equal(obs2["state"][0], frozen)
        assert reward[0] == 0 and terminated[0] and info["success"][0] and info["infos"][0] is None
    assert task._envs[0].steps_after_end == 0 and len(task._envs[0].received) == 1
    assert len(task._envs[1].received) == 6
    with pytest.raises(ValueError, match="NaN"):
        task.step(np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[2, 2\]"):
        task.step(np.zeros((2, 3)))
    np.testing.assert_allclose(task.executed_form(np.array([[[9.0, -0.05]]])), [[[MAX_STEP, -0.05]]], rtol=1e-6)


def test_step_before_reset_and_non_finite_observations_are_refused():
    task = reach_task(num_envs=2)
    with pytest.raises(RuntimeError, match="before reset"):
        task.step(np.zeros((2, 2)))
    task = GymnasiumTask(lambda: Reach2D(nan_at_step=2), 2)
    task.reset(seed=0)
    task.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="env 0 step returned a non-finite observation 'state'"):
        task.step(np.zeros((2, 2)))


def test_success_from_is_success_a_predicate_or_subtasks():
    def run(task, steps=40):
        task.reset(seed=0, configs=[GymnasiumEpisodeConfig(seed=0, options={"goal": [-0.75, -0.75]})] * task.num_envs)
        info = None
        for _ in range(steps):
            state = task._obs["state"]
            _, _, _, _, info = task.step(np.clip(state[:, 2:] - state[:, :2], -MAX_STEP, MAX_STEP))
        return info

    assert run(reach_task(1))["success"].tolist() == [True]
    near = {"near": lambda obs, r, term, trunc, info: info["dist"] < 0.3}
    info = run(reach_task(1, success_fn=lambda obs, r, term, trunc, info: False, subtask_fns=near))
    assert info["success"].tolist() == [False] and info["subtask_success"]["near"].tolist() == [True]

    class Leaving(Reach2D):
        """Success is reported while within reach, but the episode only ends at the time limit."""

        def step(self, action):
            obs, r, _term, trunc, info = super().step(action)
            return obs, r, False, self.t >= self.time_limit, info

    def wander(task):
        task.reset(seed=0, configs=[GymnasiumEpisodeConfig(seed=0, options={"goal": [-0.75, -0.75]})])
        for t in range(30):
            state = task._obs["state"]
            toward = np.clip(state[:, 2:] - state[:, :2], -MAX_STEP, MAX_STEP)
            _, _, _, truncated, info = task.step(toward if t < 20 else np.full((1, 2), MAX_STEP))
        assert truncated[0]
        return info["success"][0]

    assert wander(GymnasiumTask(Leaving)) and not wander(GymnasiumTask(Leaving, success_at="end"))

    class Silent(Reach2D):
        def step(self, action):
            obs, r, term, trunc, _ = super().step(action)
            return obs, r, term, trunc, {}

    task = GymnasiumTask(Silent)
    task.reset(seed=0)
    with pytest.raises(KeyError, match="success_fn"):
        task.step(np.zeros((1, 2)))


def test_hold_action_constant_or_from_the_observation():
    assert GymnasiumTask(Reach2D, 2).hold_action().tolist() == [[0, 0], [0, 0]]
    np.testing.assert_allclose(GymnasiumTask(Reach2D, 1, hold_action=[1.0, -0.05]).hold_action(), [[MAX_STEP, -0.05]])
    task = GymnasiumTask(Reach2D, 2, hold_action=lambda obs: obs["state"][2:] - obs["state"][:2])
    obs = task.reset(seed=1)
    np.testing.assert_allclose(task.hold_action(obs), np.clip(obs["state"][:, 2:] - obs["state"][:, :2], -0.1, 0.1))


# ------------------------------------------------------------------------- with the rollout


class Recording:
    """act_fn returning recognizable chunks, 3·(k+1) + 0.1·h, some outside the Box (±5)."""

    def __init__(self, H):
        self.H, self.calls = H, []

    def __call__(self, hist, prefix):
        n, k = prefix.shape[0], len(self.calls)
        chunk = np.zeros((n, self.H, 2), np.float32)
        chunk[:, :, 0] = 3 * (k + 1) + 0.1 * np.arange(self.H)
        chunk[:, :, 1] = -np.arange(n)[:, None]
        self.calls.append((hist["state"].copy(), prefix.copy(), chunk))
        return chunk


@pytest.mark.parametrize("T, P, H", [(1, 3, 10), (2, 2, 6), (1, 0, 3), (3, 4, 2)])
def test_chunk_timing_over_gymnasium_envs(T, P, H):
    lengths = [23, 7, 30]
    hold = np.array([-1.0, 0.5], np.float32)
    task = GymnasiumTask(Counter, 3, hold_action=hold)
    act = Recording(H)
    configs = [GymnasiumEpisodeConfig(seed=i, options={"length": n}) for i, n in enumerate(lengths)]
    result = rollout_chunked(task, act, T, P, H, num_episodes=3, configs=configs)

    assert len(act.calls) == -(-max(lengths) // H)  # decisions at t = 0, H, 2H, ...
    # What each env executed: hold×P, then the chunks back to back, clipped to the Box, cut at
    # the episode end; nothing after it (Counter asserts that it is never stepped again).
    planned = np.concatenate([np.repeat(hold[None, None], 3, axis=0).repeat(P, axis=1)]
                             + [c for _, _, c in act.calls], axis=1)
    clipped = np.clip(planned, -5, 5)
    for j, length in enumerate(lengths):
        np.testing.assert_allclose(np.array(task._envs[j].received), clipped[j, :length], rtol=1e-6)
        steps, meta = result.episodes[j]
        np.testing.assert_allclose(steps["action"], clipped[j, :length], rtol=1e-6)
        np.testing.assert_array_equal(steps["state"][:, 0], np.arange(length))
        np.testing.assert_allclose(steps["timestamp"], np.arange(length) / 5.0)
        assert meta["success"] == (length % 2 == 0) and meta["terminated"]
        assert meta["extra"]["config"] == {"seed": j, "options": {"length": length}}
    for k, (hist, prefix, _) in enumerate(act.calls):
        t = k * H
        live = np.array(lengths) > t
        for j in np.flatnonzero(live):
            np.testing.assert_array_equal(hist[j, :, 0], np.maximum(np.arange(t - T + 1, t + 1), 0))
            # The prefix is the queued actions in their executed (clipped) form.
            np.testing.assert_allclose(prefix[j], clipped[j, t:t + P], rtol=1e-6)


def test_pendulum_by_id_through_the_rollout():
    def upright(obs, reward, terminated, truncated, info):
        return obs[0] > 0.99  # cos θ: the pole is (nearly) up

    task = GymnasiumTask.make("Pendulum-v1", 3, env_kwargs={"max_episode_steps": 40}, success_fn=upright)
    assert task.control_hz == 30.0 and task.action_dim == 1 and task.observation_spec["state"].shape == (3,)
    rng = np.random.default_rng(0)

    def act(hist, prefix):
        return rng.normal(0.0, 3.0, (prefix.shape[0], 8, 1))

    result = rollout_chunked(task, act, 2, 2, 8, num_episodes=4, seed=5)
    assert result.num_episodes == 4 and result.mean_length == 40
    assert all(m["extra"]["truncated"] and not m["terminated"] for m in result.metadata)
    actions = np.concatenate([steps["action"] for steps, _ in result.episodes])
    assert np.abs(actions).max() == pytest.approx(2.0) and (np.abs(actions) > 1.9).mean() > 0.3
    # Same rollout seed, same episodes (the evaluation episodes are fixed).
    again = rollout_chunked(GymnasiumTask.make("Pendulum-v1", 3, env_kwargs={"max_episode_steps": 40},
                                               success_fn=upright),
                            lambda h, p: np.zeros((p.shape[0], 8, 1)), 2, 2, 8, num_episodes=4, seed=5)
    assert [m["extra"]["config"] for m in again.metadata] == [m["extra"]["config"] for m in result.metadata]
    np.testing.assert_array_equal(again.episodes[0][0]["state"][0], result.episodes[0][0]["state"][0])


def test_record_demonstrations_into_an_episode_store(tmp_path):
    task = reach_task(num_envs=4)
    rng = np.random.default_rng(0)

    def sloppy(obs):  # mixed quality: half the steps random, so some episodes time out
        return greedy(obs) if rng.random() > 0.5 else rng.uniform(-1.0, 1.0, 2)

    result = record_demonstrations(task, sloppy, tmp_path / "demos", num_episodes=10, seed=1)
    store = EpisodeStore(str(tmp_path / "demos"), mode="r")
    assert store.num_episodes == 10 and store.spec.action_dim == 2 and store.spec.control_rate_hz == 10.0
    assert 0 < result.success_rate < 1
    metas = [store.episode_metadata(i) for i in store.episode_ids()]
    assert [m["success"] for m in metas] == [m["success"] for m in result.metadata]
    assert all(m["source"] == "demo" for m in metas)
    snap = store.load_arrays()
    assert np.abs(snap.arrays["action"]).max() <= MAX_STEP + 1e-7
    with pytest.raises(ValueError, match="expected 2"):
        record_demonstrations(task, lambda obs: np.zeros(3), tmp_path / "demos", num_episodes=1)


def test_gymnasium_env_config_validates_and_makes_the_task():
    with pytest.raises(ValueError, match="registered gymnasium env"):
        GymnasiumEnvConfig(id="")
    with pytest.raises(ValueError, match="success_at"):
        GymnasiumEnvConfig(id="Pendulum-v1", success_at="sometimes")
    with pytest.raises(ValueError, match="control_hz"):
        GymnasiumEnvConfig(id="Pendulum-v1", control_hz=-1)
    task = GymnasiumEnvConfig(id="MountainCarContinuous-v0", kwargs={"max_episode_steps": 5},
                              control_hz=12.5).make_task(2, seed=0)
    assert task.control_hz == 12.5 and task.action_dim == 1
    task.reset(seed=0)
    with pytest.raises(KeyError, match="is_success"):  # MountainCar reports no success flag
        task.step(np.zeros((2, 1)))


USER_MODULE = '''
import gymnasium
import numpy as np
from gymnasium import spaces


class Still(gymnasium.Env):
    metadata = {"render_modes": [], "render_fps": 4}
    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {"is_success": True}


gymnasium.register(id="SernfUserStill-v0", entry_point=Still, max_episode_steps=6)
'''


def test_an_env_of_ones_own_module_by_gymnasiums_module_colon_id(tmp_path, monkeypatch):
    (tmp_path / "sernf_test_user_tasks.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        task = GymnasiumEnvConfig(id="sernf_test_user_tasks:SernfUserStill-v0").make_task(2, seed=0)
        result = rollout_chunked(task, lambda h, p: np.zeros((2, 4, 1)), 1, 1, 4, num_episodes=3, seed=0)
    finally:
        gymnasium.registry.pop("SernfUserStill-v0", None)
    assert task.control_hz == 4.0 and result.mean_length == 6 and result.success_rate == 1.0
