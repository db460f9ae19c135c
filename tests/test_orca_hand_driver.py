"""orca_hand_driver over real DDS against the simulated Dynamixel bus (a pty in this process),
and the driver core + calibration routine against the same bus (the tests not marked ``ros``).

The node runs as a subprocess (its own GIL: the bus thread here answers like a servo chain);
checks on the servo side are in raw ticks read from the simulated control tables.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from graph_probe import GraphProbe
from lifecycle_msgs.msg import Transition
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState

from orca_hand_driver.calibrate import CalibrationSettings, calibrate_hand
from orca_hand_driver.calibration import (
    Calibration,
    MotorLimits,
    load_calibration,
    save_calibration,
)
from orca_hand_driver.hand_model import load_hand_model, model_file
from sernf_sim.dynamixel_bus import SimulatedDynamixelBus
from sernf_sim.dynamixel_bus import servo as reg

CONFIG = Path(__file__).resolve().parents[1] / "src" / "orca_hand_driver" / "config"
MODEL = load_hand_model(model_file(CONFIG, "orca_v1_right"))
NAMES = list(MODEL.joint_names)
LOWER, UPPER = 1000, 3000  # calibrated motor limits (ticks) of every servo in these tests
MAX_STEP = 0.05


def expected_ticks(joint: str, q: float) -> int:
    """The calibration mapping written out independently of the driver's code."""
    j = MODEL.joints[NAMES.index(joint)]
    q = min(max(q, j.lower), j.upper)
    ratio = (UPPER - LOWER) / (j.upper - j.lower)
    return round(LOWER + ((j.upper - q) if j.inverted else (q - j.lower)) * ratio)


@pytest.fixture
def calibration_file(tmp_path: Path) -> Path:
    path = tmp_path / "orca_v1_right.calibration.yaml"
    cal = Calibration(MODEL.name, MODEL.fingerprint(), {j.name: MotorLimits(j.motor, LOWER, UPPER) for j in MODEL.joints})
    save_calibration(path, cal, MODEL)
    return path


@pytest.fixture
def bus():
    with SimulatedDynamixelBus(initial_ticks=[2000] * 17, stops=([LOWER - 20] * 17, [UPPER + 20] * 17)) as b:
        yield b


class Graph(GraphProbe):
    """The test's side: lifecycle client, command publisher, listeners."""

    def __init__(self, node_name: str = "orca_hand_driver") -> None:
        super().__init__("orca_test", lifecycle_node=node_name)
        self.states: list[JointState] = []
        self.executed: list[JointState] = []
        self.diagnostics: list[DiagnosticArray] = []
        n = self.node
        n.create_subscription(JointState, "/orca_hand/joint_states", self.states.append, qos_profile_sensor_data)
        n.create_subscription(JointState, f"/{node_name}/executed_command", self.executed.append, 10)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.pub = n.create_publisher(JointState, "/orca_hand/joint_command", 10)

    def spin_until(self, predicate, timeout: float, command=None) -> bool:
        deadline = time.monotonic() + timeout
        next_pub = 0.0
        while time.monotonic() < deadline:
            if command is not None and time.monotonic() >= next_pub:
                self.send(*command)
                next_pub = time.monotonic() + 0.025
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.01)
        return predicate()

    def send(self, names, positions) -> None:
        self.last_send = time.monotonic()
        self.pub.publish(JointState(name=list(names), position=[float(p) for p in positions]))


@pytest.fixture
def graph(ros_env):
    g = Graph()
    yield g
    g.close()


def start_driver(processes, port: str, calibration: Path, *extra: str, name: str = "orca_hand_driver"):
    args = ["-m", "orca_hand_driver.orca_hand_node", "--ros-args", "-r", f"__node:={name}",
            "-p", f"port:={port}", "-p", f"calibration_file:={calibration}",
            "-p", "read_timeout_ms:=60.0", "-p", "max_failed_cycles:=8", "-p", "reboot_wait_s:=0.1",
            *extra]
    return processes.python(name, *args)


