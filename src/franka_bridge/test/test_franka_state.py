"""Robot-state conversions of the relays: O_T_EE -> pose, robot mode -> error flag."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from franka_bridge import franka_state as fs


def test_pose_from_o_t_ee_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    rotations = [Rotation.random(random_state=rng) for _ in range(50)]
    rotations += [Rotation.from_euler("x", np.pi), Rotation.from_euler("y", np.pi), Rotation.from_euler("z", np.pi),
                  Rotation.identity()]  # each pivot of Shepperd's method
    for rot in rotations:
        t = np.eye(4)
        t[:3, :3] = rot.as_matrix()
        t[:3, 3] = rng.normal(size=3)
        p, q = fs.pose_from_o_t_ee(t.T.reshape(-1))  # column-major, as libfranka stores it
        np.testing.assert_allclose(p, t[:3, 3])
        expected = rot.as_quat(scalar_first=True)
        assert abs(abs(np.dot(q, expected)) - 1.0) < 1e-9


def test_o_t_ee_validation() -> None:
    with pytest.raises(ValueError):
        fs.pose_from_o_t_ee([0.0] * 15)
    with pytest.raises(ValueError):
        fs.pose_from_o_t_ee([float("nan")] * 16)


def test_error_modes() -> None:
    assert fs.robot_mode_is_error(fs.ROBOT_MODE_REFLEX)
    assert fs.robot_mode_is_error(fs.ROBOT_MODE_USER_STOPPED)
    for mode in (fs.ROBOT_MODE_IDLE, fs.ROBOT_MODE_MOVE, fs.ROBOT_MODE_GUIDING,
                 fs.ROBOT_MODE_AUTOMATIC_ERROR_RECOVERY, fs.ROBOT_MODE_OTHER):
        assert not fs.robot_mode_is_error(mode)


def test_ros1_relay_uses_these_conversions() -> None:
    # tools/ros1/franka_state_relay.py runs on the ROS 1 machine from a checkout; without rospy
    # it must still import (ROS 1 is only touched in main()) and find the bridge's conversions.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "tools" / "ros1" / "franka_state_relay.py"
    spec = importlib.util.spec_from_file_location("franka_state_relay", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pose_from_o_t_ee is fs.pose_from_o_t_ee or \
        module.pose_from_o_t_ee.__code__.co_code == fs.pose_from_o_t_ee.__code__.co_code
    assert module.robot_mode_is_error(fs.ROBOT_MODE_REFLEX)
