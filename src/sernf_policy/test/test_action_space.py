"""ActionSpace: layout validation, clipping to limits, and the hold action."""

from __future__ import annotations

import numpy as np
import pytest

from sernf_policy.action_space import ARM_DIM_NAMES, ActionSpace, ActionSpaceConfig

HAND = ("thumb", "index", "middle")


def space(**kw) -> ActionSpace:
    cfg = dict(
        arm_index=0, hand_index=7, hand_joint_names=HAND,
        hand_lower=(-1.0, 0.0, 0.0), hand_upper=(1.0, 1.5, 1.5),
        arm_max_translation_m=0.02, arm_max_rotation_rad=0.1, hand_max_step_rad=0.3,
    )
    cfg.update(kw)
    return ActionSpace(ActionSpaceConfig(**cfg))


def quat_angle(q: np.ndarray) -> float:
    return float(2 * np.arctan2(np.linalg.norm(q[1:]), abs(q[0])))


def test_layout_and_names():
    s = space()
    assert s.action_dim == 10
    assert s.names == [*ARM_DIM_NAMES, *HAND]
    hand_first = space(arm_index=3, hand_index=0)
    assert hand_first.names[:3] == list(HAND) and hand_first.names[3:] == list(ARM_DIM_NAMES)
    assert ActionSpace(ActionSpaceConfig()).action_dim == 7  # default: arm only


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(hand_index=8), "cover 0..A-1"),
        (dict(hand_index=5), "cover 0..A-1"),
        (dict(arm_index=-1, hand_index=-1, hand_joint_names=(), hand_lower=(), hand_upper=()), "arm or a hand"),
        (dict(hand_lower=(0.0, 0.0)), "limits"),
        (dict(hand_lower=(2.0, 0.0, 0.0)), "lower <= upper"),
        (dict(hand_joint_names=("a", "a", "b")), "unique"),
        (dict(hand_index=-1), "hand_index is -1"),
        (dict(arm_max_translation_m=-1.0), "arm_max_translation_m"),
        (dict(arm_max_rotation_rad=4.0), "pi"),
        (dict(arm_index=True), "arm_index"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        space(**kw)


def test_clip_within_limits_is_unchanged():
    s = space()
    a = np.array([0.01, 0, 0, 1, 0, 0, 0, 0.1, 0.5, 0.5], np.float32)
    out, report = s.clip(a, previous_hand=np.array([0.1, 0.5, 0.5]))
    np.testing.assert_allclose(out, a, atol=1e-7)
    assert not report.any


def test_clip_arm_translation_rotation_and_quaternion_normalization():
    s = space()
    angle = 0.5
    q = np.array([np.cos(angle / 2), 0, 0, np.sin(angle / 2)]) * 3.0  # not unit, too far
    a = np.array([0.1, 0.0, 0.0, *q, 0, 0, 0], np.float32)
    out, report = s.clip(a)
    assert report.translation_clipped and report.rotation_clipped
    np.testing.assert_allclose(out[:3], [0.02, 0, 0], atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(out[3:7]), 1.0, atol=1e-6)
    assert quat_angle(out[3:7]) == pytest.approx(0.1, abs=1e-5)
    np.testing.assert_allclose(out[4:6], 0.0, atol=1e-7)
    assert out[6] > 0  # same axis (z)


def test_clip_negative_w_quaternion_is_the_same_rotation_and_zero_quaternion_is_identity():
    s = space(arm_max_rotation_rad=np.pi)
    q = -np.array([np.cos(0.05), np.sin(0.05), 0, 0])
    out, _ = s.clip(np.array([0, 0, 0, *q, 0, 0, 0], np.float32))
    np.testing.assert_allclose(out[3:7], -q, atol=1e-6)
    out, report = s.clip(np.zeros(10, np.float32))
    assert report.quaternion_degenerate
    np.testing.assert_array_equal(out[3:7], [1, 0, 0, 0])


def test_clip_hand_limits_and_rate_limit():
    s = space()
    a = np.array([0, 0, 0, 1, 0, 0, 0, -5.0, 1.0, 0.2], np.float32)
    out, report = s.clip(a)  # no previous command: limits only
    np.testing.assert_allclose(out[7:], [-1.0, 1.0, 0.2])
    assert report.hand_limit_clipped == 1 and report.hand_rate_limited == 0
    out, report = s.clip(a, previous_hand=np.array([0.0, 0.2, 0.2]))
    np.testing.assert_allclose(out[7:], [-0.3, 0.5, 0.2], atol=1e-6)
    assert report.hand_rate_limited == 2
    no_rate = space(hand_max_step_rad=0.0)
    out, _ = no_rate.clip(a, previous_hand=np.array([0.0, 0.2, 0.2]))
    np.testing.assert_allclose(out[7:], [-1.0, 1.0, 0.2])


def test_clip_rejects_bad_input():
    s = space()
    with pytest.raises(ValueError, match="non-finite"):
        s.clip(np.full(10, np.nan))
    with pytest.raises(ValueError, match=r"\[A\]"):
        s.clip(np.zeros(9))


def test_hold_keeps_the_last_hand_target_else_the_measured_positions():
    s = space()
    last = np.array([0.01, 0.0, 0.0, 1, 0, 0, 0, 0.3, 1.2, 0.4], np.float32)
    hold = s.hold(last_command=last, hand_positions=np.array([0.0, 0.9, 0.1]))
    np.testing.assert_array_equal(hold[:7], [0, 0, 0, 1, 0, 0, 0])  # no arm motion
    np.testing.assert_array_equal(hold[7:], last[7:])  # keep the grip target
    hold = s.hold(hand_positions=np.array([0.0, 2.0, 0.1]))
    np.testing.assert_allclose(hold[7:], [0.0, 1.5, 0.1])  # measured, inside the limits
    with pytest.raises(ValueError, match="no hand target"):
        s.hold()
    arm_only = ActionSpace(ActionSpaceConfig())
    np.testing.assert_array_equal(arm_only.hold(), [0, 0, 0, 1, 0, 0, 0])
    # The hold action is a fixed point of clipping.
    out, report = s.clip(s.hold(last_command=last), previous_hand=last[7:])
    np.testing.assert_array_equal(out, s.hold(last_command=last))
    assert not report.any
