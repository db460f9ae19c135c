"""The bridge's pure core: pose math in the EE frame, limits, validation, watchdog, reflexes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from franka_bridge.config import FrankaBridgeConfig
from franka_bridge.core import BridgeCore, Mode
from franka_bridge.pose_math import (
    clip_delta,
    clip_to_cone,
    compose,
    hemisphere_aligned,
    relative,
    rotation_angle,
)

IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])
DOWN = np.array([0.0, 1.0, 0.0, 0.0])  # hand pointing down: 180 deg about base x


def quat(axis: str, angle: float) -> np.ndarray:
    return Rotation.from_euler(axis, angle).as_quat(scalar_first=True)


def same_rotation(a: np.ndarray, b: np.ndarray, atol: float = 1e-9) -> bool:
    return abs(abs(float(np.dot(a, b))) - 1.0) < atol


def make_core(**overrides) -> BridgeCore:
    params = dict(command_frame="ee", workspace_low=(-1.0, -1.0, -1.0), workspace_high=(1.0, 1.0, 1.0),
                  reference_orientation=tuple(DOWN), max_orientation_deviation_rad=math.pi)
    params.update(overrides)
    return BridgeCore(FrankaBridgeConfig(**params))


def active_core(position=(0.5, 0.0, 0.3), orientation=DOWN, now: float = 0.0, **overrides) -> BridgeCore:
    core = make_core(**overrides)
    assert core.on_pose(np.array(position), np.array(orientation), "base", now) == ""
    ok, reason = core.activate(now)
    assert ok, reason
    return core


# -- pose math ---------------------------------------------------------------------------------

def test_translation_is_applied_along_the_current_ee_axes() -> None:
    # EE rotated 90 deg about z: its x axis is the base's y axis.
    p, q = compose(np.array([0.5, 0.0, 0.3]), quat("z", math.pi / 2), np.array([0.01, 0, 0]), IDENTITY)
    np.testing.assert_allclose(p, [0.5, 0.01, 0.3], atol=1e-12)
    # Hand pointing down (180 deg about x): EE z is base -z.
    p, _ = compose(np.array([0.5, 0.0, 0.3]), DOWN, np.array([0, 0, 0.02]), IDENTITY)
    np.testing.assert_allclose(p, [0.5, 0.0, 0.28], atol=1e-12)


def test_rotation_composes_on_the_right_in_the_ee_frame() -> None:
    q_base = quat("x", math.pi / 2)
    dq = quat("z", 0.3)  # about the EE's z axis, which is base -y after the base rotation
    _, q = compose(np.zeros(3), q_base, np.zeros(3), dq)
    expected = (Rotation.from_quat(q_base, scalar_first=True) * Rotation.from_quat(dq, scalar_first=True))
    assert same_rotation(q, expected.as_quat(scalar_first=True))
    world_first = Rotation.from_quat(dq, scalar_first=True) * Rotation.from_quat(q_base, scalar_first=True)
    assert not same_rotation(q, world_first.as_quat(scalar_first=True), atol=1e-3)


def test_relative_inverts_compose() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p0, q0 = rng.normal(size=3), Rotation.random(random_state=rng).as_quat(scalar_first=True)
        dp, dq = rng.normal(size=3) * 0.1, Rotation.random(random_state=rng).as_quat(scalar_first=True)
        p1, q1 = compose(p0, q0, dp, dq)
        dp2, dq2 = relative(p0, q0, p1, q1)
        np.testing.assert_allclose(dp2, dp, atol=1e-12)
        assert same_rotation(dq2, dq)


def test_quaternion_arithmetic_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        r0, r1 = Rotation.random(random_state=rng), Rotation.random(random_state=rng)
        q0, q1 = r0.as_quat(scalar_first=True), r1.as_quat(scalar_first=True)
        p0, dp = rng.normal(size=3), rng.normal(size=3)
        p, q = compose(p0, q0, dp, q1)
        np.testing.assert_allclose(p, p0 + r0.apply(dp), atol=1e-12)
        assert same_rotation(q, (r0 * r1).as_quat(scalar_first=True))
        assert math.isclose(rotation_angle(q1), r1.magnitude(), abs_tol=1e-9)
        _, dq, _ = clip_delta(np.zeros(3), q1, 1.0, 0.2)
        expected = Rotation.from_rotvec(r1.as_rotvec() * min(1.0, 0.2 / r1.magnitude()))
        assert same_rotation(dq, expected.as_quat(scalar_first=True))


def test_clip_delta_keeps_direction_and_axis() -> None:
    dp, dq, clipped = clip_delta(np.array([0.03, 0.04, 0.0]), quat("y", 0.5), 0.01, 0.1)
    assert clipped
    np.testing.assert_allclose(dp, [0.006, 0.008, 0.0], atol=1e-12)
    assert math.isclose(rotation_angle(dq), 0.1, abs_tol=1e-12)
    axis = Rotation.from_quat(dq, scalar_first=True).as_rotvec()
    np.testing.assert_allclose(axis / np.linalg.norm(axis), [0, 1, 0], atol=1e-12)
    dp, dq, clipped = clip_delta(np.array([0.001, 0, 0]), quat("x", 0.05), 0.01, 0.1)
    assert not clipped and math.isclose(rotation_angle(dq), 0.05, abs_tol=1e-12)


def test_cone_clip_lands_on_the_boundary() -> None:
    q = quat("z", 1.0)
    clipped, changed = clip_to_cone(q, IDENTITY, 0.4)
    assert changed and math.isclose(rotation_angle(clipped), 0.4, abs_tol=1e-9)
    inside, changed = clip_to_cone(quat("z", 0.3), IDENTITY, 0.4)
    assert not changed and math.isclose(rotation_angle(inside), 0.3, abs_tol=1e-9)


def test_hemisphere_alignment() -> None:
    q, flipped = hemisphere_aligned(-DOWN, DOWN)
    assert flipped and np.dot(q, DOWN) > 0
    q, flipped = hemisphere_aligned(DOWN, DOWN)
    assert not flipped and np.array_equal(q, DOWN)


# -- commands through the core -------------------------------------------------------------------

def test_plus_x_command_moves_along_the_current_ee_x_axis() -> None:
    q_ee = quat("z", math.pi / 2)  # EE x = base y
    core = active_core(orientation=q_ee)
    out = core.on_command(np.array([0.01, 0, 0]), IDENTITY, "ee", 0.01)
    assert out.accepted, out.reason
    np.testing.assert_allclose(out.target.position, [0.5, 0.01, 0.3], atol=1e-12)
    assert same_rotation(out.target.orientation, q_ee)
    np.testing.assert_allclose(out.executed_translation, [0.01, 0, 0], atol=1e-12)
    assert out.limits == ()


def test_consecutive_commands_chain_on_the_equilibrium() -> None:
    core = active_core(orientation=IDENTITY)
    core.on_command(np.array([0.005, 0, 0]), IDENTITY, "ee", 0.01)
    out = core.on_command(np.array([0.005, 0, 0]), IDENTITY, "ee", 0.02)  # arm still at 0.5
    np.testing.assert_allclose(out.target.position, [0.51, 0, 0.3], atol=1e-12)


def test_far_from_equilibrium_reanchors_on_the_measured_pose() -> None:
    core = active_core(orientation=IDENTITY)
    core.on_command(np.array([0.01, 0, 0]), IDENTITY, "ee", 0.01)
    core.on_pose(np.array([0.45, 0, 0.3]), IDENTITY, "base", 0.02)  # pushed back 6 cm (contact)
    out = core.on_command(np.array([0.01, 0, 0]), IDENTITY, "ee", 0.03)
    np.testing.assert_allclose(out.target.position, [0.46, 0, 0.3], atol=1e-12)


def test_per_command_limits_and_executed_delta() -> None:
    core = active_core(orientation=IDENTITY, max_translation_m=0.02, max_rotation_rad=0.1)
    out = core.on_command(np.array([0.0, 0.06, 0.08]), quat("x", 0.4), "ee", 0.01)
    assert out.accepted
    assert out.limits == ("translation", "rotation")
    np.testing.assert_allclose(out.executed_translation, [0, 0.012, 0.016], atol=1e-12)
    assert math.isclose(rotation_angle(out.executed_rotation), 0.1, abs_tol=1e-9)
    np.testing.assert_allclose(out.target.position, [0.5, 0.012, 0.316], atol=1e-12)
    # the executed delta composes exactly into the published target (what the replay stores)
    p, q = compose(np.array([0.5, 0, 0.3]), IDENTITY, out.executed_translation, out.executed_rotation)
    np.testing.assert_allclose(p, out.target.position, atol=1e-12)
    assert same_rotation(q, out.target.orientation)


def test_workspace_clip() -> None:
    core = active_core(position=(0.5, 0.0, 0.295), orientation=IDENTITY, workspace_low=(0.2, -0.3, 0.0),
                       workspace_high=(0.8, 0.3, 0.3))
    out = core.on_command(np.array([0.0, 0.0, 0.02]), IDENTITY, "ee", 0.01)
    assert out.accepted and "workspace" in out.limits
    np.testing.assert_allclose(out.target.position, [0.5, 0.0, 0.3], atol=1e-12)
    np.testing.assert_allclose(out.executed_translation, [0, 0, 0.005], atol=1e-12)


def test_outside_workspace_comes_back_one_step_at_a_time() -> None:
    core = active_core(position=(0.5, 0.0, 0.4), orientation=IDENTITY, workspace_low=(0.2, -0.3, 0.0),
                       workspace_high=(0.8, 0.3, 0.3), max_translation_m=0.02)
    out = core.on_command(np.zeros(3), IDENTITY, "ee", 0.01)
    assert "step" in out.limits
    np.testing.assert_allclose(out.target.position, [0.5, 0.0, 0.38], atol=1e-12)


def test_orientation_cone() -> None:
    core = active_core(orientation=IDENTITY, reference_orientation=tuple(IDENTITY),
                       max_orientation_deviation_rad=0.15, max_rotation_rad=0.1)
    core.on_command(np.zeros(3), quat("y", 0.08), "ee", 0.01)
    out = core.on_command(np.zeros(3), quat("y", 0.08), "ee", 0.02)  # 0.16 rad from the reference
    assert out.accepted and "cone" in out.limits
    assert math.isclose(rotation_angle(out.target.orientation), 0.15, abs_tol=1e-9)


def test_published_quaternion_stays_in_one_hemisphere() -> None:
    # Measured pose arrives with the opposite sign of the same rotation: no sign jump.
    core = active_core(orientation=DOWN)
    core.on_pose(np.array([0.5, 0, 0.3]), -DOWN, "base", 0.005)
    first = core.on_command(np.zeros(3), IDENTITY, "ee", 0.01).target.orientation
    core.on_pose(np.array([0.5, 0, 0.3]), -first, "base", 0.015)
    for k in range(40):  # rotate through the w = 0 crossing
        out = core.on_command(np.zeros(3), quat("z", 0.1), "ee", 0.02 + 0.001 * k)
        assert np.dot(out.target.orientation, first) > -1e-12 or k > 0
        assert np.dot(out.target.orientation, core._last_published_q) >= 0
        prev = out.target.orientation
        nxt = core.on_command(np.zeros(3), IDENTITY, "ee", 0.0205 + 0.001 * k).target.orientation
        assert np.dot(prev, nxt) > 0.99


def test_hemisphere_flip_is_reported() -> None:
    # Composing on the measured pose (reanchor 0), which the robot reports with the other sign.
    q_ee = quat("z", 3.1)
    core = active_core(orientation=q_ee, reference_orientation=tuple(IDENTITY), max_rotation_rad=0.1,
                       reanchor_distance_m=0.0, reanchor_angle_rad=0.0)
    q0 = core.target.orientation
    core.on_pose(np.array([0.5, 0.0, 0.3]), -q_ee, "base", 0.005)
    out = core.on_command(np.zeros(3), quat("z", 0.1), "ee", 0.01)  # crosses 180 deg
    assert out.accepted and out.hemisphere_flipped
    assert np.dot(out.target.orientation, q0) > 0.99
    assert same_rotation(out.target.orientation, quat("z", 3.2))


@pytest.mark.parametrize(("translation", "rotation", "frame", "reason"), [
    ([math.nan, 0, 0], IDENTITY, "ee", "NaN"),
    ([0, 0, 0], [math.inf, 0, 0, 0], "ee", "NaN"),
    ([0, 0, 0], [0.9, 0, 0, 0], "ee", "unit quaternion"),
    ([0, 0, 0], [0, 0, 0, 0], "ee", "unit quaternion"),
    ([0, 0, 0], IDENTITY, "panda_link0", "frame_id"),
])
def test_invalid_commands_are_refused_and_change_nothing(translation, rotation, frame, reason) -> None:
    core = active_core()
    before = core.target
    out = core.on_command(np.array(translation, float), np.array(rotation, float), frame, 0.01)
    assert not out.accepted and reason in out.reason
    assert core.target is before and core.counters.refused == 1 and core.mode is Mode.HOLDING


def test_slightly_off_unit_quaternion_is_normalised() -> None:
    core = active_core(orientation=IDENTITY)
    out = core.on_command(np.zeros(3), IDENTITY * 1.005, "ee", 0.01)
    assert out.accepted and math.isclose(np.linalg.norm(out.target.orientation), 1.0, abs_tol=1e-12)


def test_stale_or_missing_pose_refuses_commands() -> None:
    core = make_core()
    ok, reason = core.activate(0.0)
    assert not ok and "no measured robot pose" in reason
    core = active_core(pose_timeout_s=0.1)
    out = core.on_command(np.zeros(3), IDENTITY, "ee", 0.5)
    assert not out.accepted and "stale" in out.reason


def test_invalid_poses_are_ignored() -> None:
    core = make_core(pose_frame="base")
    assert "NaN" in core.on_pose(np.array([math.nan, 0, 0]), IDENTITY, "base", 0.0)
    assert "norm" in core.on_pose(np.zeros(3), IDENTITY * 2, "base", 0.0)
    assert "frame" in core.on_pose(np.zeros(3), IDENTITY, "world", 0.0)
    assert core.measured is None and core.counters.invalid_poses == 3


def test_watchdog_sets_the_equilibrium_to_the_measured_pose() -> None:
    core = active_core(orientation=IDENTITY, command_timeout_s=0.3, pose_timeout_s=1.0)
    core.on_command(np.array([0.02, 0, 0]), IDENTITY, "ee", 0.0)
    target, note = core.tick(0.2)
    assert note == "" and target.position[0] == pytest.approx(0.52)
    core.on_pose(np.array([0.51, 0, 0.3]), IDENTITY, "base", 0.35)  # still on its way
    target, note = core.tick(0.4)
    assert "no command" in note and core.mode is Mode.HOLDING
    np.testing.assert_allclose(target.position, [0.51, 0, 0.3])
    # latched, not tracking: a later measured pose does not move the equilibrium
    core.on_pose(np.array([0.505, 0, 0.3]), IDENTITY, "base", 0.5)
    target, note = core.tick(0.55)
    assert note == "" and target.position[0] == pytest.approx(0.51)
    assert core.counters.watchdog_holds == 1


# -- reflexes ------------------------------------------------------------------------------------

def test_reflex_stops_forwarding_and_calls_recovery_once() -> None:
    core = active_core(recovery_min_interval_s=5.0, max_recovery_attempts=3)
    assert not core.recovery_due(0.0)  # never without an error
    core.on_error_signal(True, 0.1)
    assert core.mode is Mode.REFLEX
    assert not core.on_command(np.zeros(3), IDENTITY, "ee", 0.1).accepted
    assert core.recovery_due(0.1)
    core.recovery_started(0.1)
    assert not core.recovery_due(0.2)  # one in flight
    core.recovery_finished(succeeded=False)
    assert not core.recovery_due(1.0)  # rate limit
    assert core.recovery_due(5.2)
    core.recovery_started(5.2)
    core.recovery_finished(succeeded=True)
    core.on_error_signal(False, 6.0)
    assert not core.recovery_due(100.0)
    assert core.mode is Mode.AWAITING_RESUME and core.counters.recovery_calls == 2
    assert not core.on_command(np.zeros(3), IDENTITY, "ee", 6.0).accepted


def test_recovery_attempts_are_capped() -> None:
    core = active_core(recovery_min_interval_s=0.0, max_recovery_attempts=2)
    core.on_error_signal(True, 0.0)
    for t in (0.0, 1.0):
        assert core.recovery_due(t)
        core.recovery_started(t)
        core.recovery_finished(succeeded=False)
    assert not core.recovery_due(2.0)


def test_resume_only_on_request_after_the_error_cleared() -> None:
    core = active_core(pose_timeout_s=10.0)
    core.on_error_signal(True, 0.0)
    ok, reason = core.resume(0.1)
    assert not ok and "still reports an error" in reason
    core.on_pose(np.array([0.49, 0.0, 0.3]), DOWN, "base", 0.2)
    core.tick(0.2)
    np.testing.assert_allclose(core.target.position, [0.49, 0.0, 0.3])  # tracks while in reflex
    core.on_error_signal(False, 0.3)
    ok, reason = core.resume(0.4)
    assert ok, reason
    assert core.mode is Mode.HOLDING
    assert core.on_command(np.zeros(3), IDENTITY, "ee", 0.5).accepted
    ok, reason = core.resume(0.6)
    assert not ok and "nothing to resume" in reason


def test_auto_resume_after_recovery() -> None:
    core = active_core(auto_resume_after_recovery=True)
    core.on_error_signal(True, 0.0)
    note = core.on_error_signal(False, 0.05)
    assert "auto_resume" in note and core.mode is Mode.HOLDING


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="workspace_low"):
        FrankaBridgeConfig(workspace_low=(1.0, 0.0, 0.0), workspace_high=(0.5, 1.0, 1.0))
    with pytest.raises(ValueError, match="reference_orientation"):
        FrankaBridgeConfig(reference_orientation=(1.0, 1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="max_translation_m"):
        FrankaBridgeConfig(max_translation_m=0.0)
