"""HandPickPlace: interface, relative EE actions, reward/termination rules, rendering, shift."""

import dataclasses
import os

import mujoco
import numpy as np
import pytest

from sernf_data.spec import check_observations
from sernf_sim.hand_pick_place import model as M
from sernf_sim.hand_pick_place import rotations as R
from sernf_sim.hand_pick_place.config import (
    DomainShift,
    HandEpisodeConfig,
    HandPickPlaceConfig,
)
from sernf_sim.hand_pick_place.config import test_configs as hand_test_configs
from sernf_sim.hand_pick_place.env import (
    ACTION_DIM,
    HAND,
    JOINT_HIGH,
    JOINT_LOW,
    HandPickPlace,
    action_names,
    clip_action,
    make_env,
)
from sernf_sim.hand_pick_place.expert import OPEN_HAND, HandExpert

HOME_Q = np.array(M.HAND_HOME_QUAT)
CAN_RENDER = os.environ.get("MUJOCO_GL") in ("egl", "osmesa")


def _action(n=1, dp=(0.0, 0.0, 0.0), dq=(1.0, 0.0, 0.0, 0.0), env=None):
    a = np.zeros((n, ACTION_DIM))
    a[:, :3] = dp
    a[:, 3:7] = dq
    a[:, HAND] = env.finger_targets() if env is not None else OPEN_HAND
    return a


# -- interface ---------------------------------------------------------------------------------


def test_spec_reset_and_step_shapes_state_only():
    env = HandPickPlace(num_envs=3)
    assert env.action_dim == ACTION_DIM == 7 + M.NUM_FINGER_JOINTS == len(action_names()) == 24
    spec = env.observation_spec
    assert set(spec) == {"hand_joints", "ee_pose", "object_state"}  # no images, privileged state
    assert spec["hand_joints"].shape == (17,)  # the ORCA hand's joints, wrist included
    assert action_names()[7:] == [s.name for s in M.FINGER_JOINTS]
    obs = env.reset(seed=1)
    check_observations(spec, obs, leading=1)
    obs, reward, term, trunc, info = env.step(env.hold_action(obs))
    check_observations(spec, obs, leading=1)
    assert reward.shape == term.shape == trunc.shape == (3,)
    assert info["executed_action"].shape == (3, ACTION_DIM)
    assert set(info["subtask_success"]) == {"grasp", "place"}
    assert info["success"].dtype == bool and info["success"].shape == (3,)
    assert len(env.episode_configs) == 3


def test_reset_is_reproducible_and_configs_are_applied():
    env = HandPickPlace(num_envs=2)
    a = env.reset(seed=7)
    b = env.reset(seed=7)
    np.testing.assert_array_equal(a["object_state"], b["object_state"])
    cfgs = hand_test_configs()
    env.reset(configs=[cfgs[3], cfgs[7].to_dict()])
    assert env.episode_configs[0] == cfgs[3] and env.episode_configs[1] == cfgs[7]
    np.testing.assert_allclose(env.object_poses()[0, :, :2], cfgs[3].object_xy, atol=2e-3)
    np.testing.assert_allclose(env.target_xy[1], cfgs[7].target_xy)
    with pytest.raises(ValueError, match="one per env"):
        env.reset(configs=[cfgs[0]])


