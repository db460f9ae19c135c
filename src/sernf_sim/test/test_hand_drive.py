"""HandPickPlace's continuous-time API (drive / finish_control_step), which the simulated world
behind the drivers uses: the weld target and finger targets move the hand, physics time is
carried over between calls, and the task's rules are evaluated as in step()."""

from __future__ import annotations

import numpy as np
import pytest

from sernf_sim.hand_pick_place import env as hand_env
from sernf_sim.hand_pick_place import model as hand_model


@pytest.fixture()
def env():
    e = hand_env.make_env("nominal", num_envs=1, render_images=False)
    e.reset(seed=0)
    return e


def test_drive_moves_the_hand_toward_the_weld_target_and_the_fingers_toward_their_targets(env):
    start = env.ee_pose()[0]
    target = start.copy()
    target[0] += 0.03
    closed = np.array([s.range[1] for s in hand_model.FINGER_JOINTS]) * 0.5
    for _ in range(50):
        env.drive(0, target, closed, 0.01)
    pos = env.ee_pose()[0]
    assert abs(pos[0] - target[0]) < 0.005 and abs(pos[1] - start[1]) < 0.005
    q, dq, torque = env.finger_state(0)
    assert q.shape == dq.shape == torque.shape == (hand_env.NUM_HAND,)
    assert np.mean(np.abs(q - closed)) < 0.15


def test_drive_carries_physics_time_that_does_not_fill_a_step(env):
    dt = env.model.opt.timestep
    steps = [env.drive(0, env.ee_pose()[0], None, 0.4 * dt) for _ in range(10)]
    assert sum(steps) == 4  # 10 x 0.4 steps


def test_drive_refuses_bad_targets_and_changes_nothing(env):
    before = env.data(0).qpos.copy()
    with pytest.raises(ValueError, match="ee_target"):
        env.drive(0, [0.0, 0.0, np.nan, 1, 0, 0, 0], None, 0.1)
    with pytest.raises(ValueError, match="finger_targets"):
        env.drive(0, env.ee_pose()[0], np.zeros(3), 0.1)
    np.testing.assert_array_equal(env.data(0).qpos, before)


def test_finish_control_step_counts_steps_and_ends_at_the_time_limit(env):
    hold = env.ee_pose()[0]
    for k in range(env.config.max_steps):
        env.drive(0, hold, None, 1.0 / env.control_hz)
        reward, terminated, truncated, info = env.finish_control_step()
        assert reward[0] == 0.0
        assert info["steps"][0] == k + 1
    assert truncated[0] and not terminated[0]
    assert info["termination_reason"][0] == "time_limit"


def test_executed_form_is_what_step_reports_as_executed(env):
    """Rollouts queue chunks in executed form; it must equal what step() executes."""
    rng = np.random.default_rng(0)
    raw = np.zeros((1, hand_env.ACTION_DIM))
    raw[0, :3] = [0.5, 0.0, 0.0]  # far beyond max_pos_delta
    raw[0, 3:7] = [0.2, 0.9, 0.1, 0.0]  # a large, unnormalised rotation
    raw[0, 7:] = rng.uniform(-3.0, 3.0, hand_env.NUM_HAND)  # beyond the joint ranges
    _, _, _, _, info = env.step(raw)
    np.testing.assert_allclose(env.executed_form(raw), info["executed_action"], atol=1e-6)
    # Executed commands are a fixed point: queuing them again changes nothing.
    np.testing.assert_allclose(env.executed_form(info["executed_action"]), info["executed_action"], atol=1e-6)
