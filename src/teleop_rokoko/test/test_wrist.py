"""Wrist mapping and clutch math (relative commands in the current EE frame, R' = R·dR)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from teleop_rokoko.frames import (
    axis_angle_matrix,
    matrix_to_quat_wxyz,
    quat_xyzw_to_matrix,
    rotation_angle,
    yaw_matrix,
)
from teleop_rokoko.wrist import ClutchGesture, WristConfig, WristMapper, frame_yaw_from_hand

EE_P = np.array([0.5, 0.0, 0.4])
EE_R = axis_angle_matrix(np.array([1.0, 0.0, 0.0]), math.pi)  # pointing down, as a Franka EE does
GLOVE_P = np.array([0.3, -0.2, 1.1])
GLOVE_R = axis_angle_matrix(np.array([0.2, 0.5, 1.0]), 0.8)


def apply(pose: tuple[np.ndarray, np.ndarray], dp: np.ndarray, d_rot: np.ndarray):
    """What the bridge does with a command: p' = p + R·dp, R' = R·dR."""
    p, r = pose
    return p + r @ dp, r @ d_rot


def run(mapper: WristMapper, glove_p, glove_r, ee, steps: int):
    for _ in range(steps):
        dp, d_rot = mapper.step(glove_p, glove_r, *ee)
        ee = apply(ee, dp, d_rot)
    return ee


def test_disengaged_sends_zero_deltas() -> None:
    mapper = WristMapper()
    dp, d_rot = mapper.step(GLOVE_P + 0.3, GLOVE_R)
    np.testing.assert_array_equal(dp, np.zeros(3))
    np.testing.assert_array_equal(d_rot, np.eye(3))


def test_engaged_ee_follows_the_glove_translation_in_the_base_frame() -> None:
    mapper = WristMapper(WristConfig(max_step_m=0.01))
    mapper.engage(GLOVE_P, GLOVE_R, EE_P, EE_R)
    # No glove motion: no arm motion (engaging never jumps).
    dp, d_rot = mapper.step(GLOVE_P, GLOVE_R, EE_P, EE_R)
    np.testing.assert_allclose(dp, 0, atol=1e-12)
    assert rotation_angle(d_rot) < 1e-9
    # The operator moves 5 cm forward (+x of the glove world = +x of the base with yaw 0).
    ee = run(mapper, GLOVE_P + [0.05, 0, 0], GLOVE_R, (EE_P, EE_R), steps=10)
    np.testing.assert_allclose(ee[0], EE_P + [0.05, 0, 0], atol=1e-9)
    np.testing.assert_allclose(ee[1], EE_R, atol=1e-9)


def test_delta_is_expressed_in_the_current_ee_frame_and_step_limited() -> None:
    mapper = WristMapper(WristConfig(max_step_m=0.01))
    mapper.engage(GLOVE_P, GLOVE_R, EE_P, EE_R)
    dp, _ = mapper.step(GLOVE_P + [0, 0, 0.2], GLOVE_R, EE_P, EE_R)
    assert np.linalg.norm(dp) == pytest.approx(0.01)
    # Up in the base frame is -z in an EE frame rotated by π about x.
    np.testing.assert_allclose(dp, [0, 0, -0.01], atol=1e-12)


def test_rotation_follows_the_relative_hand_rotation() -> None:
    mapper = WristMapper(WristConfig(max_step_rad=0.05))
    mapper.engage(GLOVE_P, GLOVE_R, EE_P, EE_R)
    turn = axis_angle_matrix(np.array([0.0, 0.0, 1.0]), 0.4)  # operator turns the hand about world z
    dp, d_rot = mapper.step(GLOVE_P, turn @ GLOVE_R, EE_P, EE_R)
    assert rotation_angle(d_rot) == pytest.approx(0.05)
    ee = run(mapper, GLOVE_P, turn @ GLOVE_R, apply((EE_P, EE_R), dp, d_rot), steps=20)
    np.testing.assert_allclose(ee[1], turn @ EE_R, atol=1e-9)
    np.testing.assert_allclose(ee[0], EE_P, atol=1e-9)


def test_frame_yaw_rotates_glove_motion_into_the_base_frame() -> None:
    mapper = WristMapper(frame_yaw_rad=math.pi / 2)
    mapper.engage(GLOVE_P, GLOVE_R, EE_P, EE_R)
    ee = run(mapper, GLOVE_P + [0.03, 0, 0], GLOVE_R, (EE_P, EE_R), steps=10)
    np.testing.assert_allclose(ee[0], EE_P + [0, 0.03, 0], atol=1e-9)


def test_clutch_recentres_without_moving_the_robot() -> None:
    mapper = WristMapper()
    mapper.engage(GLOVE_P, GLOVE_R, EE_P, EE_R)
    ee = run(mapper, GLOVE_P + [0.04, 0, 0], GLOVE_R, (EE_P, EE_R), steps=10)
    mapper.disengage()
    # The operator moves the hand back 20 cm while disengaged: nothing moves.
    ee_after = run(mapper, GLOVE_P - [0.2, 0, 0], GLOVE_R, ee, steps=10)
    np.testing.assert_allclose(ee_after[0], ee[0])
    # Re-engaged there, the reference is the new hand pose: again no jump, then relative motion.
    mapper.engage(GLOVE_P - [0.2, 0, 0], GLOVE_R, *ee_after)
    ee_final = run(mapper, GLOVE_P - [0.2, 0, 0] + [0.02, 0, 0], GLOVE_R, ee_after, steps=10)
    np.testing.assert_allclose(ee_final[0], ee[0] + [0.02, 0, 0], atol=1e-9)


def test_reanchors_when_the_measured_pose_is_held_back() -> None:
    mapper = WristMapper(WristConfig(reanchor_distance_m=0.01))
    mapper.engage(GLOVE_P, GLOVE_R, EE_P, EE_R)
    for _ in range(10):  # the arm is blocked: the measured pose stays at EE_P
        mapper.step(GLOVE_P + [0.1, 0, 0], GLOVE_R, EE_P, EE_R)
    assert mapper.reanchors > 0
    commanded = mapper.commanded_pose
    assert commanded is not None and np.linalg.norm(commanded[0] - EE_P) <= 0.02  # no wind-up


def test_frame_yaw_from_hand_and_refusal_when_vertical() -> None:
    palm = yaw_matrix(0.3)
    assert frame_yaw_from_hand(palm) == pytest.approx(-0.3)
    with pytest.raises(ValueError):
        frame_yaw_from_hand(axis_angle_matrix(np.array([0.0, 1.0, 0.0]), -math.pi / 2))


def test_quaternion_round_trip() -> None:
    r = axis_angle_matrix(np.array([0.3, -0.4, 0.5]), 2.5)
    w, x, y, z = matrix_to_quat_wxyz(r)
    assert w >= 0
    np.testing.assert_allclose(quat_xyzw_to_matrix(np.array([x, y, z, w])), r, atol=1e-12)


def test_clutch_gesture_fires_once_per_hold() -> None:
    gesture = ClutchGesture(threshold_m=0.025, hold_s=0.5)
    touching = np.zeros((10, 3))
    touching[5] = [0.1, 0.05, -0.05]
    touching[9] = touching[5] + [0.01, 0, 0]
    apart = touching.copy()
    apart[9] = touching[5] + [0.08, 0, 0]
    fired = [gesture.update(touching, t) for t in np.arange(0.0, 2.0, 0.05)]
    assert sum(fired) == 1 and fired.index(True) >= 10
    assert not gesture.update(apart, 2.1)
    assert any(gesture.update(touching, t) for t in np.arange(2.2, 3.0, 0.05))
