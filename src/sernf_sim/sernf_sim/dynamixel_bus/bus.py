"""A simulated Dynamixel Protocol 2.0 bus on a pseudo-terminal.

The driver opens :attr:`SimulatedDynamixelBus.port` (the pty's slave side) with dynamixel-sdk
exactly as it opens ``/dev/ttyUSB0``; a thread on the master side parses instruction packets and
answers with status packets as a chain of servos does. Baud rate is meaningless on a pty; the
servos' baud register is kept only for the driver's checks.

Faults (all thread-safe, effective from the next packet):
``inject_hardware_error`` (register 70 latched, torque off, goals ignored until REBOOT, alert bit
in every status), ``set_silent`` (the servo never answers), ``corrupt_next_answers`` (bad CRC),
``set_answer_delay`` (late answers), ``unplug`` (the whole bus silent; ``close`` hangs up the pty).
"""

from __future__ import annotations

import os
import pty
import select
import termios
import threading
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import protocol as p
from .servo import (
    ADDR_CURRENT_LIMIT,
    ADDR_GOAL_CURRENT,
    ADDR_GOAL_POSITION,
    ADDR_HARDWARE_ERROR,
    ADDR_OPERATING_MODE,
    ADDR_PRESENT_CURRENT,
    ADDR_PRESENT_POSITION,
    ADDR_PRESENT_TEMPERATURE,
    ADDR_PRESENT_VELOCITY,
    ADDR_RETURN_DELAY,
    ADDR_STATUS_RETURN_LEVEL,
    ADDR_TORQUE_ENABLE,
    EEPROM_END,
    HW_ERROR_OVERLOAD,
    TABLE_SIZE,
    TICKS_PER_REV,
    VELOCITY_UNIT_RPM,
    WRITABLE,
    ControlTable,
    FirstOrderServos,
    JointBackend,
    ServoFaults,
)

XC330_T288_MODEL = 1220


@dataclass(frozen=True)
class GoalWrite:
    """A goal position the bus accepted (for tests: what reached the servo, in raw ticks)."""

    time: float
    servo_id: int
    ticks: int
    instruction: int


