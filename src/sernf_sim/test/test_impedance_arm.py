"""The simulated impedance-controlled arm's core: spring-damper motion, reflexes, recovery."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sernf_sim.hand_pick_place import rotations as R
from sernf_sim.impedance_arm import FreeBody, ImpedanceArm, ImpedanceArmConfig

DOWN = np.array([0.0, 1.0, 0.0, 0.0])


def make_arm(**overrides) -> ImpedanceArm:
    cfg = ImpedanceArmConfig(**overrides)
    return ImpedanceArm(cfg, FreeBody(np.array([0.5, 0.0, 0.4]), DOWN, cfg.mass, cfg.inertia))


def test_converges_to_the_equilibrium_without_overshoot() -> None:
    arm = make_arm(target_filter_time_constant_s=0.05)
    q_goal = R.mul(DOWN, R.from_rotvec(np.array([0.0, 0.0, 0.3])))
    arm.set_equilibrium(np.array([0.55, 0.02, 0.35]), q_goal)
    xs = []
    for _ in range(300):  # 3 s
        arm.step(0.01)
        xs.append(arm.body.pose()[0][0])
    p, q = arm.body.pose()
    np.testing.assert_allclose(p, [0.55, 0.02, 0.35], atol=1e-3)
    assert R.angle(R.mul(R.conj(q_goal), q)) < 1e-2
    assert max(xs) < 0.55 + 1e-3  # critically damped: no overshoot
    assert xs[10] < 0.53  # filtered + spring: not a jump


def test_reflex_stops_and_ignores_equilibria_until_recovered() -> None:
    arm = make_arm(target_filter_time_constant_s=0.0)
    arm.set_equilibrium(np.array([0.6, 0.0, 0.4]), DOWN)
    arm.step(0.1)
    arm.inject_reflex()
    stopped_at = arm.body.pose()[0]
    assert not arm.set_equilibrium(np.array([0.7, 0.0, 0.4]), DOWN)
    arm.step(0.5)
    np.testing.assert_allclose(arm.body.pose()[0], stopped_at)
    assert arm.equilibria_ignored == 1 and arm.reflexes == 1
    arm.recover()
    assert not arm.error and arm.recoveries_without_error == 0
    arm.step(0.5)  # restarts from the current pose, not toward the pre-reflex target
    np.testing.assert_allclose(arm.body.pose()[0], stopped_at, atol=1e-9)


def test_recovery_without_an_error_is_counted() -> None:
    arm = make_arm()
    arm.recover()
    assert arm.recoveries == 1 and arm.recoveries_without_error == 1


def test_target_quaternion_sign_does_not_matter() -> None:
    arm = make_arm(target_filter_time_constant_s=0.0)
    arm.set_equilibrium(np.array([0.5, 0.0, 0.4]), -DOWN)
    for _ in range(100):
        arm.step(0.01)
    assert R.angle(R.mul(R.conj(DOWN), arm.body.pose()[1])) < 1e-6


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="translational_stiffness"):
        ImpedanceArmConfig(translational_stiffness=-1.0)
    with pytest.raises(ValueError, match="damping_ratio"):
        ImpedanceArmConfig(damping_ratio=math.nan)