def log_contains(processes, proc, text: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in processes.log(proc):
            return True
        time.sleep(0.1)
    return text in processes.log(proc)



@pytest.mark.ros
def test_configure_refusals_say_why(processes, bus, calibration_file, tmp_path):
    """Port missing, servo not answering, calibration missing, calibration of another hand."""
    v2 = load_hand_model(model_file(CONFIG, "orca_v2_right"))
    other = tmp_path / "v2.calibration.yaml"
    save_calibration(other, Calibration(v2.name, v2.fingerprint(), {j.name: MotorLimits(j.motor, LOWER, UPPER) for j in v2.joints}), v2)
    bus.set_silent(7)
    cases = {
        "no_port": ("/dev/does-not-exist", calibration_file, "cannot open /dev/does-not-exist"),
        "silent": (bus.port, calibration_file, "servo 7 not answering"),
        "no_cal": (bus.port, tmp_path / "none.yaml", "none.yaml not found: run `ros2 run orca_hand_driver calibrate` first"),
        "wrong_cal": (bus.port, other, "calibration is for hand model 'orca_v2_right'"),
    }
    procs = {key: start_driver(processes, port, cal, name=f"orca_{key}") for key, (port, cal, _) in cases.items()}
    for key, (_, _, reason) in cases.items():
        g = Graph(f"orca_{key}")
        try:
            assert not g.transition(Transition.TRANSITION_CONFIGURE), key
            assert g.state() == "unconfigured"
        finally:
            g.close()
        assert log_contains(processes, procs[key], "configure refused: "), processes.log(procs[key])
        assert reason in processes.log(procs[key])


def _goal(bus, joint):
    return bus.goal_ticks()[MODEL.joints[NAMES.index(joint)].motor]


@pytest.mark.ros
def test_driver_end_to_end(processes, graph, bus, calibration_file):
    proc = start_driver(processes, bus.port, calibration_file)
    g = graph
    assert g.transition(Transition.TRANSITION_CONFIGURE), processes.log(proc)
    assert g.state() == "inactive"
    # configure set up every servo: current-based position, limits, no return delay, level 2
    for sid in MODEL.motor_ids:
        assert bus.register(sid, reg.ADDR_OPERATING_MODE, 1) == 5
        assert bus.register(sid, reg.ADDR_GOAL_CURRENT, 2) == round(400 / 1.34)
        assert bus.register(sid, reg.ADDR_RETURN_DELAY, 1) == 0
        assert bus.register(sid, reg.ADDR_STATUS_RETURN_LEVEL, 1) == 2
        assert bus.register(sid, reg.ADDR_TORQUE_ENABLE, 1) == 0
    assert g.transition(Transition.TRANSITION_ACTIVATE), processes.log(proc)
    assert all(bus.register(sid, reg.ADDR_TORQUE_ENABLE, 1) == 1 for sid in MODEL.motor_ids)

    # joint_states: names in model order, rad, velocities, efforts
    assert g.spin_until(lambda: len(g.states) >= 5, 20.0)
    msg = g.states[-1]
    assert list(msg.name) == NAMES and len(msg.velocity) == 17 and len(msg.effort) == 17
    j = MODEL.joints[NAMES.index("index_mcp")]
    measured_index = j.upper - (2000 - LOWER) / ((UPPER - LOWER) / (j.upper - j.lower))  # inverted
    assert msg.position[NAMES.index("index_mcp")] == pytest.approx(measured_index, abs=2e-3)

    # a commanded pose reaches the goal registers through the calibration
    target = {"index_mcp": 1.0, "wrist": -0.3, "pinky_abd": 0.2}
    cmd = (list(target), list(target.values()))
    assert g.spin_until(lambda: all(_goal(bus, k) == expected_ticks(k, v) for k, v in target.items()), 20.0, cmd), \
        {k: (_goal(bus, k), expected_ticks(k, v)) for k, v in target.items()}
    # rate limit: the executed target never advances toward the command by more than
    # max_step_rad per cycle (a watchdog hold under CPU load may step back to the measurement)
    executed = np.array([m.position for m in g.executed])
    columns = [NAMES.index(k) for k in target]
    direction = np.sign(np.array(list(target.values())) - executed[0, columns])
    advances = np.diff(executed[:, columns], axis=0) * direction
    assert advances.max() <= MAX_STEP + 1e-9 and advances.max() >= MAX_STEP - 1e-9
    # clamping at the range: 3 rad on index_mcp (range up to 95°) → the limit tick
    cmd = (["index_mcp"], [3.0])
    assert g.spin_until(lambda: _goal(bus, "index_mcp") == expected_ticks("index_mcp", math.radians(95)), 20.0, cmd)
    assert g.spin_until(lambda: g.executed and g.executed[-1].position[NAMES.index("index_mcp")] == pytest.approx(math.radians(95)), 5.0, cmd)

    # invalid commands: refused, nothing of them reaches the servos
    time.sleep(0.5)  # watchdog holds what is measured now
    assert g.spin_until(lambda: False, 0.5) is False
    before = bus.goal_ticks()
    bus.clear_log()
    for names, positions in ((["index_mcp"], [float("nan")]), (["index_mcp", "no_such_joint"], [0.0, 0.0]),
                             (["index_mcp", "wrist"], [0.0]), ([], [0.0] * 5)):
        for _ in range(5):
            g.send(names, positions)
            g.spin_until(lambda: False, 0.03)
    g.spin_until(lambda: False, 0.5)
    assert bus.goal_writes, "the loop keeps sending the hold"
    assert all(w.ticks == before[w.servo_id] for w in bus.goal_writes)
    assert log_contains(processes, proc, "command rejected: non-finite position for index_mcp")
    assert log_contains(processes, proc, "command rejected: unknown joint names ['no_such_joint']")

    # watchdog: commands stop → after 200 ms + one cycle the MEASURED position is held. An
    # obstacle stops index_mcp short of its target, so target and measurement differ.
    sid = MODEL.joints[NAMES.index("index_mcp")].motor
    cmd = (["index_mcp"], [0.0])
    assert g.spin_until(lambda: _goal(bus, "index_mcp") == expected_ticks("index_mcp", 0.0), 20.0, cmd)
    assert bus.wait_for(lambda: abs(bus.present_ticks()[sid] - expected_ticks("index_mcp", 0.0)) <= 3, 5.0)
    obstacle = bus.present_ticks()[sid] - 100  # index_mcp is inverted: flexing lowers the ticks
    bus.backend.stops_lower[bus.servo_ids.index(sid)] = obstacle
    cmd = (["index_mcp"], [1.0])
    assert g.spin_until(lambda: _goal(bus, "index_mcp") == expected_ticks("index_mcp", 1.0), 20.0, cmd)
    assert bus.present_ticks()[sid] == obstacle
    last_command = g.last_send
    assert g.spin_until(lambda: abs(_goal(bus, "index_mcp") - obstacle) <= 2, 10.0)
    assert time.monotonic() - last_command >= 0.2
    assert g.spin_until(lambda: abs(expected_ticks("index_mcp", g.executed[-1].position[NAMES.index("index_mcp")])
                                    - obstacle) <= 2, 5.0)  # ~executed_command says so too
    assert log_contains(processes, proc, "holding the measured position")
    bus.backend.stops_lower[bus.servo_ids.index(sid)] = LOWER - 20
    # resume on the next command
    cmd = (["index_mcp"], [0.5])
    assert g.spin_until(lambda: _goal(bus, "index_mcp") == expected_ticks("index_mcp", 0.5), 20.0, cmd)

    # overload on one servo: reboot + restore while the others keep their targets
    others_before = {s: t for s, t in bus.goal_ticks().items() if s != 9}
    bus.clear_log()
    bus.inject_hardware_error(9)
    assert g.spin_until(lambda: 9 in bus.reboots and bus.register(9, reg.ADDR_TORQUE_ENABLE, 1) == 1, 20.0, cmd), processes.log(proc)
    assert bus.register(9, reg.ADDR_OPERATING_MODE, 1) == 5
    assert bus.register(9, reg.ADDR_GOAL_CURRENT, 2) == round(400 / 1.34)
    assert bus.register(9, reg.ADDR_HARDWARE_ERROR, 1) == 0
    assert all(w.ticks == others_before[w.servo_id] for w in bus.goal_writes if w.servo_id != 9)
    assert log_contains(processes, proc, "servo 9: hardware error 0x20, rebooted")
    assert g.state() == "active"

    # diagnostics: loop rate, cycle time, per-servo temperature/error/current
    g.diagnostics.clear()
    assert g.spin_until(lambda: any(len(d.status) == 18 for d in g.diagnostics), 10.0, cmd)
    diag = next(d for d in g.diagnostics if len(d.status) == 18)
    hand = {kv.key: kv.value for kv in diag.status[0].values}
    assert float(hand["loop_rate_hz"]) > 10 and float(hand["cycle_time_p50_ms"]) > 0
    assert int(hand["stale_answers"]) >= 0 and int(hand["stuffing_adjustments"]) >= 0
    servo9 = next(s for s in diag.status if s.name.startswith("orca_hand_driver: servo 9 "))
    values9 = {kv.key: kv.value for kv in servo9.values}
    assert values9["reboots"] == "1" and "temperature_c" in values9 and "current_ma" in values9

    # one servo stops answering: hold, report, deactivate after max_failed_cycles
    bus.set_silent(12)
    assert g.spin_until(lambda: g.state() == "inactive", 30.0), processes.log(proc)
    assert log_contains(processes, proc, "servos [12] not answering: holding")
    assert log_contains(processes, proc, "deactivated: servos [12] not answering for 8 cycles")
    bus.set_silent(12, False)
    # it answers again: the hand can be activated again, and holds where it is
    assert g.transition(Transition.TRANSITION_ACTIVATE), processes.log(proc)
    present = bus.present_ticks()
    assert bus.wait_for(lambda: all(abs(bus.goal_ticks()[s] - present[s]) <= 3 for s in MODEL.motor_ids), 5.0)

    # unplugged bus: hold, report, deactivate after max_failed_cycles
    bus.unplug()
    assert g.spin_until(lambda: g.state() == "inactive", 30.0), processes.log(proc)
    assert log_contains(processes, proc, "not answering")
    assert log_contains(processes, proc, "deactivated: servos")
    bus.unplug(False)
    # cleanup leaves torque on (torque_off_on_shutdown is false)
    assert g.transition(Transition.TRANSITION_CLEANUP)
    assert all(bus.register(sid, reg.ADDR_TORQUE_ENABLE, 1) == 1 for sid in MODEL.motor_ids)


@pytest.mark.ros
def test_shutdown_with_torque_off(processes, graph, bus, calibration_file):
    proc = start_driver(processes, bus.port, calibration_file, "-p", "torque_off_on_shutdown:=true")
    g = graph
    assert g.transition(Transition.TRANSITION_CONFIGURE) and g.transition(Transition.TRANSITION_ACTIVATE), processes.log(proc)
    assert g.spin_until(lambda: len(g.states) >= 3, 20.0)
    assert g.transition(Transition.TRANSITION_DEACTIVATE)
    assert all(bus.register(sid, reg.ADDR_TORQUE_ENABLE, 1) == 1 for sid in MODEL.motor_ids)  # holding
    assert g.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN)
    assert all(bus.register(sid, reg.ADDR_TORQUE_ENABLE, 1) == 0 for sid in MODEL.motor_ids)


