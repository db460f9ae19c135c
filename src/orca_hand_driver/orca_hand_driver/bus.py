"""The Dynamixel bus client, on dynamixel-sdk (Protocol 2.0).

Per control cycle: one GroupSyncWrite of goal positions (116, 4 bytes) and one sync read of the
10-byte block present current / velocity / position (126..135). The sync read is sent with the
SDK's GroupSyncRead; its status packets are collected here with the packet handler's
``rxPacket`` so that one silent servo costs one timeout and loses only its own reading
(GroupSyncRead.rxPacket stops at the first missing servo and leaves the rest stale).

Two SDK facts this module works around:

- **Byte stuffing bug** (dynamixel-sdk 4.1.0, ``Protocol2PacketHandler.addStuffing`` rebinds a
  local list): a packet whose parameters contain FF FF FD goes out unstuffed with the unstuffed
  length, and a servo drops it. Goal positions are 4-byte little-endian signed values and ids are
  ≤ 252, so in a sync write FF FF FD can only occur inside one value: bytes FF FF FD as
  (b0 b1 b2) or (b1 b2 b3). Inside 0..4095 that is impossible (b1 ≤ 0x0F); in current-based
  position mode goals may be negative multi-turn values, e.g. −131 073 = FF FF FD FF. Such a
  goal is moved by one tick (0.09°), which removes the pattern; ``stuffing_adjustments`` counts
  it. Every other write of ours is a small non-negative value.
- **Status return level 1**: servos then answer only PING and reads, and an SDK ``…TxRx`` write
  would wait for a status packet that never comes. The client writes with ``…TxOnly`` at level
  1. The driver uses level 2 by default: per cycle it only sync-writes (never answered) and
  sync-reads (always answered), so level 2 costs nothing in the loop and makes every
  configuration write confirmed (an EEPROM write refused while torque is on is seen).
"""

from __future__ import annotations

import select
import termios
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dynamixel_sdk as dxl
import serial
from dynamixel_sdk.protocol2_packet_handler import (
    PKT_ID,
    PKT_INSTRUCTION,
    PKT_LENGTH_H,
    PKT_LENGTH_L,
    PKT_PARAMETER0,
)

__all__ = ["BusError", "DynamixelClient", "PresentState", "ServoError", "ServoNotAnswering",
           "contains_header", "guard_goal"]

ADDR_FIRMWARE = 6
ADDR_RETURN_DELAY = 9
ADDR_OPERATING_MODE = 11
ADDR_CURRENT_LIMIT = 38
ADDR_TORQUE_ENABLE = 64
ADDR_STATUS_RETURN_LEVEL = 68
ADDR_HARDWARE_ERROR = 70
ADDR_GOAL_CURRENT = 102
ADDR_GOAL_POSITION = 116
ADDR_PRESENT_BLOCK = 126  # current (2), velocity (4), position (4)
ADDR_PRESENT_CURRENT_REG = 126
ADDR_PRESENT_POSITION = 132
PRESENT_BLOCK_SIZE = 10
ADDR_PRESENT_TEMPERATURE = 146
MODE_CURRENT_BASED_POSITION = 5
ALERT_BIT = 0x80

_HEADER = (0xFF, 0xFF, 0xFD)
_COMM_STALE_ANSWER = -3100
"""Our result code (beside dynamixel-sdk's COMM_*) for a status packet that answers another request."""


def _result_text(ph, result: int) -> str:
    if result == _COMM_STALE_ANSWER:
        return "only late answers to earlier requests arrived"
    return ph.getTxRxResult(result)


class BusError(RuntimeError):
    """The port cannot be used (missing, unplugged, closed)."""


class ServoNotAnswering(RuntimeError):
    def __init__(self, servo_id: int, what: str) -> None:
        super().__init__(f"servo {servo_id} not answering ({what})")
        self.servo_id = servo_id


class ServoError(RuntimeError):
    def __init__(self, servo_id: int, error: int, what: str) -> None:
        super().__init__(f"servo {servo_id} refused {what} (status error 0x{error:02x})")
        self.servo_id = servo_id
        self.error = error


@dataclass(frozen=True)
class PresentState:
    current: int
    """raw, signed (≈1.34 mA)"""
    velocity: int
    """raw, signed (0.229 rpm)"""
    position: int
    """ticks, signed"""
    error: int
    """status packet error byte; bit 7 = hardware error latched"""


def contains_header(data: Sequence[int]) -> bool:
    return any(tuple(data[k:k + 3]) == _HEADER for k in range(len(data) - 2))


def guard_goal(ticks: int) -> tuple[int, bool]:
    """A goal whose 4 bytes contain FF FF FD, moved by one tick (see module doc)."""
    value = int(ticks)
    if contains_header(value.to_bytes(4, "little", signed=True)):
        value += 1 if value < 0 else -1
        assert not contains_header(value.to_bytes(4, "little", signed=True))
        return value, True
    return value, False


def _le(value: int, size: int) -> list[int]:
    return list(int(value).to_bytes(size, "little", signed=value < 0))


