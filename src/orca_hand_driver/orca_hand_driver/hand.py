"""The ORCA hand core: configure, activate, one control cycle, fault recovery, safe shutdown.

No ROS here: the lifecycle node calls these methods from its transitions and its loop thread,
and ``bench/drivers.py`` runs the same loop.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bus import (
    ADDR_CURRENT_LIMIT,
    ADDR_GOAL_CURRENT,
    ADDR_GOAL_POSITION,
    ADDR_HARDWARE_ERROR,
    ADDR_OPERATING_MODE,
    ADDR_PRESENT_POSITION,
    ADDR_RETURN_DELAY,
    ADDR_STATUS_RETURN_LEVEL,
    ADDR_TORQUE_ENABLE,
    ALERT_BIT,
    MODE_CURRENT_BASED_POSITION,
    BusError,
    DynamixelClient,
    PresentState,
    ServoError,
    ServoNotAnswering,
)
from .calibration import Calibration, CalibrationError, JointMapping, load_calibration
from .commands import CommandError, CommandShaper, parse_command
from .hand_model import CURRENT_UNIT_MA, HandModel, load_hand_model, model_file

__all__ = ["CycleReport", "DriverConfig", "OrcaHand", "TransitionError"]


@dataclass
class DriverConfig:
    """Parameters of the ORCA hand driver (ROS parameters of orca_hand_node)."""

    port: str = "/dev/ttyUSB0"
    """Serial port of the U2D2 / FTDI adapter (prefer the stable /dev/serial/by-id/... path)."""
    hand_model: str = "orca_v1_right"
    """Hand model file <config_dir>/<hand_model>.yaml (orca_v1_right, orca_v2_right)."""
    config_dir: str = ""
    """Directory of the hand model files; empty: the package's installed config directory."""
    calibration_file: str = ""
    """Calibration file; empty: <config_dir>/<hand_model>.calibration.yaml."""
    control_rate_hz: float = 40.0
    """Control loop rate: one sync write of goals and one sync read of the state per cycle."""
    max_step_rad: float = 0.05
    """Largest change of a joint target per cycle (rad): 0.05 at 40 Hz = 2 rad/s."""
    command_timeout_s: float = 0.2
    """Watchdog: no valid command for this long → hold the measured position."""
    max_failed_cycles: int = 10
    """Deactivate after this many consecutive cycles in which a servo did not answer."""
    read_timeout_ms: float = 10.0
    """Deadline of one sync read's answers (ms)."""
    return_delay_us: int = 0
    """Servo return delay time (µs, even): 0 answers at once (factory default is 500 µs)."""
    status_return_level: int = 2
    """2: servos confirm every write (configuration errors are seen); 1: only reads answered."""
    reboot_wait_s: float = 0.3
    """After rebooting a servo with a hardware error, wait this long before restoring it."""
    reboot_min_interval_s: float = 2.0
    """Rate limit: at most one reboot of a given servo per this interval."""
    torque_off_on_shutdown: bool = False
    """On cleanup/shutdown, turn torque off after holding (the fingers go limp). False: keep
    holding the last measured position with torque on."""
    temperature_period_s: float = 1.0
    """Period of the extra sync read of servo temperatures (diagnostics)."""

    def __post_init__(self) -> None:
        for name in ("control_rate_hz", "max_step_rad", "command_timeout_s", "read_timeout_ms",
                     "temperature_period_s"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if self.max_failed_cycles < 1:
            raise ValueError("max_failed_cycles must be >= 1")
        if not (0 <= self.return_delay_us <= 508 and self.return_delay_us % 2 == 0):
            raise ValueError("return_delay_us must be an even number of µs in 0..508")
        if self.status_return_level not in (1, 2):
            raise ValueError("status_return_level must be 1 or 2")
        if self.reboot_wait_s < 0 or self.reboot_min_interval_s < 0:
            raise ValueError("reboot_wait_s and reboot_min_interval_s must be >= 0")


class TransitionError(RuntimeError):
    """A lifecycle transition that cannot complete; the message says why."""


@dataclass
class CycleReport:
    time: float
    duration_s: float
    positions: np.ndarray
    velocities: np.ndarray
    efforts: np.ndarray
    sent: np.ndarray
    holding: bool
    clamped: bool
    rate_limited: bool
    missing: list[int]
    recovering: list[int]
    fatal: str | None = None


@dataclass
class ServoHealth:
    failed_cycles: int = 0
    hardware_error: int = 0
    reboots: int = 0
    last_reboot: float = -math.inf
    restore_at: float | None = None
    temperature: int | None = None
    current_raw: int = 0


@dataclass
class LoopStats:
    durations: deque = field(default_factory=lambda: deque(maxlen=400))
    starts: deque = field(default_factory=lambda: deque(maxlen=400))
    cycles: int = 0
    rejected_commands: int = 0


class OrcaHand:
    def __init__(self, config: DriverConfig, config_dir: Path) -> None:
        self.cfg = config
        self.config_dir = Path(config.config_dir or config_dir)
        self.model: HandModel | None = None
        self.calibration: Calibration | None = None
        self.mapping: JointMapping | None = None
        self.client: DynamixelClient | None = None
        self.shaper: CommandShaper | None = None
        self.health: dict[int, ServoHealth] = {}
        self.stats = LoopStats()
        self.active = False
        self.lock = threading.Lock()
        self.last_report: CycleReport | None = None
        self._measured_ticks: dict[int, int] = {}
        self._last_temperature_read = -math.inf
        self.events: deque[str] = deque(maxlen=50)

    # -- helpers --------------------------------------------------------------------------------
    @property
    def calibration_path(self) -> Path:
        if self.cfg.calibration_file:
            return Path(self.cfg.calibration_file).expanduser()
        return self.config_dir / f"{self.cfg.hand_model}.calibration.yaml"

    def _log(self, text: str) -> None:
        self.events.append(text)

    def _servo_ids(self) -> tuple[int, ...]:
        assert self.model is not None
        return self.model.motor_ids

    def _current_raw(self, milliamps: float) -> int:
        return int(round(milliamps / CURRENT_UNIT_MA))

    # -- transitions ----------------------------------------------------------------------------
    def configure(self) -> None:
        """Load the model and calibration, open the port, check and set up every servo."""
        try:
            self.model = load_hand_model(model_file(self.config_dir, self.cfg.hand_model))
        except ValueError as exc:
            raise TransitionError(str(exc)) from exc
        try:
            self.calibration = load_calibration(self.calibration_path, self.model)
        except CalibrationError as exc:
            raise TransitionError(str(exc)) from exc
        self.mapping = JointMapping(self.model, self.calibration)
        # Single exchanges (set-up, recovery) are retried twice: one lost or late packet must not
        # refuse a transition. The loop's sync read is not: the next cycle is its retry.
        self.client = DynamixelClient(self.cfg.port, self.model.baud_rate, self.cfg.read_timeout_ms,
                                      self.cfg.status_return_level, retries=2)
        try:
            self.client.open()
            self._check_and_setup_servos()
        except (BusError, ServoNotAnswering, ServoError, TransitionError) as exc:
            self.client.close()
            self.client = None
            raise TransitionError(str(exc)) from exc
        self.health = {sid: ServoHealth() for sid in self._servo_ids()}

    def _check_and_setup_servos(self) -> None:
        assert self.model is not None and self.client is not None
        for joint in self.model.joints:
            model_number, firmware = self.client.ping(joint.motor)
            if model_number not in self.model.model_numbers:
                raise TransitionError(f"servo {joint.motor} ({joint.name}) is model {model_number}, "
                                      f"expected one of {list(self.model.model_numbers)}")
            if firmware < self.model.min_firmware:
                raise TransitionError(f"servo {joint.motor} ({joint.name}) has firmware {firmware} < {self.model.min_firmware}")
        for sid in self._servo_ids():
            self._setup_servo(sid)

    def _setup_servo(self, sid: int) -> None:
        """Mode, limits, delays; torque off first (EEPROM registers are locked while it is on).
        Also the restore step after a reboot."""
        assert self.model is not None and self.client is not None
        client = self.client
        # The status level goes first. Whether a servo confirms the write that changes its level
        # depends on the level it had, so read that first (reads are answered at levels 1 and 2),
        # and read the new one back (a reboot resets it to 2).
        level_now = client.read(sid, ADDR_STATUS_RETURN_LEVEL, 1)
        if level_now != self.cfg.status_return_level:
            try:
                client.write(sid, ADDR_STATUS_RETURN_LEVEL, 1, self.cfg.status_return_level, level=level_now)
            except ServoNotAnswering:
                client.port.clearPort()  # a servo that applied the new level before answering
            if client.read(sid, ADDR_STATUS_RETURN_LEVEL, 1) != self.cfg.status_return_level:
                raise TransitionError(f"servo {sid}: status return level did not take")
        client.write(sid, ADDR_TORQUE_ENABLE, 1, 0)
        client.write(sid, ADDR_RETURN_DELAY, 1, self.cfg.return_delay_us // 2)
        client.write(sid, ADDR_OPERATING_MODE, 1, MODE_CURRENT_BASED_POSITION)
        limit = self._current_raw(self.model.current_limit_ma)
        client.write(sid, ADDR_CURRENT_LIMIT, 2, limit)
        client.write(sid, ADDR_GOAL_CURRENT, 2, limit)
        if client.read(sid, ADDR_OPERATING_MODE, 1) != MODE_CURRENT_BASED_POSITION:
            raise TransitionError(f"servo {sid}: operating mode did not take")

    def _read_measured(self) -> dict[int, PresentState]:
        assert self.client is not None
        states: dict[int, PresentState] = {}
        for _ in range(3):  # a transition is not refused for one late answer
            missing = [sid for sid in self._servo_ids() if sid not in states]
            if not missing:
                break
            states.update(self.client.read_present(missing))
        missing = [sid for sid in self._servo_ids() if sid not in states]
        if missing:
            raise TransitionError(f"servos {missing} not answering the state read")
        return states

    def activate(self, now: float) -> None:
        """Goals := measured positions, torque on, start holding (until a command arrives)."""
        assert self.model is not None and self.client is not None and self.mapping is not None
        try:
            states = self._read_measured()
            ticks = {sid: states[sid].position for sid in self._servo_ids()}
            self.client.write_goals(ticks)
            for sid in self._servo_ids():
                self.client.write(sid, ADDR_TORQUE_ENABLE, 1, 1)
        except (BusError, ServoNotAnswering, ServoError) as exc:
            raise TransitionError(str(exc)) from exc
        self._measured_ticks = ticks
        measured = self.mapping.to_joints(np.array([ticks[s] for s in self._servo_ids()]))
        self.shaper = CommandShaper(self.mapping.lower, self.mapping.upper, self.cfg.max_step_rad,
                                    self.cfg.command_timeout_s)
        self.shaper.start(measured)
        for health in self.health.values():
            health.failed_cycles = 0
        self.active = True

    def hold(self) -> str | None:
        """Send the last measured position as the goal of every servo; returns an error text
        when the bus did not take it."""
        assert self.client is not None
        self.active = False
        try:
            states = self.client.read_present(self._servo_ids())
            for sid, state in states.items():
                self._measured_ticks[sid] = state.position
            if self._measured_ticks:
                self.client.write_goals(dict(self._measured_ticks))
        except BusError as exc:
            return str(exc)
        return None

    def cleanup(self, torque_off: bool) -> str | None:
        """Hold, optionally torque off, close the port. Returns a warning text or None."""
        if self.client is None:
            return None
        warning = self.hold()
        if torque_off and warning is None:
            for sid in self._servo_ids():
                try:
                    self.client.write(sid, ADDR_TORQUE_ENABLE, 1, 0)
                except (BusError, ServoNotAnswering, ServoError) as exc:
                    warning = f"torque off failed: {exc}"
        self.client.close()
        self.client = None
        return warning

    # -- commands -------------------------------------------------------------------------------
    def command(self, names, positions, now: float) -> None:
        """Validate and take a command (raises CommandError with the reason; nothing changes)."""
        assert self.model is not None
        try:
            values = parse_command(names, positions, self.model.joint_names)
        except ValueError:
            self.stats.rejected_commands += 1
            raise
        with self.lock:
            if self.shaper is None or not self.active:
                raise CommandError("driver not active")
            self.shaper.command(values, now)

    # -- the control cycle ----------------------------------------------------------------------
    def cycle(self, now: float) -> CycleReport:
        assert self.model is not None and self.mapping is not None and self.client is not None
        assert self.shaper is not None
        start = time.perf_counter()
        ids = self._servo_ids()
        recovering = [sid for sid in ids if self.health[sid].restore_at is not None]
        polled = [sid for sid in ids if sid not in recovering]
        try:
            states = self.client.read_present(polled)
        except BusError as exc:
            states = {}
            self._log(str(exc))
        missing = [sid for sid in polled if sid not in states]
        for sid in ids:
            health = self.health[sid]
            if sid in states:
                health.failed_cycles = 0
                self._measured_ticks[sid] = states[sid].position
                health.current_raw = states[sid].current
            elif sid in missing:
                health.failed_cycles += 1
        # Hardware errors: reboot (rate limited), restore later without stopping the others.
        for sid, state in states.items():
            if state.error & ALERT_BIT:
                self._start_recovery(sid, now)
        for sid in recovering:
            self._continue_recovery(sid, now)
        recovering = [sid for sid in ids if self.health[sid].restore_at is not None]

        ticks = np.array([self._measured_ticks[s] for s in ids])
        measured = self.mapping.to_joints(ticks)
        raw_velocity = np.array([states[s].velocity if s in states else 0 for s in ids], float)
        raw_current = np.array([states[s].current if s in states else 0 for s in ids], float)
        velocities = self.mapping.velocity_to_joints(raw_velocity)
        # Effort: motor current (A), signed like the joint (the servo's torque is ∝ current).
        efforts = self.mapping.sign * raw_current * CURRENT_UNIT_MA / 1000.0

        fatal = None
        worst = max(self.health[s].failed_cycles for s in ids)
        with self.lock:
            if missing:
                # A servo that does not answer: stop following commands, hold where the hand is.
                self.shaper.hold(measured)
                if worst >= self.cfg.max_failed_cycles:
                    bad = [s for s in ids if self.health[s].failed_cycles >= self.cfg.max_failed_cycles]
                    fatal = f"servos {bad} not answering for {self.cfg.max_failed_cycles} cycles"
            target = self.shaper.next_target(measured, now)
        goal_ticks = self.mapping.to_ticks(target.positions)
        writable = {sid: int(goal_ticks[k]) for k, sid in enumerate(ids) if sid not in recovering}
        try:
            self.client.write_goals(writable)
        except BusError as exc:
            self._log(str(exc))
        if now - self._last_temperature_read >= self.cfg.temperature_period_s and not missing:
            self._last_temperature_read = now
            try:
                for sid, temp in self.client.read_temperatures([s for s in ids if s not in recovering]).items():
                    self.health[sid].temperature = temp
            except BusError as exc:
                self._log(str(exc))
        duration = time.perf_counter() - start
        self.stats.durations.append(duration)
        self.stats.starts.append(now)
        self.stats.cycles += 1
        report = CycleReport(now, duration, measured, velocities, efforts, target.positions,
                             target.holding, target.clamped, target.rate_limited, missing, recovering, fatal)
        self.last_report = report
        return report

    def _start_recovery(self, sid: int, now: float) -> None:
        health = self.health[sid]
        if health.restore_at is not None or now - health.last_reboot < self.cfg.reboot_min_interval_s:
            return
        assert self.client is not None
        try:
            health.hardware_error = self.client.read(sid, ADDR_HARDWARE_ERROR, 1)
            self.client.reboot(sid)
        except (ServoNotAnswering, ServoError, BusError) as exc:
            self._log(f"servo {sid}: reboot failed: {exc}")
            return
        health.reboots += 1
        health.last_reboot = now
        health.restore_at = now + self.cfg.reboot_wait_s
        self._log(f"servo {sid}: hardware error 0x{health.hardware_error:02x}, rebooted (#{health.reboots})")

    def _continue_recovery(self, sid: int, now: float) -> None:
        health = self.health[sid]
        assert self.client is not None and health.restore_at is not None
        if now < health.restore_at:
            return
        try:
            self.client.ping(sid)
            self._setup_servo(sid)
            position = self.client.read(sid, ADDR_PRESENT_POSITION, 4, signed=True)
            self._measured_ticks[sid] = position
            # Resume from where the joint is (the shaper holds it there, rate-limited after).
            self.client.write(sid, ADDR_GOAL_POSITION, 4, position)
            self.client.write(sid, ADDR_TORQUE_ENABLE, 1, 1)
        except (ServoNotAnswering, ServoError, BusError, TransitionError) as exc:
            health.restore_at = now + self.cfg.reboot_wait_s
            self._log(f"servo {sid}: restore failed, retrying: {exc}")
            return
        assert self.mapping is not None and self.shaper is not None
        k = self._servo_ids().index(sid)
        with self.lock:
            q = float(self.mapping.to_joints(np.array(
                [self._measured_ticks[s] for s in self._servo_ids()]))[k])
            self.shaper.sent[k] = q
        health.restore_at = None
        health.hardware_error = 0
        self._log(f"servo {sid}: restored (mode, current limit, torque)")
