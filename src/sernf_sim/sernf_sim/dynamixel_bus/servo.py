"""Simulated XC330 servos: the control table the ORCA driver uses and the joint physics behind it.

Control table (ROBOTIS e-Manual, XC330 series; addresses below 64 are EEPROM, writable only with
torque off; 64 and above are RAM, reset by a reboot):

====  ====  ==========================  =====================================================
addr  size  register                    units / meaning
====  ====  ==========================  =====================================================
0     2     model number                read-only
6     1     firmware version            read-only
7     1     id
8     1     baud rate                   3 = 1 Mbps, 4 = 2 Mbps, 5 = 3 Mbps, 6 = 4 Mbps
9     1     return delay time           2 µs
11    1     operating mode              0 current, 3 position, 4 extended, 5 current-based pos.
38    2     current limit               raw current units (≈1.34 mA)
64    1     torque enable
68    1     status return level         0 ping only, 1 + reads, 2 all
70    1     hardware error status       read-only; bit 5 overload, 2 overheat, 0 voltage...
102   2     goal current                raw current units, ≤ current limit
112   4     profile velocity
116   4     goal position               ticks (2π/4096 rad)
126   2     present current             signed, raw current units
128   4     present velocity            signed, 0.229 rpm
132   4     present position            signed, ticks
146   1     present temperature         °C
====  ====  ==========================  =====================================================

The motion itself comes from a :class:`JointBackend`: by default :class:`FirstOrderServos`
(first-order response toward the goal, current saturating at the goal current, physical hard
stops where the joint stalls), or any object with the same ``advance`` method, e.g. the MuJoCo
hand's joints, so the simulated world can stand behind the bus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

ADDR_MODEL_NUMBER = 0
ADDR_FIRMWARE = 6
ADDR_ID = 7
ADDR_BAUD = 8
ADDR_RETURN_DELAY = 9
ADDR_OPERATING_MODE = 11
ADDR_CURRENT_LIMIT = 38
ADDR_TORQUE_ENABLE = 64
ADDR_STATUS_RETURN_LEVEL = 68
ADDR_HARDWARE_ERROR = 70
ADDR_GOAL_CURRENT = 102
ADDR_PROFILE_VELOCITY = 112
ADDR_GOAL_POSITION = 116
ADDR_PRESENT_CURRENT = 126
ADDR_PRESENT_VELOCITY = 128
ADDR_PRESENT_POSITION = 132
ADDR_PRESENT_TEMPERATURE = 146
EEPROM_END = 64
TABLE_SIZE = 147

HW_ERROR_OVERLOAD = 0x20
TICKS_PER_REV = 4096
VELOCITY_UNIT_RPM = 0.229

# (address, size, signed) of every writable register; a write that does not exactly cover
# registers of this list is answered with a data-range error, like the real control table.
WRITABLE = {
    ADDR_ID: 1, ADDR_BAUD: 1, ADDR_RETURN_DELAY: 1, ADDR_OPERATING_MODE: 1, ADDR_CURRENT_LIMIT: 2,
    ADDR_TORQUE_ENABLE: 1, ADDR_STATUS_RETURN_LEVEL: 1, ADDR_GOAL_CURRENT: 2,
    ADDR_PROFILE_VELOCITY: 4, ADDR_GOAL_POSITION: 4,
}


class JointBackend(Protocol):
    """What moves the servos' output shafts. Arrays are indexed like ``servo_ids`` of the bus."""

    def advance(self, dt: float, goal_ticks: np.ndarray, torque_on: np.ndarray,
                current_limit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance ``dt`` seconds toward the goals (ignored where torque is off); return present
        position (ticks), velocity (ticks/s) and current (raw units, signed)."""
        ...


@dataclass
class FirstOrderServos:
    """Each shaft follows its goal with a first-order lag, between physical hard stops.

    Current-based position mode: the current is proportional to the position error and
    saturates at the goal current. At a hard stop the shaft stops, the error grows and the
    current rises to the limit: the stall the calibration routine looks for.
    """

    initial_ticks: np.ndarray
    stops_lower: np.ndarray
    stops_upper: np.ndarray
    time_constant_s: float = 0.03
    current_per_tick: float = 2.0
    position: np.ndarray = field(init=False)
    velocity: np.ndarray = field(init=False)
    current: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.position = np.clip(np.asarray(self.initial_ticks, float), self.stops_lower, self.stops_upper)
        self.velocity = np.zeros_like(self.position)
        self.current = np.zeros_like(self.position)

    def advance(self, dt, goal_ticks, torque_on, current_limit):
        if dt <= 0:
            return self.position.copy(), self.velocity.copy(), self.current.copy()
        alpha = 1.0 - math.exp(-dt / self.time_constant_s)
        error = goal_ticks - self.position
        target = np.where(torque_on, self.position + alpha * error, self.position)
        target = np.clip(target, self.stops_lower, self.stops_upper)
        self.velocity = (target - self.position) / dt
        self.position = target
        residual = goal_ticks - self.position
        self.current = np.where(
            torque_on, np.clip(self.current_per_tick * residual, -current_limit, current_limit), 0.0)
        return self.position.copy(), self.velocity.copy(), self.current.copy()


@dataclass
class ServoFaults:
    """Fault injection state of one servo (see SimulatedDynamixelBus.inject_*)."""

    silent: bool = False
    corrupt_crc_answers: int = 0
    answer_delay_s: float = 0.0
    rebooting_until: float = 0.0


class ControlTable:
    """The registers of one servo, with the access rules of the real ones."""

    def __init__(self, servo_id: int, model_number: int, firmware: int) -> None:
        self.mem = bytearray(TABLE_SIZE)
        self.model_number = model_number
        self.firmware = firmware
        self.set(ADDR_ID, 1, servo_id)
        self.set(ADDR_MODEL_NUMBER, 2, model_number)
        self.set(ADDR_FIRMWARE, 1, firmware)
        self.set(ADDR_BAUD, 1, 1)  # factory default 57600
        self.set(ADDR_RETURN_DELAY, 1, 250)  # factory default 500 µs
        self.set(ADDR_OPERATING_MODE, 1, 3)  # factory default position mode
        self.set(ADDR_CURRENT_LIMIT, 2, 910)
        self.reset_ram()  # after the EEPROM: goal current starts at the current limit

    def reset_ram(self) -> None:
        """Power-on values of the RAM area (a reboot does this)."""
        self.mem[EEPROM_END:] = bytes(TABLE_SIZE - EEPROM_END)
        self.set(ADDR_STATUS_RETURN_LEVEL, 1, 2)
        self.set(ADDR_GOAL_CURRENT, 2, self.get(ADDR_CURRENT_LIMIT, 2))
        self.set(ADDR_PRESENT_TEMPERATURE, 1, 30)

    def get(self, address: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.mem[address:address + size], "little", signed=signed)

    def set(self, address: int, size: int, value: int) -> None:
        self.mem[address:address + size] = int(value).to_bytes(size, "little", signed=value < 0)

    @property
    def servo_id(self) -> int:
        return self.mem[ADDR_ID]

    @property
    def torque_on(self) -> bool:
        return bool(self.mem[ADDR_TORQUE_ENABLE])

    @property
    def hardware_error(self) -> int:
        return self.mem[ADDR_HARDWARE_ERROR]


class JointModel(Protocol):
    """A joint-space simulation (e.g. the MuJoCo hand) that can stand behind the bus."""

    def advance_joints(self, dt: float, goal_q: np.ndarray, torque_on: np.ndarray,
                       current_limit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance ``dt`` s toward ``goal_q`` (rad; joints without torque are free); return joint
        positions (rad), velocities (rad/s) and the motor currents (raw units, signed)."""
        ...


@dataclass
class JointSpaceBackend:
    """Adapts a :class:`JointModel` to the servos: ticks = zero_ticks + sign · ticks_per_rad · q
    per servo (the hand's tendon/gear ratio and wiring sign), so the driver's calibration finds
    the model's joint limits as hard stops like on the real hand."""

    model: JointModel
    zero_ticks: np.ndarray
    ticks_per_rad: np.ndarray
    sign: np.ndarray

    def advance(self, dt, goal_ticks, torque_on, current_limit):
        scale = self.sign * self.ticks_per_rad
        goal_q = (np.asarray(goal_ticks, float) - self.zero_ticks) / scale
        q, dq, current = self.model.advance_joints(dt, goal_q, torque_on, current_limit)
        return self.zero_ticks + scale * np.asarray(q, float), scale * np.asarray(dq, float), \
            self.sign * np.asarray(current, float)