def test_calibration_routine_finds_the_hard_stops(tmp_path):
    """The routine against servos with physical stops (not a ROS test: core + bus)."""
    from orca_hand_driver.bus import DynamixelClient

    rng = np.random.default_rng(1)
    lower = rng.integers(600, 900, 17)
    upper = lower + rng.integers(400, 700, 17)
    ids = list(range(1, 18))
    with SimulatedDynamixelBus(initial_ticks=(lower + upper) / 2, stops=(lower, upper)) as bus:
        # retries: the bus thread shares this process (and a loaded CPU) with the busy-polling SDK
        client = DynamixelClient(bus.port, MODEL.baud_rate, read_timeout_ms=50, retries=5)
        client.open()
        try:
            cal = calibrate_hand(client, MODEL, CalibrationSettings(step_ticks=30, step_period_s=0.004),
                                 log=lambda _: None)
        finally:
            client.close()
    margin = CalibrationSettings.margin_ticks
    for j in MODEL.joints:
        k = ids.index(j.motor)
        assert abs(cal.limits[j.name].lower_ticks - (lower[k] + margin)) <= 3
        assert abs(cal.limits[j.name].upper_ticks - (upper[k] - margin)) <= 3
    path = tmp_path / "cal.yaml"
    save_calibration(path, cal, MODEL)
    assert load_calibration(path, MODEL).limits == cal.limits