class DynamixelClient:
    def __init__(self, port_name: str, baud_rate: int, read_timeout_ms: float = 10.0,
                 status_return_level: int = 2, retries: int = 0) -> None:
        if status_return_level not in (1, 2):
            raise ValueError("status_return_level must be 1 or 2 (0 would silence reads)")
        self.port_name = port_name
        self.baud_rate = baud_rate
        self.read_timeout_ms = float(read_timeout_ms)
        self.status_return_level = status_return_level
        self.port = dxl.PortHandler(port_name)
        self.ph = dxl.PacketHandler(2.0)
        self.stuffing_adjustments = 0
        self.stale_answers = 0
        """Status packets taken for an earlier request's late answer and retried (see ``_checked``)."""
        self.retries = retries
        """Extra attempts of a single read/write/ping that got no answer (not used per cycle:
        the loop's next cycle is the retry there)."""
        self._writer = dxl.GroupSyncWrite(self.port, self.ph, ADDR_GOAL_POSITION, 4)
        self._is_open = False

    # -- port -----------------------------------------------------------------------------------
    def open(self) -> None:
        try:
            ok = self.port.openPort() and self.port.setBaudRate(self.baud_rate)
        except (serial.SerialException, OSError) as exc:
            raise BusError(f"cannot open {self.port_name}: {exc}") from exc
        if not ok:
            raise BusError(f"cannot open {self.port_name} at {self.baud_rate} baud")
        self._is_open = True

    def close(self) -> None:
        if self._is_open:
            self._is_open = False
            try:
                self.port.closePort()
            except (serial.SerialException, OSError, termios.error):
                return  # already gone (unplugged): nothing left to release

    @property
    def is_open(self) -> bool:
        return self._is_open

    def _txrx(self, call, *args):
        """A request/answer exchange, repeated up to ``retries`` times without an answer."""
        for _ in range(self.retries):
            answer = self._guarded(call, *args)
            result = answer[-2]  # (…, result, error) for ping, read and write
            if result not in (dxl.COMM_RX_TIMEOUT, _COMM_STALE_ANSWER):
                return answer
        return self._guarded(call, *args)

    def _checked(self, servo_id: int, instruction: int, params: list[int], answer_params: int):
        """One request and its status packet as ``(params, result, error)``. A status packet
        whose parameter count is not the one this request gets is the late answer to an earlier
        request (one that timed out and was retried: its answer arrived after the retry took the
        first one), not ours: dynamixel-sdk's ``readTxRx``/``writeTxRx`` would take it, and a
        write's late status then reads as a register value made of its CRC byte. Such an answer
        counts as ``_COMM_STALE_ANSWER`` (retried like a timeout; ``stale_answers`` counts them).
        A late answer of the same shape (a 1-byte read's for another 1-byte read) cannot be
        told apart in Protocol 2.0."""
        tx = [0] * (10 + len(params))
        tx[PKT_ID] = servo_id
        tx[PKT_LENGTH_L], tx[PKT_LENGTH_H] = dxl.DXL_LOBYTE(len(params) + 3), dxl.DXL_HIBYTE(len(params) + 3)
        tx[PKT_INSTRUCTION] = instruction
        tx[PKT_PARAMETER0:PKT_PARAMETER0 + len(params)] = params
        rx, result, error = self.ph.txRxPacket(self.port, tx)
        if result != dxl.COMM_SUCCESS:
            return [], result, error
        # LENGTH = instruction + error + parameters + CRC (2)
        got = dxl.DXL_MAKEWORD(rx[PKT_LENGTH_L], rx[PKT_LENGTH_H]) - 4
        if got != answer_params:
            self.stale_answers += 1
            return [], _COMM_STALE_ANSWER, 0
        return list(rx[PKT_PARAMETER0 + 1:PKT_PARAMETER0 + 1 + answer_params]), result, error

    def _guarded(self, call, *args):
        if not self._is_open:
            raise BusError(f"{self.port_name} is not open")
        try:
            return call(*args)
        except (serial.SerialException, OSError, TypeError, termios.error) as exc:
            # An unplugged adapter / hung-up pty: pyserial raises SerialException or OSError,
            # tcflush raises termios.error, and a read that returns None fails inside the SDK
            # with a TypeError.
            self.port.is_using = False
            raise BusError(f"{self.port_name}: {exc}") from exc

    # -- single servo ---------------------------------------------------------------------------
    def ping(self, servo_id: int) -> tuple[int, int]:
        """(model number, firmware version)."""
        model, result, _ = self._txrx(self.ph.ping, self.port, servo_id)
        if result != dxl.COMM_SUCCESS:
            raise ServoNotAnswering(servo_id, f"ping: {self.ph.getTxRxResult(result)}")
        firmware = self.read(servo_id, ADDR_FIRMWARE, 1)
        return model, firmware

    def read(self, servo_id: int, address: int, size: int, signed: bool = False) -> int:
        request = [dxl.DXL_LOBYTE(address), dxl.DXL_HIBYTE(address), dxl.DXL_LOBYTE(size), dxl.DXL_HIBYTE(size)]
        data, result, error = self._txrx(self._checked, servo_id, dxl.INST_READ, request, size)
        if result != dxl.COMM_SUCCESS:
            raise ServoNotAnswering(servo_id, f"read {address}: {_result_text(self.ph, result)}")
        if error & ~ALERT_BIT:
            raise ServoError(servo_id, error, f"read {address}")
        return int.from_bytes(bytes(data), "little", signed=signed)

    def write(self, servo_id: int, address: int, size: int, value: int, level: int | None = None) -> None:
        """Write one register; confirmed by a status packet at status return level 2."""
        if address == ADDR_GOAL_POSITION:
            value, adjusted = guard_goal(value)
            self.stuffing_adjustments += adjusted
        data = _le(value, size)
        if (self.status_return_level if level is None else level) >= 2:
            request = [dxl.DXL_LOBYTE(address), dxl.DXL_HIBYTE(address), *data]
            _, result, error = self._txrx(self._checked, servo_id, dxl.INST_WRITE, request, 0)
            if result != dxl.COMM_SUCCESS:
                raise ServoNotAnswering(servo_id, f"write {address}: {_result_text(self.ph, result)}")
            if error & ~ALERT_BIT:
                raise ServoError(servo_id, error, f"write {address}={value}")
        else:
            result = self._guarded(self.ph.writeTxOnly, self.port, servo_id, address, size, data)
            if result != dxl.COMM_SUCCESS:
                raise BusError(f"write to servo {servo_id} failed: {self.ph.getTxRxResult(result)}")

    def reboot(self, servo_id: int) -> None:
        result, _ = self._guarded(self.ph.reboot, self.port, servo_id)
        if result != dxl.COMM_SUCCESS:
            raise ServoNotAnswering(servo_id, f"reboot: {self.ph.getTxRxResult(result)}")

    # -- per cycle ------------------------------------------------------------------------------
    def write_goals(self, goals: dict[int, int]) -> dict[int, int]:
        """One GroupSyncWrite of goal positions; returns the ticks actually sent."""
        sent = {}
        self._writer.clearParam()
        for servo_id, ticks in goals.items():
            value, adjusted = guard_goal(ticks)
            self.stuffing_adjustments += adjusted
            sent[servo_id] = value
            self._writer.addParam(servo_id, _le(value, 4))
        if not sent:
            return sent
        result = self._guarded(self._writer.txPacket)
        if result != dxl.COMM_SUCCESS:
            raise BusError(f"sync write failed: {self.ph.getTxRxResult(result)}")
        return sent

    def sync_read(self, ids: Iterable[int], address: int, size: int) -> dict[int, tuple[bytes, int]]:
        """{id: (data, status error byte)} for the servos that answered in time."""
        ids = list(ids)
        if not ids:
            return {}
        reader = dxl.GroupSyncRead(self.port, self.ph, address, size)
        for servo_id in ids:
            reader.addParam(servo_id)
        result = self._guarded(reader.txPacket)
        if result != dxl.COMM_SUCCESS:
            raise BusError(f"sync read failed: {self.ph.getTxRxResult(result)}")
        # One deadline for the whole answer train (the SDK's default assumes a 16 ms USB latency
        # timer; the udev rule sets it to 1 ms). Between packets the thread sleeps in select()
        # instead of the SDK's busy polling, which would burn a core the policy needs.
        deadline = time.monotonic() + self.read_timeout_ms / 1000.0
        fd = self.port.ser.fileno()
        answers: dict[int, tuple[bytes, int]] = {}
        wanted = set(ids)
        for _ in range(2 * len(ids)):
            remaining = deadline - time.monotonic()
            if not self._guarded(lambda: self.port.ser.in_waiting) and (
                    remaining <= 0 or not select.select([fd], [], [], remaining)[0]):
                break  # deadline passed
            self.port.setPacketTimeoutMillis(max(1.0, (deadline - time.monotonic()) * 1000.0))
            packet, result = self._guarded(self.ph.rxPacket, self.port, False)
            if result == dxl.COMM_SUCCESS:
                servo_id = packet[4]
                if servo_id in wanted and len(packet) >= 11 + size:
                    answers[servo_id] = (bytes(packet[9:9 + size]), packet[8])
                if len(answers) == len(wanted):
                    break
            elif result == dxl.COMM_RX_CORRUPT:
                continue  # a damaged packet: its servo counts as not answering this cycle
            else:
                break
        self.port.is_using = False
        return answers

    def read_present(self, ids: Iterable[int]) -> dict[int, PresentState]:
        states = {}
        for servo_id, (data, error) in self.sync_read(ids, ADDR_PRESENT_BLOCK, PRESENT_BLOCK_SIZE).items():
            states[servo_id] = PresentState(
                current=int.from_bytes(data[0:2], "little", signed=True),
                velocity=int.from_bytes(data[2:6], "little", signed=True),
                position=int.from_bytes(data[6:10], "little", signed=True), error=error)
        return states

    def read_temperatures(self, ids: Iterable[int]) -> dict[int, int]:
        return {sid: data[0] for sid, (data, _) in self.sync_read(ids, ADDR_PRESENT_TEMPERATURE, 1).items()}