def test_bad_actions_and_step_before_reset_are_rejected():
    env = HandPickPlace(num_envs=2)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros((2, ACTION_DIM)))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="actions must be"):
        env.step(np.zeros((2, ACTION_DIM - 1)))
    bad = env.hold_action()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.step(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_envs": 0},
        {"image_size": -1},
        {"max_pos_delta": 0.0},
        {"max_rot_delta": 4.0},
        {"physics_dt": 0.003},  # does not divide the 0.1 s control period
        {"workspace_low": (0.0, 0.0, 1.0)},  # low > high
        {"render_images": False, "include_object_state": False},
        {"physics_threads": 0},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        HandPickPlaceConfig(**kwargs)


def test_domain_shift_validation():
    with pytest.raises(ValueError):
        DomainShift(object_mass_scale=0.0)
    with pytest.raises(ValueError):
        DomainShift(action_latency_steps=-1)
    with pytest.raises(ValueError):
        make_env("real")


def test_test_configs_are_two_object_layouts_times_five_targets():
    cfgs = hand_test_configs()
    assert len(cfgs) == 10 and len(set(cfgs)) == 10
    layouts = {(c.object_xy, c.object_yaw) for c in cfgs}
    targets = {c.target_xy for c in cfgs}
    assert len(layouts) == 2 and len(targets) == 5
    for c in cfgs:
        assert HandEpisodeConfig.from_dict(c.to_dict()) == c
        # Objects start outside the target square.
        for xy in c.object_xy:
            assert np.max(np.abs(np.subtract(xy, c.target_xy))) > M.TARGET_HALF


def test_random_layouts_respect_separation_and_target_clearance():
    env = HandPickPlace(num_envs=1, seed=3)
    for c in env.sample_configs(200):
        oxy = np.array(c.object_xy)
        assert np.linalg.norm(oxy[0] - oxy[1]) >= env.config.min_object_separation
        assert np.all(np.max(np.abs(oxy - c.target_xy), axis=1) > M.TARGET_HALF)


# -- actions -----------------------------------------------------------------------------------


def test_clip_action_reports_what_is_executed():
    env = HandPickPlace(num_envs=1)
    env.reset(seed=0)
    raw = np.zeros((1, ACTION_DIM))
    raw[0, :3] = [0.3, 0.0, -0.4]  # 0.5 m: far over the per-step limit
    raw[0, 3:7] = [-2.0, 0.0, 0.0, -2.0]  # unnormalised, w < 0, 90° about z
    raw[0, HAND] = JOINT_HIGH + 1.0
    _, _, _, _, info = env.step(raw)
    ex = info["executed_action"][0].astype(np.float64)
    cfg = env.config
    np.testing.assert_allclose(np.linalg.norm(ex[:3]), cfg.max_pos_delta, rtol=1e-5)
    np.testing.assert_allclose(ex[:3] / np.linalg.norm(ex[:3]), [0.6, 0.0, -0.8], atol=1e-5)
    assert abs(np.linalg.norm(ex[3:7]) - 1.0) < 1e-5 and ex[3] >= 0
    np.testing.assert_allclose(R.angle(ex[3:7]), cfg.max_rot_delta, atol=1e-5)
    np.testing.assert_allclose(R.to_rotvec(ex[3:7]) / cfg.max_rot_delta, [0, 0, 1], atol=1e-5)
    np.testing.assert_allclose(ex[7:], JOINT_HIGH, atol=1e-6)
    # A zero quaternion means "no rotation"; in-range commands pass unchanged.
    small = np.zeros((1, ACTION_DIM))
    small[0, :3] = [0.01, -0.005, 0.002]
    small[0, HAND] = (JOINT_LOW + JOINT_HIGH) / 2
    out = clip_action(small, cfg.max_pos_delta, cfg.max_rot_delta)
    np.testing.assert_allclose(out[0, 3:7], [1, 0, 0, 0])
    np.testing.assert_allclose(out[0, :3], small[0, :3])
    np.testing.assert_allclose(out[0, HAND], small[0, HAND])


def test_hold_action_keeps_the_hand_still():
    env = HandPickPlace(num_envs=2)
    obs = env.reset(seed=2)
    hold = env.hold_action(obs)
    np.testing.assert_array_equal(hold[:, :3], 0.0)
    np.testing.assert_array_equal(hold[:, 3:7], [[1, 0, 0, 0]] * 2)
    np.testing.assert_allclose(hold[:, HAND], env.finger_targets(), atol=1e-6)
    start = env.ee_pose()
    for _ in range(10):
        obs, *_ = env.step(env.hold_action(obs))
    end = env.ee_pose()
    assert np.max(np.linalg.norm(end[:, :3] - start[:, :3], axis=1)) < 0.002
    assert np.max(R.angle(R.mul(R.conj(start[:, 3:]), end[:, 3:]))) < 0.01


def test_position_delta_moves_along_the_current_ee_axes():
    env = HandPickPlace(num_envs=1)
    env.reset(seed=0)
    # Turn the EE 90° about its own z axis (the approach axis, pointing down).
    q = R.mul(HOME_Q, R.from_axis_angle(np.array([0.0, 0.0, 1.0]), np.array(np.pi / 2)))
    env.set_hand(0, (0.0, 0.0, 0.2), q, OPEN_HAND)
    for _ in range(3):
        env.step(_action(env=env))
    rot = R.to_matrix(env.ee_pose()[0, 3:])
    ex_world = rot[:, 0]
    assert abs(ex_world[0]) < 0.05  # EE x now points along world ±y, not world x
    p0 = env.ee_pose()[0, :3]
    for _ in range(3):
        env.step(_action(dp=(0.02, 0.0, 0.0), env=env))
    for _ in range(2):
        env.step(_action(env=env))  # let it settle
    move = env.ee_pose()[0, :3] - p0
    assert np.dot(move / np.linalg.norm(move), ex_world) > 0.98
    np.testing.assert_allclose(np.linalg.norm(move), 0.06, rtol=0.15)
    # Same for the EE z axis (world -z): +z in the EE frame moves the hand down.
    p1 = env.ee_pose()[0, :3]
    env.step(_action(dp=(0.0, 0.0, 0.02), env=env))
    env.step(_action(env=env))
    move = env.ee_pose()[0, :3] - p1
    assert np.dot(move / np.linalg.norm(move), rot[:, 2]) > 0.98 and move[2] < -0.015


def test_quaternion_delta_rotates_about_the_current_ee_axes():
    env = HandPickPlace(num_envs=1)
    env.reset(seed=0)
    q0 = R.mul(HOME_Q, R.from_axis_angle(np.array([0.0, 0.0, 1.0]), np.array(np.pi / 2)))
    env.set_hand(0, (0.0, 0.0, 0.22), q0, OPEN_HAND)
    env.step(_action(env=env))
    before = env.ee_pose()[0, 3:]
    delta = R.from_axis_angle(np.array([1.0, 0.0, 0.0]), np.array(0.25))  # about EE x
    env.step(_action(dq=delta, env=env))
    for _ in range(2):
        env.step(_action(env=env))
    after = env.ee_pose()[0, 3:]
    body = R.mul(before, delta)  # rotation about the current (body) x axis: expected
    world = R.mul(delta, before)  # about the world x axis: what a wrong convention gives
    err_body = R.angle(R.mul(R.conj(body), after))
    err_world = R.angle(R.mul(R.conj(world), after))
    assert err_body < 0.03 < 0.2 < err_world


def test_relative_commands_chain_from_the_commanded_pose():
    # Ten +x steps of 2 cm cover 20 cm even though the hand lags within each step.
    env = HandPickPlace(num_envs=1)
    env.reset(seed=0)
    p0 = env.ee_pose()[0, :3]
    for _ in range(10):
        env.step(_action(dp=(0.02, 0.0, 0.0), env=env))
    env.step(_action(env=env))
    np.testing.assert_allclose(env.ee_pose()[0, :3] - p0, [0.2, 0.0, 0.0], atol=0.006)


def test_commanded_position_is_clipped_to_the_workspace():
    env = HandPickPlace(num_envs=1)
    env.reset(seed=0)
    for _ in range(15):
        env.step(_action(dp=(0.0, 0.0, -0.03), env=env))  # EE z is world down: push down
    assert env.ee_pose()[0, 2] >= env.config.workspace_low[2] - 0.005


# -- rewards and termination on constructed states ---------------------------------------------


@pytest.fixture(scope="module")
def grasp_snapshot():
    """Hand joints/targets and the in-hand object pose at the moment a real grasp succeeded."""
    env = HandPickPlace(num_envs=1)
    expert = HandExpert(env, seed=0)
    cfg = hand_test_configs()[0]
    obs = env.reset(configs=[cfg])
    expert.reset(obs)
    for _ in range(80):
        obs, reward, *_, info = env.step(expert.act(obs))
        if reward[0] > 0:
            break
    assert info["subtask_success"]["grasp"][0]
    k = int(info["grasped_object"][0])
    ee = env.ee_pose()[0]
    obj = env.object_poses()[0, k]
    rel_p = R.rotate(R.conj(ee[3:]), obj[:3] - ee[:3])
    rel_q = R.mul(R.conj(ee[3:]), obj[3:])
    d = env.data(0)
    return {
        "config": cfg,
        "object": k,
        "joints": d.qpos[env.idx.finger_qpos].copy(),
        "targets": d.ctrl.copy(),
        "ee_quat": ee[3:].copy(),
        "rel_p": rel_p,
        "rel_q": rel_q,
    }


def _construct(snap, hand_pos, in_hand=True, object_pose=None, max_steps=100):
    """Fresh env with the hand teleported to ``hand_pos`` holding the object (or not)."""
    env = HandPickPlace(num_envs=1, max_steps=max_steps)
    env.reset(configs=[snap["config"]])
    q = snap["ee_quat"]
    env.set_hand(0, hand_pos, q, snap["joints"], snap["targets"])
    k = snap["object"]
    if in_hand:
        pos = np.asarray(hand_pos) + R.rotate(q, snap["rel_p"])
        env.set_object_pose(0, k, pos, R.mul(q, snap["rel_q"]))
    elif object_pose is not None:
        env.set_object_pose(0, k, object_pose[:3], object_pose[3:])
    return env


def _hold(env):
    return env.step(env.hold_action())


def test_grasp_reward_fires_once_when_the_object_is_lifted_in_the_hand(grasp_snapshot):
    env = _construct(grasp_snapshot, (0.0, 0.0, 0.2))
    _, reward, term, trunc, info = _hold(env)
    assert reward[0] == 1.0
    assert info["subtask_success"]["grasp"][0] and not info["subtask_success"]["place"][0]
    assert info["grasped_object"][0] == grasp_snapshot["object"]
    assert not term[0] and not trunc[0]
    for _ in range(3):  # still held: no second reward
        _, reward, term, _, info = _hold(env)
        assert reward[0] == 0.0 and info["subtask_success"]["grasp"][0] and not term[0]


def test_no_grasp_reward_for_an_object_resting_on_the_table(grasp_snapshot):
    # Same closed hand in the air, but the object stands on the table elsewhere.
    k = grasp_snapshot["object"]
    xy = grasp_snapshot["config"].object_xy[k]
    resting = np.r_[xy, M.OBJECT_HALF_HEIGHT, R.from_yaw(np.array(0.3))]
    env = _construct(grasp_snapshot, (0.0, 0.0, 0.2), in_hand=False, object_pose=resting)
    for _ in range(3):
        _, reward, term, _, info = _hold(env)
        assert reward[0] == 0.0 and not info["subtask_success"]["grasp"][0] and not term[0]


def test_no_grasp_reward_below_the_lift_height(grasp_snapshot):
    # In the hand, but its bottom only ~1 cm above the table: not "lifted clear" yet.
    q = grasp_snapshot["ee_quat"]
    offset = R.rotate(q, grasp_snapshot["rel_p"])
    half = M.OBJECT_HALF_HEIGHT
    hand_z = half + 0.01 - offset[2]
    env = _construct(grasp_snapshot, (0.0, 0.0, hand_z))
    _, reward, _, _, info = _hold(env)
    assert reward[0] == 0.0 and not info["subtask_success"]["grasp"][0]
    assert env.object_contacts()["held"][0, grasp_snapshot["object"]]  # but it is held


def _grasped_env(snap, max_steps=100):
    env = _construct(snap, (0.0, 0.0, 0.2), max_steps=max_steps)
    _, reward, *_ = _hold(env)
    assert reward[0] == 1.0
    return env


def _release_and_put(env, snap, xy, quat):
    """Open the hand far above and set the grasped object down at ``xy`` with ``quat``."""
    env.set_hand(0, (0.15, 0.25, 0.25), snap["ee_quat"], OPEN_HAND)
    half = M.OBJECT_HALF_HEIGHT
    env.set_object_pose(0, snap["object"], (*xy, half + 1e-4), quat)


def test_place_reward_fires_when_resting_upright_in_the_target(grasp_snapshot):
    env = _grasped_env(grasp_snapshot)
    target = env.target_xy[0]
    _release_and_put(env, grasp_snapshot, target + [0.02, -0.03], R.from_yaw(np.array(0.4)))
    _, reward, term, trunc, info = _hold(env)
    assert reward[0] == 1.0 and term[0] and not trunc[0]
    assert info["success"][0] and info["subtask_success"]["place"][0]
    assert info["subtask_success"]["grasp"][0] and not info["failure"][0]
    assert info["termination_reason"][0] == "success"
    # Finished: further steps change nothing and give nothing.
    before = env.object_poses().copy()
    rng = np.random.default_rng(0)
    _, reward, term, _, info = env.step(rng.normal(0, 0.05, (1, ACTION_DIM)) + _action(env=env))
    assert reward[0] == 0.0 and term[0] and info["success"][0]
    np.testing.assert_array_equal(env.object_poses(), before)
    np.testing.assert_allclose(info["executed_action"], env.hold_action(), atol=1e-6)


def test_resting_outside_the_target_after_a_grasp_is_a_drop(grasp_snapshot):
    env = _grasped_env(grasp_snapshot)
    target = env.target_xy[0]
    outside = target + [M.TARGET_HALF + 0.03, 0.0]
    _release_and_put(env, grasp_snapshot, outside, R.from_yaw(np.array(0.0)))
    _, reward, term, _, info = _hold(env)
    assert reward[0] == 0.0 and term[0]
    assert not info["success"][0] and info["failure"][0]
    assert info["termination_reason"][0] == "dropped"


def test_tipped_over_in_the_target_is_not_a_place(grasp_snapshot):
    env = _grasped_env(grasp_snapshot)
    k = grasp_snapshot["object"]
    target = env.target_xy[0]
    env.set_hand(0, (0.15, 0.25, 0.25), grasp_snapshot["ee_quat"], OPEN_HAND)
    lying = R.from_axis_angle(np.array([1.0, 0.0, 0.0]), np.array(np.pi / 2))
    radius = M.CYL_RADIUS if k == 1 else M.BOX_HALF[1]
    env.set_object_pose(0, k, (*target, radius + 1e-4), lying)
    for _ in range(5):
        _, reward, term, _, info = _hold(env)
        if term[0]:
            break
    assert reward[0] == 0.0 and term[0] and info["termination_reason"][0] == "dropped"
    assert not info["subtask_success"]["place"][0]


def test_an_object_off_the_table_ends_the_episode_as_failure():
    env = HandPickPlace(num_envs=2)
    env.reset(seed=0)
    env.set_object_pose(1, 0, (0.6, 0.0, -0.3), (1, 0, 0, 0))
    _, reward, term, _, info = _hold(env)
    assert list(term) == [False, True] and reward[1] == 0.0
    assert info["termination_reason"][1] == "fell_off_table" and info["failure"][1]


def test_time_limit_truncates():
    env = HandPickPlace(num_envs=2, max_steps=4)
    env.reset(seed=0)
    for t in range(4):
        _, _, term, trunc, info = _hold(env)
        assert not term.any()
        assert trunc.all() == (t == 3)
    assert list(info["termination_reason"]) == ["time_limit"] * 2
    assert not info["failure"].any() and not info["success"].any()


# -- rendering ---------------------------------------------------------------------------------


@pytest.mark.skipif(not CAN_RENDER, reason="needs MUJOCO_GL=egl or osmesa")
def test_cameras_render_distinct_nonconstant_images():
    env = HandPickPlace(num_envs=2, render_images=True)
    spec = env.observation_spec
    assert {"wrist_rgb", "front_rgb"} <= set(spec) and "object_state" not in spec
    obs = env.reset(seed=0)
    check_observations(spec, obs, leading=1)
    assert env._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] == 0
    for key in ("wrist_rgb", "front_rgb"):
        img = obs[key]
        assert img.shape == (2, 84, 84, 3) and img.dtype == np.uint8
        assert img.reshape(2, -1).std(axis=1).min() > 10  # not constant
    diff = np.abs(obs["wrist_rgb"].astype(int) - obs["front_rgb"].astype(int)).mean()
    assert diff > 20
    # The two envs have different layouts, so their front views differ too.
    assert np.abs(obs["front_rgb"][0].astype(int) - obs["front_rgb"][1].astype(int)).mean() > 1
    # The wrist camera moves with the hand.
    before = obs["wrist_rgb"].copy()
    for _ in range(3):
        obs, *_ = env.step(_action(n=2, dp=(0.0, 0.0, 0.03), env=env))
    assert np.abs(obs["wrist_rgb"].astype(int) - before.astype(int)).mean() > 5