class SimulatedDynamixelBus:
    """Servos ``servo_ids`` on one pty; ``backend`` moves them (default: first-order servos with
    hard stops at ``stops`` = (lower, upper) ticks, starting at ``initial_ticks``)."""

    def __init__(
        self,
        servo_ids: Sequence[int] = tuple(range(1, 18)),
        model_number: int = XC330_T288_MODEL,
        firmware: int = 52,
        backend: JointBackend | None = None,
        initial_ticks: Sequence[float] | None = None,
        stops: tuple[Sequence[float], Sequence[float]] | None = None,
        reboot_time_s: float = 0.05,
        overload_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servo_ids = tuple(int(i) for i in servo_ids)
        self._index = {sid: k for k, sid in enumerate(self.servo_ids)}
        n = len(self.servo_ids)
        self.tables = {sid: ControlTable(sid, model_number, firmware) for sid in self.servo_ids}
        self.faults = {sid: ServoFaults() for sid in self.servo_ids}
        initial = np.full(n, 2048.0) if initial_ticks is None else np.asarray(initial_ticks, float)
        lower, upper = stops if stops is not None else (np.full(n, -1e9), np.full(n, 1e9))
        self.backend: JointBackend = backend or FirstOrderServos(
            initial_ticks=initial, stops_lower=np.asarray(lower, float), stops_upper=np.asarray(upper, float))
        self.reboot_time_s = reboot_time_s
        # Servos overload when they push at their current limit for too long (the ORCA field
        # failure at the strength limit); None: only injected hardware errors.
        self.overload_after_s = overload_after_s
        self._at_limit_since: dict[int, float | None] = dict.fromkeys(self.servo_ids)
        self._clock = clock
        self._last_advance = clock()
        for sid, pos in zip(self.servo_ids, self._advance(0.0)[0], strict=True):
            self.tables[sid].set(ADDR_GOAL_POSITION, 4, int(round(pos)))
        self.goal_writes: list[GoalWrite] = []
        self.instructions: list[tuple[int, int]] = []  # (instruction, id) as received
        self.reboots: list[int] = []
        self.unplugged = False
        self._lock = threading.RLock()
        self.parser = p.PacketParser()
        self._master, self._slave = pty.openpty()
        for fd in (self._master, self._slave):
            tty.setraw(fd, termios.TCSANOW)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="sim-dynamixel-bus", daemon=True)
        self._thread.start()

    # -- life cycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop serving and hang up the pty (the driver's next access fails like an unplugged
        USB adapter)."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        if not self._closed:
            self._closed = True
            os.close(self._master)
            os.close(self._slave)

    def __enter__(self) -> SimulatedDynamixelBus:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- fault injection ------------------------------------------------------------------------
    def inject_hardware_error(self, servo_id: int, bits: int = HW_ERROR_OVERLOAD) -> None:
        """Latch a hardware error: torque off, goals ignored until REBOOT (like an overload)."""
        with self._lock:
            self._advance_locked()
            table = self.tables[servo_id]
            table.set(ADDR_HARDWARE_ERROR, 1, bits)
            table.set(ADDR_TORQUE_ENABLE, 1, 0)

    def set_silent(self, servo_id: int, silent: bool = True) -> None:
        with self._lock:
            self.faults[servo_id].silent = silent

    def corrupt_next_answers(self, servo_id: int, count: int = 1) -> None:
        with self._lock:
            self.faults[servo_id].corrupt_crc_answers = count

    def set_answer_delay(self, servo_id: int, delay_s: float) -> None:
        with self._lock:
            self.faults[servo_id].answer_delay_s = delay_s

    def unplug(self, unplugged: bool = True) -> None:
        """Everything silent (bytes from the driver are dropped) until plugged back."""
        with self._lock:
            self.unplugged = unplugged

    # -- inspection -----------------------------------------------------------------------------
    def register(self, servo_id: int, address: int, size: int, signed: bool = False) -> int:
        with self._lock:
            self._advance_locked()
            return self.tables[servo_id].get(address, size, signed)

    def goal_ticks(self) -> dict[int, int]:
        with self._lock:
            return {sid: t.get(ADDR_GOAL_POSITION, 4, True) for sid, t in self.tables.items()}

    def present_ticks(self) -> dict[int, int]:
        with self._lock:
            self._advance_locked()
            return {sid: t.get(ADDR_PRESENT_POSITION, 4, True) for sid, t in self.tables.items()}

    def clear_log(self) -> None:
        with self._lock:
            self.goal_writes.clear()
            self.instructions.clear()

    # -- physics --------------------------------------------------------------------------------
    def _advance(self, dt: float):
        n = len(self.servo_ids)
        goals = np.array([self.tables[s].get(ADDR_GOAL_POSITION, 4, True) for s in self.servo_ids], float)
        torque = np.array([self.tables[s].torque_on for s in self.servo_ids], bool)
        limit = np.array([self.tables[s].get(ADDR_GOAL_CURRENT, 2) for s in self.servo_ids], float)
        pos, vel, cur = self.backend.advance(dt, goals, torque, limit)
        assert len(pos) == n
        return pos, vel, cur

    def _advance_locked(self) -> None:
        now = self._clock()
        dt = now - self._last_advance
        self._last_advance = now
        pos, vel, cur = self._advance(dt)
        for k, sid in enumerate(self.servo_ids):
            table = self.tables[sid]
            table.set(ADDR_PRESENT_POSITION, 4, int(round(pos[k])))
            rpm = vel[k] / TICKS_PER_REV * 60.0
            table.set(ADDR_PRESENT_VELOCITY, 4, int(round(rpm / VELOCITY_UNIT_RPM)))
            table.set(ADDR_PRESENT_CURRENT, 2, int(round(cur[k])))
            if self.overload_after_s is not None and table.torque_on:
                at_limit = abs(cur[k]) >= table.get(ADDR_GOAL_CURRENT, 2) > 0
                since = self._at_limit_since[sid]
                if not at_limit:
                    self._at_limit_since[sid] = None
                elif since is None:
                    self._at_limit_since[sid] = now
                elif now - since >= self.overload_after_s:
                    table.set(ADDR_HARDWARE_ERROR, 1, HW_ERROR_OVERLOAD)
                    table.set(ADDR_TORQUE_ENABLE, 1, 0)
                    self._at_limit_since[sid] = None
            # Heating with current², cooling toward 30 °C: slow, only for diagnostics.
            temp = table.get(ADDR_PRESENT_TEMPERATURE, 1)
            limit = max(1, table.get(ADDR_CURRENT_LIMIT, 2))
            target = 30.0 + 40.0 * (cur[k] / limit) ** 2
            table.set(ADDR_PRESENT_TEMPERATURE, 1, int(round(temp + (target - temp) * min(1.0, dt / 60.0))))

    # -- serving --------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self._master, 4096)
            except OSError:
                return  # slave side gone
            with self._lock:
                if self.unplugged:
                    continue
                for instruction in self.parser.feed(data):
                    self._handle(instruction)

    def _send(self, servo_id: int, error: int, params: bytes = b"", required_level: int = 2,
              level: int | None = None) -> None:
        table = self.tables[servo_id]
        faults = self.faults[servo_id]
        if faults.silent or self._clock() < faults.rebooting_until:
            return
        if (table.get(ADDR_STATUS_RETURN_LEVEL, 1) if level is None else level) < required_level:
            return
        if table.hardware_error:
            error |= p.ALERT
        corrupt = faults.corrupt_crc_answers > 0
        if corrupt:
            faults.corrupt_crc_answers -= 1
        delay = table.get(ADDR_RETURN_DELAY, 1) * 2e-6 + faults.answer_delay_s
        if delay > 0:
            time.sleep(delay)
        try:
            os.write(self._master, p.status_packet(servo_id, error, params, corrupt_crc=corrupt))
        except OSError:
            return

    def _alive(self, servo_id: int) -> bool:
        faults = self.faults.get(servo_id)
        return faults is not None and self._clock() >= faults.rebooting_until

    def _handle(self, ins: p.Instruction) -> None:
        self.instructions.append((ins.instruction, ins.servo_id))
        self._advance_locked()
        if ins.instruction == p.SYNC_WRITE:
            self._sync_write(ins.params)
        elif ins.instruction == p.SYNC_READ:
            self._sync_read(ins.params)
        elif ins.instruction == p.BULK_READ:
            self._bulk_read(ins.params)
        elif ins.servo_id in self.tables and self._alive(ins.servo_id):
            self._unicast(ins)

    def _unicast(self, ins: p.Instruction) -> None:
        sid, params = ins.servo_id, ins.params
        table = self.tables[sid]
        if ins.instruction == p.PING:
            # PING is answered whatever the status return level.
            self._send(sid, 0, table.model_number.to_bytes(2, "little") + bytes((table.firmware,)), 0)
        elif ins.instruction == p.READ:
            if len(params) != 4:
                self._send(sid, p.ERR_DATA_LENGTH, required_level=1)
                return
            address = int.from_bytes(params[0:2], "little")
            size = int.from_bytes(params[2:4], "little")
            if address + size > TABLE_SIZE:
                self._send(sid, p.ERR_DATA_RANGE, required_level=1)
                return
            self._send(sid, 0, bytes(table.mem[address:address + size]), 1)
        elif ins.instruction == p.WRITE:
            if len(params) < 3:
                self._send(sid, p.ERR_DATA_LENGTH)
                return
            address = int.from_bytes(params[0:2], "little")
            # The answer follows the level in force when the write arrived (a write that lowers
            # the level is still confirmed).
            level = table.get(ADDR_STATUS_RETURN_LEVEL, 1)
            self._send(sid, self._write(sid, address, params[2:], p.WRITE), level=level)
        elif ins.instruction == p.REBOOT:
            self._send(sid, 0)
            self._reboot(sid)
        else:
            self._send(sid, p.ERR_INSTRUCTION)

    def _write(self, sid: int, address: int, data: bytes, instruction: int) -> int:
        """Apply a write; return the status error number (0: done)."""
        table = self.tables[sid]
        size = WRITABLE.get(address)
        if size is None or size != len(data):
            return p.ERR_DATA_RANGE
        if address < EEPROM_END and table.torque_on:
            return p.ERR_ACCESS  # EEPROM is locked while torque is on
        value = int.from_bytes(data, "little", signed=size == 4)
        if address == ADDR_GOAL_POSITION:
            if table.hardware_error:
                return p.ERR_ACCESS  # a latched hardware error blocks motion until a reboot
            self.goal_writes.append(GoalWrite(self._clock(), sid, value, instruction))
        if address == ADDR_TORQUE_ENABLE and value and table.hardware_error:
            return p.ERR_ACCESS
        if address == ADDR_GOAL_CURRENT and value > table.get(ADDR_CURRENT_LIMIT, 2):
            return p.ERR_DATA_LIMIT
        if address == ADDR_OPERATING_MODE and value not in (0, 1, 3, 4, 5, 16):
            return p.ERR_DATA_RANGE
        if address == ADDR_STATUS_RETURN_LEVEL and value > 2:
            return p.ERR_DATA_RANGE
        table.set(address, size, value)
        if address == ADDR_CURRENT_LIMIT and table.get(ADDR_GOAL_CURRENT, 2) > value:
            table.set(ADDR_GOAL_CURRENT, 2, value)
        return 0

    def _reboot(self, sid: int) -> None:
        table = self.tables[sid]
        present = table.get(ADDR_PRESENT_POSITION, 4, True)
        table.reset_ram()
        table.set(ADDR_GOAL_POSITION, 4, present)
        self.faults[sid].rebooting_until = self._clock() + self.reboot_time_s
        self.reboots.append(sid)

    def _sync_write(self, params: bytes) -> None:
        if len(params) < 4:
            return
        address = int.from_bytes(params[0:2], "little")
        size = int.from_bytes(params[2:4], "little")
        block = params[4:]
        if size == 0 or len(block) % (size + 1):
            return
        for k in range(0, len(block), size + 1):
            sid = block[k]
            if sid in self.tables and self._alive(sid) and not self.faults[sid].silent:
                self._write(sid, address, block[k + 1:k + 1 + size], p.SYNC_WRITE)

    def _sync_read(self, params: bytes) -> None:
        if len(params) < 5:
            return
        address = int.from_bytes(params[0:2], "little")
        size = int.from_bytes(params[2:4], "little")
        self._answer_reads([(sid, address, size) for sid in params[4:]])

    def _bulk_read(self, params: bytes) -> None:
        if len(params) % 5:
            return
        self._answer_reads([
            (params[k], int.from_bytes(params[k + 1:k + 3], "little"),
             int.from_bytes(params[k + 3:k + 5], "little"))
            for k in range(0, len(params), 5)])

    def _answer_reads(self, requests: list[tuple[int, int, int]]) -> None:
        # Servos answer in the order of the request; a silent one leaves its slot empty.
        for sid, address, size in requests:
            if sid in self.tables and self._alive(sid) and address + size <= TABLE_SIZE:
                self._send(sid, 0, bytes(self.tables[sid].mem[address:address + size]), 1)

    # -- helpers for tests ---------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if predicate():
                    return True
            time.sleep(0.01)
        with self._lock:
            return predicate()


def present_block(bus: SimulatedDynamixelBus, servo_id: int) -> tuple[int, int, int]:
    """(current, velocity, position) raw, as the 10-byte block 126..135 holds them."""
    return (bus.register(servo_id, ADDR_PRESENT_CURRENT, 2, True),
            bus.register(servo_id, ADDR_PRESENT_VELOCITY, 4, True),
            bus.register(servo_id, ADDR_PRESENT_POSITION, 4, True))


__all__ = ["GoalWrite", "SimulatedDynamixelBus", "XC330_T288_MODEL", "present_block",
           "ADDR_PRESENT_TEMPERATURE"]
