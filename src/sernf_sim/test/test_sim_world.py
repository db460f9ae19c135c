"""The simulated world's core (sernf_sim.sim_world) without ROS: frames, the servos' tick
mapping against the ORCA driver's calibration, camera intrinsics, episode bookkeeping, and the
driver core commanding the world's fingers through the pty."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pytest

from orca_hand_driver.calibration import Calibration, JointMapping, MotorLimits, load_calibration
from orca_hand_driver.hand import DriverConfig, OrcaHand
from orca_hand_driver.hand_model import load_hand_model, model_file
from sernf_sim.episodes import SUBTASKS, EpisodeBook, end_reason, layout
from sernf_sim.hand_pick_place import model as hand_model
from sernf_sim.hand_pick_place import rotations as R
from sernf_sim.sim_world import (
    BaseFrame,
    ServoCalibration,
    SimWorld,
    SimWorldConfig,
    WeldArm,
    camera_intrinsics,
    create_bus_link,
    remove_bus_link,
    write_driver_calibration,
)

CONFIG = Path(__file__).resolve().parents[2] / "orca_hand_driver" / "config"
MODEL = load_hand_model(model_file(CONFIG, "orca_v1_right"))
DOWN = np.array([0.0, 1.0, 0.0, 0.0])


def make_world(tmp_path: Path, **overrides) -> SimWorld:
    cfg = SimWorldConfig(bus_link=str(tmp_path / "bus"), image_size=32, **overrides)
    return SimWorld(cfg, list(MODEL.joints))


# -- frames ---------------------------------------------------------------------------------------

def test_default_base_frame_puts_the_home_pose_where_a_franka_has_it():
    frame = BaseFrame.from_tuple(SimWorldConfig().base_in_world)
    p, q = frame.to_base(np.array(hand_model.HAND_HOME_POS), np.array(hand_model.HAND_HOME_QUAT))
    np.testing.assert_allclose(p, [0.5, 0.0, 0.4], atol=1e-12)
    assert abs(abs(float(np.dot(q, DOWN))) - 1.0) < 1e-12  # pointing down, as franka's default


def test_base_frame_round_trip_with_rotation():
    yaw = R.from_yaw(np.array(0.7))
    frame = BaseFrame.from_tuple([0.1, -0.2, 0.3, *yaw])
    p_base, q_base = np.array([0.4, 0.1, 0.2]), R.normalize(np.array([0.3, 0.9, -0.2, 0.1]))
    p_w, q_w = frame.to_world(p_base, q_base)
    # Independently: rotate by the yaw about z, then translate.
    c, s = math.cos(0.7), math.sin(0.7)
    np.testing.assert_allclose(p_w, [0.1 + c * 0.4 - s * 0.1, -0.2 + s * 0.4 + c * 0.1, 0.5], atol=1e-12)
    p_back, q_back = frame.to_base(p_w, q_w)
    np.testing.assert_allclose(p_back, p_base, atol=1e-12)
    assert abs(abs(float(np.dot(q_back, q_base))) - 1.0) < 1e-12
    with pytest.raises(ValueError, match="unit"):
        BaseFrame.from_tuple([0, 0, 0, 2.0, 0, 0, 0])
    with pytest.raises(ValueError, match="7 finite"):
        BaseFrame.from_tuple([0, 0, 0])


def test_weld_arm_filters_holds_in_reflex_and_restarts_from_the_current_pose():
    frame = BaseFrame.from_tuple(SimWorldConfig().base_in_world)
    home = np.r_[hand_model.HAND_HOME_POS, hand_model.HAND_HOME_QUAT]
    arm = WeldArm(frame, home, filter_time_constant_s=0.05)
    assert arm.set_equilibrium(np.array([0.52, 0.0, 0.4]), DOWN)  # 2 cm along base x = world x
    target = arm.advance(0.05, home)
    # One time constant: 1 - 1/e of the way.
    assert target[0] == pytest.approx(0.02 * (1 - math.exp(-1)), rel=1e-9)
    for _ in range(40):
        target = arm.advance(0.01, home)
    assert target[0] == pytest.approx(0.02, abs=1e-4)
    measured = np.r_[0.011, 0.0, 0.22, hand_model.HAND_HOME_QUAT]
    arm.advance(0.01, measured)
    arm.inject_reflex()
    assert arm.error and arm.reflexes == 1
    assert not arm.set_equilibrium(np.array([0.6, 0.0, 0.4]), DOWN)
    np.testing.assert_allclose(arm.advance(0.5, measured), measured)  # frozen where it stood
    arm.recover()
    assert not arm.error and arm.recoveries == 1
    np.testing.assert_allclose(arm.advance(0.5, measured), measured)  # no jump toward old targets
    arm.recover()
    assert arm.recoveries_without_error == 1


# -- servos -----------------------------------------------------------------------------------------

def test_servo_ticks_match_the_driver_calibration():
    lower = np.array([j.lower for j in MODEL.joints])
    upper = np.array([j.upper for j in MODEL.joints])
    inverted = np.array([j.inverted for j in MODEL.joints])
    cal = ServoCalibration.from_ranges(lower, upper, inverted, 1000, 3000)
    # The range ends land on the calibrated hard stops (inverted servos the other way round).
    np.testing.assert_allclose(cal.to_ticks(lower), np.where(inverted, 3000, 1000))
    np.testing.assert_allclose(cal.to_ticks(upper), np.where(inverted, 1000, 3000))
    # ... and every angle maps as the driver maps it.
    driver = JointMapping(MODEL, Calibration(MODEL.name, MODEL.fingerprint(),
                                             {j.name: MotorLimits(j.motor, 1000, 3000) for j in MODEL.joints}))
    q = lower + (upper - lower) * np.linspace(0.1, 0.9, len(lower))
    np.testing.assert_allclose(cal.to_ticks(q), driver.to_ticks(q), atol=0.5)
    np.testing.assert_allclose(cal.to_joints(cal.to_ticks(q)), q, atol=1e-12)


def test_servos_map_to_simulated_joints_by_name(tmp_path):
    world = make_world(tmp_path)
    try:
        sim_names = [s.name for s in hand_model.FINGER_JOINTS]
        mapping = world.servo_map
        assert mapping.servo_names == list(MODEL.joint_names)
        for name, index in zip(mapping.servo_names, mapping.sim_index, strict=True):
            assert (sim_names[index] == name) if index >= 0 else (name not in sim_names)
        assert mapping.mapped.sum() >= 8  # index, middle, ring flexion/abduction at least
        assert world.bus.servo_ids == tuple(j.motor for j in MODEL.joints)
    finally:
        world.close()


def test_calibration_file_for_the_driver(tmp_path):
    path = tmp_path / "hand.calibration.yaml"
    assert "written" in write_driver_calibration(path, MODEL, 1000, 3000)
    cal = load_calibration(path, MODEL)
    assert cal.limits["index_mcp"] == MotorLimits(15, 1000, 3000)
    assert "already matches" in write_driver_calibration(path, MODEL, 1000, 3000)
    assert "replaced" in write_driver_calibration(path, MODEL, 500, 3500)
    assert load_calibration(path, MODEL).limits["wrist"] == MotorLimits(17, 500, 3500)
    assert list(tmp_path.glob("hand.calibration.yaml.bak-*"))


def test_driver_core_moves_the_world_fingers(tmp_path):
    """The ORCA driver's own core on the world's pty: the world's finger joints reach the
    commanded angles (by name) and the driver reads them back through ticks."""
    world = make_world(tmp_path)
    calibration = tmp_path / "cal.yaml"
    write_driver_calibration(calibration, MODEL, 1000, 3000)
    hand = OrcaHand(DriverConfig(port=world.bus.port, calibration_file=str(calibration), config_dir=str(CONFIG),
                                 read_timeout_ms=60.0, max_step_rad=0.1), CONFIG)
    try:
        hand.configure()
        hand.activate(time.monotonic())
        sim_names = [s.name for s in hand_model.FINGER_JOINTS]
        ranges = {s.name: s.range for s in hand_model.FINGER_JOINTS}
        wanted = {"index_mcp": 1.0, "middle_mcp": 0.6, "ring_pip": 0.5, "index_abd": 0.15}
        target = {n: min(max(v, ranges[n][0]), ranges[n][1]) for n, v in wanted.items() if n in sim_names}
        assert len(target) >= 3
        deadline = time.monotonic() + 20.0
        reached = False
        while time.monotonic() < deadline and not reached:
            now = time.monotonic()
            hand.command(list(target), list(target.values()), now)
            assert not hand.cycle(now).fatal
            world.advance(0.02)  # the world's physics, as the node's timer runs it
            q, _, _ = world.env.finger_state(0)
            reached = all(abs(q[sim_names.index(n)] - v) < 0.05 for n, v in target.items())
            time.sleep(0.005)
        q, _, _ = world.env.finger_state(0)
        assert reached, {n: round(float(q[sim_names.index(n)] - v), 3) for n, v in target.items()}
        measured = hand.last_report.positions
        for n, v in target.items():
            assert abs(measured[list(MODEL.joint_names).index(n)] - v) < 0.08, n
        # An injected overload latches the servo's hardware error (the driver reboots it).
        servo = MODEL.joints[list(MODEL.joint_names).index("index_mcp")].motor
        world.inject_servo_overload(servo)
        assert world.bus.register(servo, 70, 1) == 0x20
        with pytest.raises(ValueError, match="no servo 99"):
            world.inject_servo_overload(99)
    finally:
        hand.cleanup(torque_off=True)
        world.close()


# -- cameras ----------------------------------------------------------------------------------------

def test_camera_intrinsics_from_fovy():
    cam = camera_intrinsics(90.0, 64, 64)
    assert cam.fx == pytest.approx(32.0) and cam.fy == pytest.approx(32.0)
    assert (cam.cx, cam.cy) == (31.5, 31.5)
    # A ray at half the field of view hits the image's top edge (pixel centre 0 is 0.5 below it).
    assert cam.cy - cam.fy * math.tan(math.radians(45.0)) == pytest.approx(-0.5)
    assert cam.k == pytest.approx([32.0, 0.0, 31.5, 0.0, 32.0, 31.5, 0.0, 0.0, 1.0])
    assert cam.p[3] == 0.0 and cam.p[:3] == cam.k[:3]
    with pytest.raises(ValueError):
        camera_intrinsics(0.0, 64, 64)


def test_world_renders_its_cameras(tmp_path):
    world = make_world(tmp_path)
    try:
        assert set(world.intrinsics) == {"front", "under", "left"}
        fovy = world.env.model.cam_fovy[world.env.model.camera("wrist").id]
        assert world.intrinsics["left"] == camera_intrinsics(float(fovy), 32, 32)
        frames = {name: world.render(name) for name in world.cameras}
        for image in frames.values():
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.std() > 1.0
        assert not np.array_equal(frames["front"], frames["under"])
    finally:
        world.close()
    with pytest.raises(ValueError, match="not cameras"):
        SimWorld(dataclasses.replace(SimWorldConfig(bus_link=str(tmp_path / "b")), camera_sources=("front", "nope", "wrist")),
                 list(MODEL.joints))


# -- episodes ---------------------------------------------------------------------------------------

def test_episode_book_rules():
    book = EpisodeBook(seed=3)
    book.start()
    assert book.episode_id == "sim-3-00001" and book.running
    assert [book.reward_subtask() for _ in range(3)] == [*SUBTASKS, SUBTASKS[-1]]
    book.end(10.0, auto_reset=True, reset_delay_s=0.5)
    assert not book.reset_due(10.4) and book.reset_due(10.5)
    book.start()
    assert book.rewards_in_episode == 0 and book.episode_id == "sim-3-00002"
    book.end(11.0, auto_reset=False, reset_delay_s=0.5)
    assert not book.reset_due(100.0)
    assert layout(-1) == (None, "reset")
    configs, reason = layout(2)
    assert reason == "test_config_2" and len(configs) == 1
    with pytest.raises(ValueError):
        layout(10)
    assert end_reason("", True) == "time_limit" and end_reason("success", False) == "success"


def test_world_runs_episodes_on_simulated_time(tmp_path):
    world = make_world(tmp_path, max_steps=5, first_episode_after_s=0.3, reset_delay_s=0.2, reset_config=1)
    try:
        events = []
        start_pose = world.env.ee_pose()[0]
        for _ in range(130):  # 1.3 s of simulated time: the second episode still runs
            events += world.advance(0.01)
        kinds = [(e.kind, e.reason) for e in events]
        assert kinds[:3] == [("start", "test_config_1"), ("end", "time_limit"), ("start", "test_config_1")]
        start, end, restart = events[:3]
        # Control periods of 0.1 s of simulated time: the first start on the first boundary at
        # or after 0.3 s, the end after max_steps periods, the restart reset_delay_s later.
        assert start.sim_time == pytest.approx(0.3, abs=1e-9)
        assert end.sim_time == pytest.approx(0.8, abs=1e-9)
        assert restart.sim_time == pytest.approx(1.0, abs=1e-9)
        assert world.counters.control_steps >= 5 and world.counters.episodes_started >= 2
        assert start.episode_id == "sim-0-00001" and restart.episode_id == "sim-0-00002"
        # The reset re-laid the scene but did not teleport the robot.
        np.testing.assert_allclose(world.env.ee_pose()[0][:3], start_pose[:3], atol=5e-3)
        np.testing.assert_allclose(world.env.target_xy[0], world.env.test_configs()[1].target_xy)
        # A manual reset while an episode runs aborts it first.
        manual = world.start_episode(-1)
        assert [e.kind for e in manual] == ["abort", "start"] and manual[1].reason == "reset"
    finally:
        world.close()


def test_equilibrium_moves_the_hand_through_the_weld(tmp_path):
    world = make_world(tmp_path)
    try:
        p0, q0 = world.flange_pose_base()
        np.testing.assert_allclose(p0, [0.5, 0.0, 0.4], atol=5e-3)
        world.arm.set_equilibrium(p0 + np.array([0.0, 0.03, -0.02]), q0)
        for _ in range(100):
            world.advance(0.01)
        p1, _ = world.flange_pose_base()
        np.testing.assert_allclose(p1 - p0, [0.0, 0.03, -0.02], atol=3e-3)
    finally:
        world.close()


def test_bus_link_is_a_symlink_and_never_replaces_a_file(tmp_path):
    link = tmp_path / "dev" / "orca"
    create_bus_link(link, "/dev/pts/99")
    assert link.is_symlink() and str(link.readlink()) == "/dev/pts/99"
    create_bus_link(link, "/dev/pts/98")  # a stale link of an earlier run is replaced
    assert not remove_bus_link(link, "/dev/pts/99")  # not ours any more
    assert remove_bus_link(link, "/dev/pts/98") and not link.exists()
    link.write_text("a real file")
    with pytest.raises(FileExistsError, match="not a symlink"):
        create_bus_link(link, "/dev/pts/98")
    assert link.read_text() == "a real file"


def test_config_validation():
    names = {f.name for f in dataclasses.fields(SimWorldConfig)}
    # What the drivers' parameter files and docs/sim_world.md rely on.
    assert {"bus_link", "calibration_file", "hand_model_file", "image_size", "cameras", "camera_sources",
            "equilibrium_topic", "pose_topic", "error_topic", "recovery_action", "frame_id",
            "overload_servo_id", "reset_config", "auto_reset"} <= names
    with pytest.raises(ValueError, match="same length"):
        SimWorldConfig(cameras=("front",))
    with pytest.raises(ValueError, match="motor ticks"):
        SimWorldConfig(motor_lower_ticks=3000, motor_upper_ticks=1000)
    with pytest.raises(ValueError, match="speed"):
        SimWorldConfig(speed=0.0)
    with pytest.raises(ValueError, match="reset_config"):
        SimWorldConfig(reset_config=12)