# -- domain shift ------------------------------------------------------------------------------


def test_shifted_variant_changes_physics_and_sensing():
    nom = make_env("nominal", num_envs=2)
    sh = make_env("shifted", num_envs=2)
    shift = DomainShift.shifted()
    for g, b in zip(nom.idx.object_geom, nom.idx.object_body, strict=True):
        np.testing.assert_allclose(
            sh.model.geom_friction[g, 0],
            nom.model.geom_friction[g, 0] * shift.object_friction_scale,
        )
        np.testing.assert_allclose(
            sh.model.body_mass[b], nom.model.body_mass[b] * shift.object_mass_scale
        )
    np.testing.assert_allclose(
        sh.model.actuator_gainprm[:, 0], nom.model.actuator_gainprm[:, 0] * shift.finger_kp_scale
    )
    np.testing.assert_allclose(sh.model.actuator_biasprm[:, 1], -sh.model.actuator_gainprm[:, 0])
    assert sh.model.eq_solref[sh.idx.weld_eq, 0] > nom.model.eq_solref[nom.idx.weld_eq, 0]
    # Noisy sensing: observations deviate from the true state by about the configured std.
    obs = sh.reset(seed=0)
    err = np.concatenate(
        [
            (obs["ee_pose"][:, :3] - sh.ee_pose()[:, :3]).ravel(),
            obs["hand_joints"][0] - sh.data(0).qpos[sh.idx.finger_qpos],
        ]
    )
    assert 0.3 * shift.obs_noise_std < err.std() < 3 * shift.obs_noise_std
    obs_n = nom.reset(seed=0)
    np.testing.assert_allclose(obs_n["ee_pose"], nom.ee_pose(), atol=1e-6)