def test_late_answers_are_never_taken_for_a_later_requests_answer():
    """A servo answering after the SDK's packet timeout: the retry takes the first attempt's
    answer, and the retry's own answer arrives during the next request. dynamixel-sdk's
    readTxRx takes any status packet from the servo, so a write's late status read as the
    register value 161 (its CRC byte) and the driver's set-up reported "operating mode did not
    take" on a loaded machine. The client checks each answer's parameter count: a read returns
    the register's value or raises, never another request's bytes."""
    from orca_hand_driver.bus import (
        ADDR_OPERATING_MODE,
        ADDR_RETURN_DELAY,
        DynamixelClient,
        ServoNotAnswering,
    )

    with SimulatedDynamixelBus(servo_ids=(1,)) as bus:
        client = DynamixelClient(bus.port, MODEL.baud_rate, retries=2)
        client.open()
        try:
            mode = client.read(1, ADDR_OPERATING_MODE, 1)
            bus.set_answer_delay(1, 0.05)
            values, refused = [], 0
            for _ in range(8):
                try:
                    client.write(1, ADDR_RETURN_DELAY, 1, 0)
                    values.append(client.read(1, ADDR_OPERATING_MODE, 1))
                except ServoNotAnswering:
                    refused += 1
            bus.set_answer_delay(1, 0.0)
            time.sleep(0.2)  # the last late answers arrive; the next request's send flushes them
            assert client.read(1, ADDR_OPERATING_MODE, 1) == mode
        finally:
            client.close()
    assert values.count(mode) == len(values), (mode, values)
    assert client.stale_answers >= 1 and len(values) + refused == 8


