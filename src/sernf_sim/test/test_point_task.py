"""PointTask: geometry, reward/termination/truncation, collisions, clipping, vectorization."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sernf_data.spec import check_observations
from sernf_sim.point_expert import ExpertConfig, PointExpert
from sernf_sim.point_task import (
    STATE_DIM,
    PointEpisodeConfig,
    PointTask,
    PointTaskConfig,
    clip_actions,
    route_taken,
)


def _run_closed_loop(env, policy):
    """From the test configs, step ``env`` with ``policy(obs) -> [n, 2]`` until every env is
    done; returns per-env success, collision and trajectories."""
    obs = env.reset(configs=env.test_configs()[: env.num_envs])
    n = env.num_envs
    done = np.zeros(n, bool)
    success = np.zeros(n, bool)
    collided = np.zeros(n, bool)
    trajectories = [[obs["state"][i].copy()] for i in range(n)]
    for _ in range(env.time_limit + 1):
        obs, _, term, trunc, info = env.step(policy(obs))
        for i in np.flatnonzero(~done):
            trajectories[i].append(obs["state"][i].copy())
        collided |= info["collision"] & ~done
        success |= info["success"]
        done |= term | trunc
        if done.all():
            break
    assert done.all()
    return success, collided, [np.array(t) for t in trajectories]


def test_straight_line_policy_collides():
    # Heading straight for the goal must always run into the obstacle: that is what makes the
    # task two-moded. Check the fixed test configs and many random starts.
    def straight(obs):
        s = obs["state"].astype(np.float64)
        return s[:, 2:4] - s[:, :2]

    env = PointTask(num_envs=10)
    success, collided, _ = _run_closed_loop(env, straight)
    assert not success.any()
    assert collided.all()

    env = PointTask(num_envs=200, seed=3)
    obs = env.reset()
    for _ in range(env.time_limit):
        obs, _, term, trunc, info = env.step(straight(obs))
        if (term | trunc).all():
            break
    assert not info["success"].any()
    assert term.all()  # every one of them ended by a collision, not by the time limit


@pytest.mark.parametrize("upper", [True, False])
def test_both_routes_succeed(upper):
    env = PointTask(num_envs=10)
    expert = PointExpert(env.config, ExpertConfig(upper_route_prob=1.0 if upper else 0.0))
    obs = env.reset(configs=env.test_configs())
    expert.reset(obs)
    success = np.zeros(10, bool)
    traj = [obs["state"]]
    for _ in range(env.time_limit):
        obs, _, term, trunc, info = env.step(expert.act(obs))
        traj.append(obs["state"])
        success |= info["success"]
        if (term | trunc).all():
            break
    assert success.all()
    traj = np.stack(traj)  # [L, n, 6]
    assert all(route_taken(traj[:, i], env.config) == (1 if upper else -1) for i in range(10))


def test_reward_fires_exactly_once_on_goal_and_terminates():
    env = PointTask(num_envs=1)
    env.reset(configs=[PointEpisodeConfig(start=(0.6, 0.0), goal=(0.8, 0.0))])
    rewards, terms = [], []
    for _ in range(3):  # 0.65 (0.15 away), 0.70 (0.10), 0.75 (0.05 <= goal_radius 0.07)
        _, r, term, trunc, info = env.step(np.array([[1.0, 0.0]]))
        rewards.append(float(r[0]))
        terms.append(bool(term[0]))
        assert not trunc[0]
    assert rewards == [0.0, 0.0, 1.0]
    assert terms == [False, False, True]
    assert info["success"][0] and info["subtask_success"]["reach"][0]
    # After the end the env is frozen: no more reward, flags stay, it does not move.
    obs_before = env._obs()["state"].copy()
    obs, r, term, trunc, info = env.step(np.array([[1.0, 0.0]]))
    assert r[0] == 0 and term[0] and not trunc[0]
    np.testing.assert_array_equal(obs["state"][:, :2], obs_before[:, :2])
    np.testing.assert_array_equal(info["executed_action"], [[0.0, 0.0]])


def test_time_limit_truncates():
    env = PointTask(num_envs=3, config=PointTaskConfig(time_limit=12))
    env.reset()
    for k in range(1, 13):
        _, r, term, trunc, _ = env.step(np.zeros((3, 2)))
        assert not term.any() and r.sum() == 0
        assert trunc.all() == (k == 12)
        assert not trunc.any() or k == 12


def test_collision_terminates_as_failure_at_the_surface():
    env = PointTask(num_envs=1)
    env.reset(configs=[PointEpisodeConfig(start=(-0.8, 0.0), goal=(0.8, 0.0))])
    steps = 0
    while steps < 20:
        obs, r, term, trunc, info = env.step(np.array([[0.05, 0.0]]))
        steps += 1
        if term[0]:
            break
    # From x=-0.8 at 0.05 per step the surface x=-0.4 is reached on step 8.
    assert steps == 8
    assert info["collision"][0] and not info["success"][0] and r[0] == 0 and not trunc[0]
    pos = obs["state"][0, :2].astype(np.float64)
    assert np.linalg.norm(pos) == pytest.approx(0.4, abs=1e-6)
    assert np.linalg.norm(pos) >= 0.4 - 1e-7  # never inside


def test_collision_block_mode_stops_at_surface_and_continues():
    env = PointTask(num_envs=1, config=PointTaskConfig(collision="block"))
    env.reset(configs=[PointEpisodeConfig(start=(-0.8, 0.0), goal=(0.8, 0.0))])
    hits = 0
    for _ in range(15):
        obs, _, term, trunc, info = env.step(np.array([[0.05, 0.0]]))
        hits += int(info["collision"][0])
        assert not term[0]
        assert np.linalg.norm(obs["state"][0, :2].astype(np.float64)) >= 0.4 - 1e-6
    assert hits == 15 - 7  # pushes into the obstacle from step 8 on, never passes it
    # It can still slide away along the surface.
    obs, _, _, _, info = env.step(np.array([[0.0, 0.05]]))
    assert not info["collision"][0]
    assert obs["state"][0, 1] > 0.04


def test_no_tunnelling_through_the_obstacle_with_long_steps():
    cfg = PointTaskConfig(max_step=0.35, obstacle_radius=0.15)
    env = PointTask(num_envs=1, config=cfg)
    env.reset(configs=[PointEpisodeConfig(start=(-0.52, 0.0), goal=(0.8, 0.0))])
    _, _, term, _, info = env.step(np.array([[0.35, 0.0]]))  # -0.52 → -0.17: still clear
    assert not term[0]
    # -0.17 → 0.18 would end outside the disk on the far side: the path crosses it.
    obs, _, term, _, info = env.step(np.array([[0.35, 0.0]]))
    assert term[0] and info["collision"][0]
    assert obs["state"][0, 0] == pytest.approx(-0.15, abs=1e-6)


def test_actions_are_clipped_to_max_step_and_reported():
    env = PointTask(num_envs=4)
    obs0 = env.reset(configs=env.test_configs()[:4])
    raw = np.array([[1.0, 0.0], [0.03, 0.04], [0.3, -0.4], [0.0, 0.0]])
    obs, _, _, _, info = env.step(raw)
    expected = np.array([[0.05, 0.0], [0.03, 0.04], [0.03, -0.04], [0.0, 0.0]])
    np.testing.assert_allclose(info["executed_action"], expected, atol=1e-7)
    assert info["executed_action"].dtype == np.float32
    moved = obs["state"][:, :2].astype(np.float64) - obs0["state"][:, :2]
    np.testing.assert_allclose(moved, expected, atol=1e-6)
    np.testing.assert_allclose(obs["state"][:, 4:6], expected, atol=1e-6)  # last displacement
    np.testing.assert_allclose(np.linalg.norm(clip_actions(raw * 10, 0.05), axis=-1)[:3], 0.05)


def test_bad_actions_are_rejected():
    env = PointTask(num_envs=2)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros((2, 2)))
    env.reset()
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([[np.nan, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[2, 2\]"):
        env.step(np.zeros((3, 2)))


def test_arena_walls_block_motion():
    env = PointTask(num_envs=1)
    env.reset(configs=[PointEpisodeConfig(start=(-0.8, 0.0), goal=(0.8, 0.0))])
    for _ in range(10):
        obs, *_ = env.step(np.array([[-0.05, 0.0]]))
    assert obs["state"][0, 0] == pytest.approx(-1.0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 70))
def test_vectorized_step_equals_per_env_stepping(seed, steps):
    n = 4
    rng = np.random.default_rng(seed)
    vec = PointTask(num_envs=n, seed=seed)
    configs = vec.sample_configs(n)
    singles = [PointTask(num_envs=1) for _ in range(n)]
    obs = vec.reset(configs=configs)
    single_obs = [s.reset(configs=[c]) for s, c in zip(singles, configs, strict=True)]
    for i in range(n):
        np.testing.assert_array_equal(obs["state"][i], single_obs[i]["state"][0])
    for _ in range(steps):
        # Mostly rightward with large noise: a mix of collisions, wall contacts and goals.
        actions = rng.normal([0.04, 0.0], 0.06, size=(n, 2))
        out = vec.step(actions)
        for i, s in enumerate(singles):
            o, r, te, tr, info = s.step(actions[i : i + 1])
            np.testing.assert_array_equal(out[0]["state"][i], o["state"][0])
            assert out[1][i] == r[0] and out[2][i] == te[0] and out[3][i] == tr[0]
            for key in ("success", "collision", "executed_action", "steps"):
                np.testing.assert_array_equal(out[4][key][i], info[key][0])


def test_reset_seeding_configs_and_spec():
    env = PointTask(num_envs=5)
    a = env.reset(seed=7)["state"]
    b = env.reset(seed=7)["state"]
    c = env.reset(seed=8)["state"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    check_observations(env.observation_spec, env.reset(), leading=1)
    assert env.observation_spec["state"].shape == (STATE_DIM,)
    np.testing.assert_array_equal(env.hold_action(None), np.zeros((5, 2), np.float32))
    # Fixed and random entries can be mixed; dict configs are accepted.
    fixed = PointEpisodeConfig(start=(-0.8, 0.1), goal=(0.8, -0.1))
    obs = env.reset(configs=[fixed, None, fixed.to_dict(), None, None])
    np.testing.assert_allclose(obs["state"][0, :4], [-0.8, 0.1, 0.8, -0.1], atol=1e-7)
    np.testing.assert_allclose(obs["state"][2, :4], [-0.8, 0.1, 0.8, -0.1], atol=1e-7)
    np.testing.assert_array_equal(obs["state"][:, 4:], 0)
    with pytest.raises(ValueError, match="expected 5 configs"):
        env.reset(configs=[fixed])
    with pytest.raises(ValueError, match="overlaps the obstacle"):
        env.reset(configs=[PointEpisodeConfig(start=(0.1, 0.0), goal=(0.8, 0.0))] * 5)


def test_test_configs_are_fixed_valid_and_spread():
    env = PointTask(num_envs=10, seed=1)
    cfgs = env.test_configs()
    assert len(cfgs) == 10 and cfgs == PointTask(num_envs=3, seed=99).test_configs()
    starts = np.array([c.start for c in cfgs])
    assert len({tuple(s) for s in starts}) == 10
    assert starts[:, 1].min() < -0.2 and starts[:, 1].max() > 0.2
    env.reset(configs=cfgs)  # all valid


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_step=0.0), "max_step"),
        (dict(time_limit=0), "time_limit"),
        (dict(obstacle_radius=0.95), "gap"),
        (dict(start_low=(-0.85, -0.3), start_high=(-0.9, 0.3)), "start_low"),
        (dict(goal_low=(0.3, -0.1), goal_high=(0.5, 0.1)), "overlaps"),
        (dict(collision="bounce"), "collision"),
        (dict(control_hz=0), "control_hz"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PointTaskConfig(**kwargs)


def test_render_shapes():
    env = PointTask(num_envs=2)
    env.reset()
    frames = env.render(size=32)
    assert frames.shape == (2, 32, 32, 3) and frames.dtype == np.uint8
    assert (frames == [90, 90, 90]).all(-1).any()  # the obstacle is drawn


def test_time_in_observation_counts_down_and_reaches_the_recorded_demos():
    from sernf_sim.datasets import mixed_point_dataset

    config = PointTaskConfig(time_limit=10, time_in_observation=True)
    env = PointTask(num_envs=2, config=config)
    assert set(env.observation_spec) == {"state", "time_left"}
    obs = env.reset(seed=0)
    check_observations(env.observation_spec, obs, leading=1)
    seen = [obs["time_left"][:, 0].copy()]
    for _ in range(12):  # past the limit: frozen at 0, never negative
        obs, *_ = env.step(np.zeros((2, 2)))
        seen.append(obs["time_left"][:, 0].copy())
    assert np.allclose(np.array(seen)[:, 0], [max(0.0, 1 - k / 10) for k in range(13)], atol=1e-6)
    assert "time_left" not in PointTask(num_envs=1).reset(seed=0)  # off by default
    with pytest.raises(ValueError, match="time_in_observation"):
        PointTaskConfig(time_in_observation="yes")
    episodes = mixed_point_dataset(n=2, seed=0, task_config=config, num_envs=2)
    steps, _ = episodes[0]
    assert steps["time_left"].shape[1:] == (1,) and steps["time_left"][0, 0] == pytest.approx(1.0)
    assert np.all(np.diff(steps["time_left"][:, 0]) < 0)