def test_action_latency_delays_execution():
    delayed = HandPickPlace(num_envs=1, domain_shift=DomainShift(action_latency_steps=1))
    prompt = HandPickPlace(num_envs=1)
    for env in (delayed, prompt):
        env.reset(seed=0)
    up = _action(dp=(0.0, 0.0, -0.03), env=prompt)  # EE z points down: -z lifts
    z0 = prompt.ee_pose()[0, 2]
    prompt.step(up)
    _, _, _, _, info = delayed.step(up)
    # The command is reported as accepted (executed action) but acts one step later.
    np.testing.assert_allclose(info["executed_action"][0, :3], [0.0, 0.0, -0.03], atol=1e-6)
    assert prompt.ee_pose()[0, 2] - z0 > 0.02
    assert abs(delayed.ee_pose()[0, 2] - z0) < 0.003
    delayed.step(delayed.hold_action())
    assert delayed.ee_pose()[0, 2] - z0 > 0.02


def test_physics_threads_give_the_same_episodes():
    """Stepping the envs' physics on several threads changes nothing but the speed: the same
    observations, rewards and ends, step for step, as one thread (each env owns its MjData)."""

    def run(threads: int) -> list:
        env = HandPickPlace(num_envs=5, physics_threads=threads)
        obs = env.reset(seed=4)
        expert = HandExpert(env, seed=0)
        expert.reset(obs)
        trace = []
        for _ in range(40):
            obs, reward, term, trunc, info = env.step(expert.act(obs))
            trace.append((obs, reward.copy(), term.copy(), trunc.copy(), info["executed_action"].copy()))
        return trace

    one, three = run(1), run(3)
    assert any(r.any() for _, r, _, _, _ in one)  # the expert grasped something: contacts happened
    for (o1, r1, t1, u1, a1), (o3, r3, t3, u3, a3) in zip(one, three, strict=True):
        assert set(o1) == set(o3) and all(np.array_equal(o1[k], o3[k]) for k in o1)
        assert np.array_equal(r1, r3) and np.array_equal(t1, t3) and np.array_equal(u1, u3)
        assert np.array_equal(a1, a3)


