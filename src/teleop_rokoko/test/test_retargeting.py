"""Retargeting on the Studio Live stand-in's synthetic hands (through the real packet parser)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sernf_sim import studio_live_sender as stand_in
from teleop_rokoko.hand_kinematics import (
    ORCA_V1_RIGHT_RANGES_DEG,
    HandKinematics,
    load_hand_joints,
)
from teleop_rokoko.retargeting import (
    HumanHand,
    OperatorCalibration,
    Retargeter,
    calibrate,
    human_hand,
)
from teleop_rokoko.studio_live import parse_packet

REPO = Path(__file__).resolve().parents[3]
JOINTS = load_hand_joints()
FLEXION = [n for n in JOINTS.names if n.endswith(("_mcp", "_pip")) and not n.startswith("thumb")]


def operator_hand(pose: str | stand_in.HandPose, side: str = "right") -> HumanHand:
    """A scripted pose sent as a Studio Live packet, parsed as the node parses it."""
    hand_pose = stand_in.hand_pose(pose) if isinstance(pose, str) else pose
    wrist_rot = stand_in._rot((0, 0, 1), 0.7) @ stand_in._rot((1, 0, 0), 0.4)  # any wrist pose
    packet = stand_in.make_packet(hand_pose, np.array([0.3, -0.1, 1.0]), wrist_rot, 0.0)
    if side == "left":  # put the pose on the left glove instead
        bones = stand_in.hand_bones(hand_pose, np.array([0.3, 0.2, 1.0]), wrist_rot, "left")
        body = packet["scene"]["actors"][0]["body"]
        body.update({k: stand_in._studio_bone(*v) for k, v in bones.items()})
    frame = parse_packet(json.dumps(packet).encode())
    return human_hand(frame.hand(side), side)


def settle(retargeter: Retargeter, hand: HumanHand, frames: int = 8) -> np.ndarray:
    """Feed the same frame a few times (as a held pose streams at 60 fps)."""
    for _ in range(frames):
        q = retargeter.retarget(hand)
    return q


def test_kinematics_jacobian_matches_finite_differences() -> None:
    kin = HandKinematics(JOINTS)
    q = np.random.default_rng(1).uniform(JOINTS.lower, JOINTS.upper)
    points, jac = kin.points_and_jacobian(q)
    eps = 1e-6
    for j in range(len(q)):
        dq = np.zeros_like(q)
        dq[j] = eps
        np.testing.assert_allclose((kin.points(q + dq) - points) / eps, jac[:, :, j], atol=1e-5)


def test_flat_hand_gives_extended_fingers() -> None:
    q = settle(Retargeter(JOINTS), operator_hand("open"))
    for name in FLEXION:
        assert abs(q[JOINTS.index(name)]) < np.radians(15), (name, np.degrees(q[JOINTS.index(name)]))


def test_fist_gives_flexed_fingers() -> None:
    q = settle(Retargeter(JOINTS), operator_hand("fist"))
    for name in FLEXION:
        assert q[JOINTS.index(name)] > np.radians(60), (name, np.degrees(q[JOINTS.index(name)]))


def test_pinch_brings_thumb_and_index_tips_together() -> None:
    retargeter = Retargeter(JOINTS)
    open_tips = retargeter.kin.points(settle(retargeter, operator_hand("open")))
    pinch_tips = retargeter.kin.points(settle(retargeter, operator_hand("pinch")))
    gap_open = np.linalg.norm(open_tips[5] - open_tips[6])
    gap_pinch = np.linalg.norm(pinch_tips[5] - pinch_tips[6])
    assert gap_open > 0.06
    assert gap_pinch < 0.01, f"robot thumb-index gap {gap_pinch * 1000:.1f} mm in a pinch"


def test_left_glove_drives_the_right_hand_as_its_mirror_image() -> None:
    right, left = operator_hand("pinch", "right"), operator_hand("pinch", "left")
    np.testing.assert_allclose(left.points, right.points, atol=1e-5)


def test_outputs_always_within_limits_even_for_wild_input() -> None:
    retargeter = Retargeter(JOINTS)
    rng = np.random.default_rng(0)
    base = operator_hand("open").points
    for _ in range(60):
        wild = base * rng.uniform(0.2, 3.0) + rng.normal(0.0, 0.08, base.shape)
        q = retargeter.retarget(wild)
        assert np.all(q >= JOINTS.lower - 1e-12) and np.all(q <= JOINTS.upper + 1e-12)
        assert np.all(np.isfinite(q))
    with pytest.raises(ValueError):
        retargeter.retarget(np.full((10, 3), np.nan))


def test_warm_start_tracks_a_motion_smoothly() -> None:
    retargeter = Retargeter(JOINTS)
    open_pose, fist = stand_in.hand_pose("open"), stand_in.hand_pose("fist")
    previous = settle(retargeter, operator_hand(open_pose))
    for w in np.linspace(0.0, 1.0, 40):  # ~0.7 s of closing at 60 fps
        q = retargeter.retarget(operator_hand(open_pose.blend(fist, w)))
        assert np.max(np.abs(q - previous)) < np.radians(20)
        previous = q


def test_operator_calibration_round_trip_and_effect(tmp_path: Path) -> None:
    retargeter = Retargeter(JOINTS)
    # An operator with a 15 % smaller hand than the synthetic one.
    flat, fist = operator_hand("open").points * 0.85, operator_hand("fist").points * 0.85
    calibration = calibrate(retargeter, flat, fist, operator="ada")
    assert calibration.scale == pytest.approx(1.0 / 0.85 * _base_scale(), rel=0.05)
    path = tmp_path / "ada.yaml"
    calibration.save(path)
    loaded = OperatorCalibration.load(path)
    assert loaded == calibration
    calibrated = Retargeter(JOINTS, calibration=loaded)
    q_fist = settle(calibrated, fist, frames=12)
    for name in FLEXION:
        j = JOINTS.index(name)
        assert q_fist[j] > 0.75 * JOINTS.upper[j], (name, np.degrees(q_fist[j]))
    q_flat = settle(calibrated, flat, frames=12)
    for name in FLEXION:
        assert abs(q_flat[JOINTS.index(name)]) < np.radians(10)


def _base_scale() -> float:
    """The least-squares scale between the robot's and the synthetic hand's flat poses."""
    robot = HandKinematics(JOINTS).points(np.zeros(len(JOINTS.names)))
    human = operator_hand("open").points
    return float(np.sum(robot * human) / np.sum(human * human))


def test_invalid_calibration_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        OperatorCalibration(scale=float("nan"))
    with pytest.raises(ValueError):
        OperatorCalibration(joint_names=["index_mcp"], gain=[1.0], offset=[])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just a list\n")
    with pytest.raises(ValueError):
        OperatorCalibration.load(bad)


def test_builtin_joint_table_is_orca_v1_right() -> None:
    assert JOINTS.names == tuple(ORCA_V1_RIGHT_RANGES_DEG)
    assert len(JOINTS.names) == 17
    np.testing.assert_allclose(np.degrees(JOINTS.upper[JOINTS.index("index_mcp")]), 95)


def test_driver_hand_model_file_is_read_when_present() -> None:
    path = REPO / "src" / "orca_hand_driver" / "config" / "orca_v1_right.yaml"
    if not path.exists():
        pytest.skip("the hand driver's model file is not in this checkout")
    from_file = load_hand_joints(path)
    assert set(from_file.names) == set(JOINTS.names)
    for name in JOINTS.names:
        assert from_file.lower[from_file.index(name)] == pytest.approx(JOINTS.lower[JOINTS.index(name)])
        assert from_file.upper[from_file.index(name)] == pytest.approx(JOINTS.upper[JOINTS.index(name)])


def test_hand_model_file_layouts(tmp_path: Path) -> None:
    names = list(ORCA_V1_RIGHT_RANGES_DEG)
    orca_core = tmp_path / "orca_core.yaml"
    orca_core.write_text(json.dumps({"joint_ids": names, "joint_roms": ORCA_V1_RIGHT_RANGES_DEG}))
    assert load_hand_joints(orca_core).names == tuple(names)
    missing = tmp_path / "missing.yaml"
    missing.write_text(json.dumps({"joints": [{"name": "wrist", "range_deg": [-50, 30]}]}))
    with pytest.raises(ValueError, match="lacks joints"):
        load_hand_joints(missing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: nothing\n")
    with pytest.raises(ValueError, match="no joint table"):
        load_hand_joints(empty)