def test_stuffing_guard_gets_multi_turn_goals_through():
    """dynamixel-sdk 4.1.0 sends FF FF FD payloads unstuffed; the bus drops them like a servo.
    The client's guard moves such a goal by one tick so it arrives."""
    import dynamixel_sdk as dxl

    from orca_hand_driver.bus import DynamixelClient

    with SimulatedDynamixelBus(servo_ids=(1, 2), initial_ticks=(0, 0)) as bus:
        client = DynamixelClient(bus.port, 3_000_000, read_timeout_ms=50)
        client.open()
        try:
            # the SDK alone: the sync write carrying FF FF FD is dropped, nothing changes
            writer = dxl.GroupSyncWrite(client.port, client.ph, reg.ADDR_GOAL_POSITION, 4)
            writer.addParam(1, list((-131073).to_bytes(4, "little", signed=True)))
            writer.addParam(2, list((500).to_bytes(4, "little", signed=True)))
            assert writer.txPacket() == dxl.COMM_SUCCESS
            assert bus.wait_for(lambda: bus.parser.stuffing_errors == 1, 5.0)
            assert bus.goal_ticks() == {1: 0, 2: 0}
            # through the guard: both goals arrive, the dangerous one a tick away
            assert client.write_goals({1: -131073, 2: 500}) == {1: -131072, 2: 500}
            assert bus.wait_for(lambda: bus.goal_ticks() == {1: -131072, 2: 500}, 5.0)
            assert client.stuffing_adjustments == 1 and bus.parser.stuffing_errors == 1
        finally:
            client.close()


def test_hung_up_port_is_reported_and_fatal(calibration_file):
    """The pty closed under the driver (a USB adapter pulled out): every cycle reports all
    servos missing with the port error, and after max_failed_cycles the core says stop."""
    from orca_hand_driver.hand import DriverConfig, OrcaHand

    bus = SimulatedDynamixelBus(initial_ticks=[2000] * 17)
    hand = OrcaHand(DriverConfig(port=bus.port, calibration_file=str(calibration_file), config_dir=str(CONFIG),
                                 read_timeout_ms=50, max_failed_cycles=4), CONFIG)
    hand.configure()
    hand.activate(time.monotonic())
    assert hand.cycle(time.monotonic()).missing == []
    bus.close()
    reports = [hand.cycle(time.monotonic()) for _ in range(4)]
    assert all(len(r.missing) == 17 and r.holding for r in reports)
    assert [r.fatal is not None for r in reports] == [False, False, False, True]
    assert any("Input/output error" in e for e in hand.events)
    assert hand.cleanup(torque_off=True) is not None  # the hold could not be sent: said so