def test_a_diverged_simulation_is_noticed_on_a_physics_thread():
    env = HandPickPlace(num_envs=3, physics_threads=2)
    env.reset(seed=0)
    v = env.idx.object_qvel[1]
    env.data(1).qvel[v : v + 3] = 1e12
    _, _, term, _, info = _hold(env)
    assert list(term) == [False, True, False] and info["termination_reason"][1] == "unstable"


def test_a_diverged_simulation_ends_the_episode_as_failure():
    env = HandPickPlace(num_envs=2)
    env.reset(seed=0)
    d = env.data(0)
    v = env.idx.object_qvel[1]
    d.qvel[v : v + 3] = 1e12  # MuJoCo detects this and resets the state; the task must notice
    _, reward, term, _, info = _hold(env)
    assert list(term) == [True, False] and reward[0] == 0.0
    assert info["termination_reason"][0] == "unstable" and info["failure"][0]


def test_wrist_action_tilts_the_palm_while_the_flange_holds_the_ee_pose():
    """The wrist belongs to the hand: commanding it turns the palm, not the end effector."""
    env = HandPickPlace(num_envs=1)
    obs = env.reset(seed=0)
    wrist = [s.name for s in M.FINGER_JOINTS].index(M.WRIST_NAME)
    palm = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_BODY, "palm")
    ee0 = env.ee_pose()[0].copy()
    action = env.hold_action(obs)
    action[0, 7 + wrist] = 0.4  # flexion
    for _ in range(5):
        obs, *_ = env.step(action)
    assert obs["hand_joints"][0, wrist] == pytest.approx(0.4, abs=0.05)
    np.testing.assert_allclose(env.ee_pose()[0, :3], ee0[:3], atol=0.005)
    assert R.angle(R.mul(R.conj(ee0[None, 3:]), env.ee_pose()[:, 3:]))[0] < 0.05
    d = env.data(0)
    flange_z = d.xmat[env.idx.hand_body].reshape(3, 3)[:, 2]
    palm_z = d.xmat[palm].reshape(3, 3)[:, 2]
    assert np.arccos(np.clip(flange_z @ palm_z, -1.0, 1.0)) == pytest.approx(0.4, abs=0.05)
    # Out-of-range wrist commands are clipped to ORCA's range.
    action[0, 7 + wrist] = 3.0
    _, _, _, _, info = env.step(action)
    assert info["executed_action"][0, 7 + wrist] == pytest.approx(JOINT_HIGH[wrist])


