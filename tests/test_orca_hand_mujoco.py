"""The ORCA driver commanding the simulated MuJoCo hand through the simulated Dynamixel bus:
the servos behind the pty are the hand's position actuators (docs/design.md §8)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from orca_hand_driver.calibration import Calibration, MotorLimits, save_calibration
from orca_hand_driver.hand import DriverConfig, OrcaHand
from orca_hand_driver.hand_model import load_hand_model, model_file
from sernf_sim.dynamixel_bus import JointSpaceBackend, SimulatedDynamixelBus
from sernf_sim.dynamixel_bus.mujoco_hand import MujocoHandJoints

CONFIG = Path(__file__).resolve().parents[1] / "src" / "orca_hand_driver" / "config"
MODEL = load_hand_model(model_file(CONFIG, "orca_v1_right"))
LOWER, UPPER = 1000, 3000  # calibrated motor limits (ticks) of every servo


def backend_matching_calibration(joints: MujocoHandJoints, by_motor: list[int]) -> JointSpaceBackend:
    """The hand's tendons and gears: servo ticks ↔ joint angle, the linear map the calibration
    of this hand recorded (a real hand's calibration measures exactly this relation). Servo k of
    the bus is motor id k+1, i.e. joint ``by_motor[k]`` of the hand model."""
    ordered = [MODEL.joints[i] for i in by_motor]
    lower = np.array([j.lower for j in ordered])
    upper = np.array([j.upper for j in ordered])
    inverted = np.array([j.inverted for j in ordered])
    ratio = (UPPER - LOWER) / (upper - lower)
    zero = np.where(inverted, LOWER + upper * ratio, LOWER - lower * ratio)
    return JointSpaceBackend(joints, zero, ratio, np.where(inverted, -1.0, 1.0))


@pytest.fixture
def hand_on_mujoco(tmp_path: Path):
    calibration = tmp_path / "orca_v1_right.calibration.yaml"
    save_calibration(calibration, Calibration(MODEL.name, MODEL.fingerprint(),
                                              {j.name: MotorLimits(j.motor, LOWER, UPPER) for j in MODEL.joints}), MODEL)
    # Servo k of the bus is motor id k+1; the hand model maps joints to motor ids.
    by_motor = sorted(range(len(MODEL.joints)), key=lambda i: MODEL.joints[i].motor)
    assert [MODEL.joints[i].motor for i in by_motor] == list(range(1, 18))
    # Servos map to simulated joints by name; the others are first-order servos in their range.
    ordered = [MODEL.joints[i] for i in by_motor]
    joints_by_motor = MujocoHandJoints([j.name for j in ordered],
                                       free_ranges=([j.lower for j in ordered], [j.upper for j in ordered]))
    with SimulatedDynamixelBus(backend=backend_matching_calibration(joints_by_motor, by_motor)) as bus:
        hand = OrcaHand(DriverConfig(port=bus.port, calibration_file=str(calibration), config_dir=str(CONFIG),
                                     read_timeout_ms=60.0, max_step_rad=0.1), CONFIG)
        hand.configure()
        hand.activate(time.monotonic())
        yield hand, joints_by_motor, by_motor
        hand.cleanup(torque_off=True)


def test_driver_moves_the_simulated_fingers(hand_on_mujoco):
    hand, joints, by_motor = hand_on_mujoco
    names_by_motor = [MODEL.joints[i].name for i in by_motor]
    wanted = {"index_mcp": 1.0, "index_pip": 0.8, "middle_abd": 0.2, "ring_mcp": 0.5, "thumb_abd": 0.3,
              "thumb_mcp": 0.4}
    # Only joints the simulated hand has (by name); several of them, whatever its shape.
    target = {n: v for n, v in wanted.items() if n in joints.mapping.sim_joint_names}
    assert len(target) >= 4, f"the simulated hand lacks the ORCA joints {sorted(wanted)}"
    deadline = time.monotonic() + 20.0
    reached = False
    while time.monotonic() < deadline and not reached:
        now = time.monotonic()
        hand.command(list(target), list(target.values()), now)
        report = hand.cycle(now)
        assert not report.fatal
        q = joints.joint_positions()
        reached = all(abs(q[names_by_motor.index(n)] - v) < 0.05 for n, v in target.items())
        time.sleep(0.025)
    q = joints.joint_positions()
    errors = {n: round(float(q[names_by_motor.index(n)] - v), 3) for n, v in target.items()}
    assert reached, f"simulated joints did not reach the commanded angles: errors {errors}"
    # What the driver reports is the simulated hand's state, through ticks and calibration.
    measured = hand.last_report.positions  # joint order of the hand model
    for n, v in target.items():
        assert abs(measured[list(MODEL.joint_names).index(n)] - v) < 0.08, n
    # Servos without a simulated joint of their name are plain first-order servos.
    for name in joints.mapping.free_servos:
        assert np.isnan(q[names_by_motor.index(name)]), name
