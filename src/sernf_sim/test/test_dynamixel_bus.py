"""The simulated Dynamixel bus at the protocol level, driven by dynamixel-sdk (the real client)
and by raw bytes where the SDK cannot produce the packet under test."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

dxl = pytest.importorskip("dynamixel_sdk")

from sernf_sim.dynamixel_bus import SimulatedDynamixelBus  # noqa: E402
from sernf_sim.dynamixel_bus import protocol as p  # noqa: E402
from sernf_sim.dynamixel_bus import servo as reg  # noqa: E402


@pytest.fixture(autouse=True)
def _patient_sdk(monkeypatch):
    """The SDK's answer timeout is 2 × its USB latency-timer assumption (16 ms) + 2 ms. Here the
    servos are a thread of this process on a shared, loaded CPU: assume a 50 ms latency
    (≈100 ms timeout) so only real silence times out."""
    from dynamixel_sdk import port_handler

    monkeypatch.setattr(port_handler, "LATENCY_TIMER", 50)


@pytest.fixture
def bus():
    with SimulatedDynamixelBus(servo_ids=(1, 2, 3), initial_ticks=(1000, 2000, 3000),
                               stops=((500, 500, 500), (3500, 3500, 3500))) as b:
        yield b


@pytest.fixture
def client(bus):
    port = dxl.PortHandler(bus.port)
    assert port.openPort() and port.setBaudRate(3_000_000)
    handler = dxl.PacketHandler(2.0)
    yield port, handler
    port.closePort()


def test_crc_matches_the_sdk_and_the_manual_example():
    # e-Manual example: PING to id 1 is FF FF FD 00 01 03 00 01 19 4E
    assert p.crc16(bytes.fromhex("FFFFFD0001030001")) == 0x4E19
    sdk = dxl.PacketHandler(2.0)
    data = list(np.random.default_rng(0).integers(0, 256, 200))
    assert p.crc16(bytes(data)) == sdk.updateCRC(0, data, len(data))


def test_stuffing_round_trip_and_refusal_of_unstuffed_header():
    body = bytes((0x03, 0x74, 0x00, 0xFF, 0xFF, 0xFD, 0x01))
    stuffed = p.stuff(body)
    assert stuffed == bytes((0x03, 0x74, 0x00, 0xFF, 0xFF, 0xFD, 0xFD, 0x01))
    assert p.unstuff(stuffed) == body
    with pytest.raises(p.StuffingError):
        p.unstuff(body)


def test_ping_reports_model_and_firmware(client):
    port, ph = client
    model, result, error = ph.ping(port, 2)
    assert (model, result, error) == (1220, dxl.COMM_SUCCESS, 0)
    fw, result, _ = ph.read1ByteTxRx(port, 2, reg.ADDR_FIRMWARE)
    assert result == dxl.COMM_SUCCESS and fw == 52
    _, result, _ = ph.ping(port, 9)  # nobody there
    assert result == dxl.COMM_RX_TIMEOUT


def test_write_read_and_eeprom_lock(bus, client):
    port, ph = client
    assert ph.write1ByteTxRx(port, 1, reg.ADDR_OPERATING_MODE, 5)[0] == dxl.COMM_SUCCESS
    assert ph.read1ByteTxRx(port, 1, reg.ADDR_OPERATING_MODE)[0] == 5
    assert ph.write1ByteTxRx(port, 1, reg.ADDR_TORQUE_ENABLE, 1) == (dxl.COMM_SUCCESS, 0)
    # EEPROM refused while torque is on, with the access error and the value unchanged
    result, error = ph.write1ByteTxRx(port, 1, reg.ADDR_OPERATING_MODE, 3)
    assert result == dxl.COMM_SUCCESS and error == p.ERR_ACCESS
    assert bus.register(1, reg.ADDR_OPERATING_MODE, 1) == 5
    # a write that does not cover a register exactly: data range error
    assert ph.write2ByteTxRx(port, 1, reg.ADDR_GOAL_POSITION + 1, 7)[1] == p.ERR_DATA_RANGE


def test_position_follows_goal_with_torque_only(bus, client):
    port, ph = client
    ph.write4ByteTxRx(port, 1, reg.ADDR_GOAL_POSITION, 1500)
    time.sleep(0.2)
    assert abs(bus.present_ticks()[1] - 1000) <= 1  # torque off: no motion
    ph.write1ByteTxRx(port, 1, reg.ADDR_TORQUE_ENABLE, 1)
    assert bus.wait_for(lambda: abs(bus.present_ticks()[1] - 1500) <= 2, 5.0)
    position, result, _ = ph.read4ByteTxRx(port, 1, reg.ADDR_PRESENT_POSITION)
    assert result == dxl.COMM_SUCCESS and abs(position - 1500) <= 2


def test_sync_write_and_sync_read_of_the_present_block(bus, client):
    port, ph = client
    for sid in (1, 2, 3):
        ph.write1ByteTxRx(port, sid, reg.ADDR_TORQUE_ENABLE, 1)
    writer = dxl.GroupSyncWrite(port, ph, reg.ADDR_GOAL_POSITION, 4)
    for sid, goal in ((1, 1100), (2, 2100), (3, 3100)):
        writer.addParam(sid, list(int(goal).to_bytes(4, "little")))
    assert writer.txPacket() == dxl.COMM_SUCCESS
    assert bus.wait_for(lambda: bus.goal_ticks() == {1: 1100, 2: 2100, 3: 3100}, 2.0)
    assert [w.instruction for w in bus.goal_writes] == [p.SYNC_WRITE] * 3
    time.sleep(0.3)
    reader = dxl.GroupSyncRead(port, ph, reg.ADDR_PRESENT_CURRENT, 10)
    for sid in (1, 2, 3):
        reader.addParam(sid)
    assert reader.txRxPacket() == dxl.COMM_SUCCESS
    for sid, goal in ((1, 1100), (2, 2100), (3, 3100)):
        position = reader.getData(sid, reg.ADDR_PRESENT_POSITION, 4)
        assert abs(position - goal) <= 2


def test_bulk_read(bus, client):
    port, ph = client
    reader = dxl.GroupBulkRead(port, ph)
    reader.addParam(1, reg.ADDR_PRESENT_POSITION, 4)
    reader.addParam(3, reg.ADDR_PRESENT_TEMPERATURE, 1)
    assert reader.txRxPacket() == dxl.COMM_SUCCESS
    assert reader.getData(1, reg.ADDR_PRESENT_POSITION, 4) == 1000
    assert reader.getData(3, reg.ADDR_PRESENT_TEMPERATURE, 1) == 30


def test_status_return_level_and_return_delay(bus, client):
    port, ph = client
    assert ph.write1ByteTxRx(port, 2, reg.ADDR_STATUS_RETURN_LEVEL, 1)[0] == dxl.COMM_SUCCESS
    # level 1: writes are not answered (an SDK TxRx write times out), reads and pings are
    assert ph.write1ByteTxRx(port, 2, reg.ADDR_RETURN_DELAY, 0)[0] == dxl.COMM_RX_TIMEOUT
    assert ph.write1ByteTxOnly(port, 2, reg.ADDR_RETURN_DELAY, 0) == dxl.COMM_SUCCESS
    assert ph.read1ByteTxRx(port, 2, reg.ADDR_RETURN_DELAY)[:2] == (0, dxl.COMM_SUCCESS)
    assert ph.ping(port, 2)[1] == dxl.COMM_SUCCESS
    # return delay: 250 × 2 µs by default, honoured before the answer
    bus.tables[3].set(reg.ADDR_RETURN_DELAY, 1, 254)
    bus.set_answer_delay(3, 0.02)
    start = time.perf_counter()
    assert ph.ping(port, 3)[1] == dxl.COMM_SUCCESS
    assert time.perf_counter() - start >= 0.02


def test_hardware_error_latches_until_reboot(bus, client):
    port, ph = client
    ph.write1ByteTxRx(port, 1, reg.ADDR_TORQUE_ENABLE, 1)
    bus.inject_hardware_error(1)
    value, result, error = ph.read1ByteTxRx(port, 1, reg.ADDR_HARDWARE_ERROR)
    assert result == dxl.COMM_SUCCESS and value == reg.HW_ERROR_OVERLOAD and error & p.ALERT
    assert bus.register(1, reg.ADDR_TORQUE_ENABLE, 1) == 0
    # goals and torque are refused while the error is latched
    assert ph.write4ByteTxRx(port, 1, reg.ADDR_GOAL_POSITION, 1400)[1] == p.ALERT | p.ERR_ACCESS
    assert ph.write1ByteTxRx(port, 1, reg.ADDR_TORQUE_ENABLE, 1)[1] == p.ALERT | p.ERR_ACCESS
    assert ph.reboot(port, 1) == (dxl.COMM_SUCCESS, 0 | p.ALERT)
    assert ph.ping(port, 1)[1] == dxl.COMM_RX_TIMEOUT  # still booting
    time.sleep(bus.reboot_time_s + 0.02)
    assert ph.read1ByteTxRx(port, 1, reg.ADDR_HARDWARE_ERROR) == (0, dxl.COMM_SUCCESS, 0)
    assert bus.reboots == [1]


def test_silent_corrupt_and_late_servos(bus, client):
    port, ph = client
    bus.set_silent(2)
    assert ph.ping(port, 2)[1] == dxl.COMM_RX_TIMEOUT
    bus.set_silent(2, False)
    bus.corrupt_next_answers(3, 1)
    assert ph.ping(port, 3)[1] == dxl.COMM_RX_CORRUPT
    assert ph.ping(port, 3)[1] == dxl.COMM_SUCCESS
    bus.set_answer_delay(1, 0.3)  # later than the SDK's packet timeout (~100 ms here)
    assert ph.ping(port, 1)[1] == dxl.COMM_RX_TIMEOUT
    # the sync read of the others still gets answered
    reader = dxl.GroupSyncRead(port, ph, reg.ADDR_PRESENT_POSITION, 4)
    bus.set_answer_delay(1, 0.0)
    bus.set_silent(1)
    reader.addParam(1)
    assert reader.txRxPacket() == dxl.COMM_RX_TIMEOUT


def test_unplugged_bus_is_silent_and_closed_bus_fails_the_port(bus, client):
    port, ph = client
    bus.unplug()
    assert ph.ping(port, 1)[1] == dxl.COMM_RX_TIMEOUT
    bus.unplug(False)
    assert ph.ping(port, 1)[1] == dxl.COMM_SUCCESS


def test_mis_stuffed_packet_is_dropped_like_a_real_servo(bus):
    # The SDK 4.1.0 sends a payload containing FF FF FD unstuffed (its addStuffing rebinds a
    # local list). Write such a packet by hand: correct CRC, unstuffed body.
    fd = os.open(bus.port, os.O_RDWR | os.O_NOCTTY)
    try:
        ticks = -131073  # 0xFFFDFFFF: little endian FF FF FD FF
        body = bytes((p.WRITE, reg.ADDR_GOAL_POSITION, 0)) + ticks.to_bytes(4, "little", signed=True)
        length = len(body) + 2
        packet = p.HEADER + bytes((1, length, 0)) + body
        crc = p.crc16(packet)
        os.write(fd, packet + bytes((crc & 0xFF, crc >> 8)))
        assert bus.wait_for(lambda: bus.parser.stuffing_errors == 1, 2.0)
        assert bus.goal_ticks()[1] == 1000
        # correctly stuffed, the same value is accepted
        os.write(fd, p.build_packet(1, body))
        assert bus.wait_for(lambda: bus.goal_ticks()[1] == ticks, 2.0)
    finally:
        os.close(fd)


def test_sdk_sends_ff_ff_fd_payloads_unstuffed(bus, client):
    """Documents the dynamixel-sdk 4.1.0 bug the driver guards against."""
    port, ph = client
    result, _ = ph.write4ByteTxRx(port, 1, reg.ADDR_GOAL_POSITION, -131073)
    assert result == dxl.COMM_RX_TIMEOUT  # the servo dropped it
    assert bus.parser.stuffing_errors == 1


def test_hard_stops_stall_with_current_at_the_limit(bus, client):
    port, ph = client
    ph.write2ByteTxRx(port, 1, reg.ADDR_GOAL_CURRENT, 300)
    ph.write1ByteTxRx(port, 1, reg.ADDR_TORQUE_ENABLE, 1)
    ph.write4ByteTxRx(port, 1, reg.ADDR_GOAL_POSITION, 200)  # beyond the lower stop at 500
    assert bus.wait_for(lambda: bus.present_ticks()[1] == 500, 5.0)
    current = bus.register(1, reg.ADDR_PRESENT_CURRENT, 2, signed=True)
    assert current == -300


class _Spring:
    """A custom joint model standing behind the bus: moves halfway per advance, reports a
    constant current."""

    def __init__(self, n):
        self.position = np.zeros(n)
        self.seen_goals = []

    def advance(self, dt, goal_ticks, torque_on, current_limit):
        self.seen_goals.append(goal_ticks.copy())
        self.position = np.where(torque_on, (self.position + goal_ticks) / 2, self.position)
        return self.position.copy(), np.zeros_like(self.position), np.full_like(self.position, 7.0)


def test_external_joint_model_backs_the_servos():
    model = _Spring(2)
    with SimulatedDynamixelBus(servo_ids=(4, 5), backend=model) as bus:
        port = dxl.PortHandler(bus.port)
        port.openPort()
        ph = dxl.PacketHandler(2.0)
        try:
            ph.write1ByteTxRx(port, 5, reg.ADDR_TORQUE_ENABLE, 1)
            ph.write4ByteTxRx(port, 5, reg.ADDR_GOAL_POSITION, 800)
            for _ in range(12):
                position, result, _ = ph.read4ByteTxRx(port, 5, reg.ADDR_PRESENT_POSITION)
            assert result == dxl.COMM_SUCCESS and position == 800
            assert ph.read2ByteTxRx(port, 4, reg.ADDR_PRESENT_CURRENT)[0] == 7
            assert ph.read4ByteTxRx(port, 4, reg.ADDR_PRESENT_POSITION)[0] == 0  # torque off
            assert any(g[1] == 800 for g in model.seen_goals)
        finally:
            port.closePort()


class _JointSpaceHand:
    """A joint-space model (the role the MuJoCo hand plays): joints jump to their goal, clipped
    to joint limits; current proportional to the clipped-away part."""

    def __init__(self, lower, upper):
        self.lower, self.upper = np.asarray(lower), np.asarray(upper)
        self.q = np.zeros(len(lower))

    def advance_joints(self, dt, goal_q, torque_on, current_limit):
        target = np.clip(goal_q, self.lower, self.upper)
        self.q = np.where(torque_on, target, self.q)
        current = np.where(torque_on, np.clip(100 * (goal_q - target), -current_limit, current_limit), 0)
        return self.q.copy(), np.zeros_like(self.q), current


def test_joint_space_model_behind_the_bus():
    from sernf_sim.dynamixel_bus import JointSpaceBackend

    hand = _JointSpaceHand([-0.5, 0.0], [0.5, 1.5])
    backend = JointSpaceBackend(hand, zero_ticks=np.array([2048.0, 1000.0]),
                                ticks_per_rad=np.array([500.0, 800.0]), sign=np.array([1.0, -1.0]))
    with SimulatedDynamixelBus(servo_ids=(1, 2), backend=backend) as bus:
        port = dxl.PortHandler(bus.port)
        port.openPort()
        ph = dxl.PacketHandler(2.0)
        try:
            for sid in (1, 2):
                ph.write1ByteTxRx(port, sid, reg.ADDR_TORQUE_ENABLE, 1)
            ph.write4ByteTxRx(port, 1, reg.ADDR_GOAL_POSITION, 2048 + 200)  # 0.4 rad
            ph.write4ByteTxRx(port, 2, reg.ADDR_GOAL_POSITION, 1000 - 2000)  # 2.5 rad: past the limit
            assert ph.read4ByteTxRx(port, 1, reg.ADDR_PRESENT_POSITION)[0] == 2248
            assert hand.q[0] == pytest.approx(0.4)
            # joint 2 stops at its limit 1.5 rad = 1000 - 1200 ticks, pushing with current
            position = ph.read4ByteTxRx(port, 2, reg.ADDR_PRESENT_POSITION)[0]
            assert int.from_bytes(position.to_bytes(4, "little"), "little", signed=True) == -200
            current = ph.read2ByteTxRx(port, 2, reg.ADDR_PRESENT_CURRENT)[0]
            assert int.from_bytes(current.to_bytes(2, "little"), "little", signed=True) < 0
        finally:
            port.closePort()


def test_sustained_current_at_the_limit_overloads():
    with SimulatedDynamixelBus(servo_ids=(1,), initial_ticks=(1000,), stops=((900,), (1100,)),
                               overload_after_s=0.2) as bus:
        port = dxl.PortHandler(bus.port)
        port.openPort()
        ph = dxl.PacketHandler(2.0)
        try:
            ph.write1ByteTxRx(port, 1, reg.ADDR_TORQUE_ENABLE, 1)
            ph.write4ByteTxRx(port, 1, reg.ADDR_GOAL_POSITION, 3000)  # into the stop
            assert bus.wait_for(lambda: bus.register(1, reg.ADDR_HARDWARE_ERROR, 1) == reg.HW_ERROR_OVERLOAD, 5.0)
            assert bus.register(1, reg.ADDR_TORQUE_ENABLE, 1) == 0
        finally:
            port.closePort()