@pytest.mark.parametrize("thumb_mcp", ["lower", "upper"])
def test_pressing_the_hand_onto_the_table_does_not_bend_a_finger_past_its_stop(thumb_mcp):
    """The table pushes back on a thumb pressed into it; its joints stay at their stops, as the
    ORCA hand's mechanical stops hold them. Until 2026-12-03 the finger joints had no armature,
    damping or stiff limit (their default class was never applied) and contact bent the thumb
    up to 1.3 rad past its range here; online RL learned to do that, and the policy node then
    held the robot (docs/results.md, section 2)."""
    names = [s.name for s in M.FINGER_JOINTS]
    k = names.index("thumb_mcp")
    env = HandPickPlace(num_envs=1, max_steps=40)
    obs = env.reset(seed=3)
    worst = -np.inf
    for _ in range(30):
        action = env.hold_action(obs).astype(np.float64)
        action[0, :3] = (0.0, 0.0, 0.03)  # along the EE z axis: down onto the table
        action[0, 7 + k] = (JOINT_LOW if thumb_mcp == "lower" else JOINT_HIGH)[k]
        obs, *_ = env.step(action)
        j = obs["hand_joints"][0]
        worst = max(worst, float(np.max(np.maximum(JOINT_LOW - j, j - JOINT_HIGH))))
    assert obs["ee_pose"][0, 2] < 0.05  # the hand did get down to the table
    assert worst < 0.03, f"a finger joint bent {worst:.3f} rad past its range"


def test_readings_past_the_policy_nodes_joint_bounds_are_reported_without_ending_the_episode():
    """``info["joints_past_range"]``: the policy node refuses hand readings further than
    JOINT_RANGE_MARGIN_RAD outside their range and holds the robot; the in-process env keeps
    the episode going but says, per episode and for good, that the robot would have stopped."""
    from sernf_sim.hand_pick_place.env import JOINT_RANGE_MARGIN_RAD

    assert JOINT_RANGE_MARGIN_RAD == 0.1  # the policy node's joint_limit_margin_rad default
    calm = HandPickPlace(num_envs=2, max_steps=4)
    obs = calm.reset(seed=3)
    for _ in range(3):
        obs, _, term, trunc, info = calm.step(calm.hold_action(obs))
        assert info["joints_past_range"].dtype == bool and not info["joints_past_range"].any()
    # Readings 5 rad off (sensor noise here; bent fingers under contact in the demo's runs).
    noisy = HandPickPlace(num_envs=2, max_steps=4, domain_shift=DomainShift(obs_noise_std=5.0))
    obs = noisy.reset(seed=3)
    obs, _, term, trunc, info = noisy.step(noisy.hold_action(obs))
    far = (obs["hand_joints"] < JOINT_LOW - 0.1) | (obs["hand_joints"] > JOINT_HIGH + 0.1)
    np.testing.assert_array_equal(info["joints_past_range"], far.any(axis=1))
    assert info["joints_past_range"].all() and not (term | trunc).any()  # reported, not ended
    # Sticky for the episode, cleared by a reset.
    noisy.config = dataclasses.replace(noisy.config, domain_shift=DomainShift())
    obs, _, _, _, info = noisy.step(noisy.hold_action(obs))
    assert info["joints_past_range"].all()
    obs = noisy.reset(seed=4)
    assert not noisy.step(noisy.hold_action(obs))[4]["joints_past_range"].any()
