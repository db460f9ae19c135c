"""orca_hand_driver: the ORCA hand as a ROS 2 lifecycle node (rclpy.lifecycle).

Transitions:
- configure: load the hand model and its calibration, open the serial port (dynamixel-sdk,
  Protocol 2.0), ping every servo and check model number and firmware, set current-based
  position mode, current limits, return delay and status return level. Refused (with the
  reason in the log) when the port is missing, a servo does not answer or is the wrong model,
  or the calibration is missing or made for another hand.
- activate: goals := measured positions, torque on, the control loop starts (own thread, on
  the steady clock) and the hand holds until the first command.
- deactivate: the loop stops and the servos hold the measured position (torque stays on).
- cleanup / shutdown: hold, then torque off only if ``torque_off_on_shutdown``; the port closes.

Loop (``control_rate_hz``, default 40): one sync read of present current/velocity/position,
one sync write of goal positions; publishes ``/orca_hand/joint_states`` (sensor-data QoS) and
the command actually sent on ``~/executed_command``. Commands on ``/orca_hand/joint_command``
are validated (unknown names, NaN, wrong lengths: rejected, logged, nothing sent), clamped to
the joint ranges and rate-limited; the watchdog holds the measured position when commands stop.
Faults: a servo reporting a hardware error is rebooted and restored while the others go on; a
servo that stops answering makes the hand hold, and after ``max_failed_cycles`` the node
deactivates itself. ``/diagnostics`` once per second.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState

from orca_hand_driver.commands import CommandError
from orca_hand_driver.hand import CycleReport, DriverConfig, OrcaHand, TransitionError
from sernf_data.ros.device_node import DeviceLifecycleNode
from sernf_data.ros.diagnostics import diagnostic_status
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node

NODE_NAME = "orca_hand_driver"


@dataclass
class TopicConfig:
    """Topic names of orca_hand_driver."""

    joint_states_topic: str = "/orca_hand/joint_states"
    """Published joint positions (rad), velocities (rad/s) and efforts (motor current, A)."""
    command_topic: str = "/orca_hand/joint_command"
    """Joint position commands (sensor_msgs/JointState, by name, any subset)."""
    executed_command_topic: str = "~/executed_command"
    """The targets actually sent (after clamping and rate limiting)."""
    diagnostics_period_s: float = 1.0
    """Period of /diagnostics messages."""

    def __post_init__(self) -> None:
        if not self.diagnostics_period_s > 0:
            raise ValueError("diagnostics_period_s must be positive")


#: The node's parameters: both dataclasses are declared (launch-file checks read this).
PARAMETERS = (DriverConfig, TopicConfig)


def _share_config_dir() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("orca_hand_driver")) / "config"


class OrcaHandNode(DeviceLifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.cfg: DriverConfig = declare_config(self, DriverConfig)
        self.topics: TopicConfig = declare_config(self, TopicConfig)
        self.hand: OrcaHand | None = None
        self._loop_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._events_seen = 0
        self._rejection_logged: dict[str, float] = {}
        self.joint_pub = self.create_publisher(JointState, self.topics.joint_states_topic, qos_profile_sensor_data)
        self.executed_pub = self.create_publisher(JointState, self.topics.executed_command_topic, 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointState, self.topics.command_topic, self._on_command, 10)
        self.create_timer(self.topics.diagnostics_period_s, self._publish_diagnostics)
        self.get_logger().info(f"ORCA hand driver ({self.cfg.hand_model} on {self.cfg.port}) waiting for configure")

    # -- transitions ----------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        config_dir = Path(self.cfg.config_dir) if self.cfg.config_dir else _share_config_dir()
        hand = OrcaHand(self.cfg, config_dir)
        try:
            hand.configure()
        except TransitionError as exc:
            return self.refuse("configure", str(exc))
        self.hand = hand
        self.state_label = "inactive"
        self.get_logger().info(
            f"configured: {len(hand.model.joints)} servos on {self.cfg.port} ({hand.model.baud_rate} baud), "
            f"calibration {hand.calibration_path}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        assert self.hand is not None
        try:
            self.hand.activate(time.monotonic())
        except TransitionError as exc:
            return self.refuse("activate", str(exc))
        self._stop.clear()
        self._loop_thread = threading.Thread(target=self._loop, name="orca-control-loop", daemon=True)
        self._loop_thread.start()
        self.state_label = "active"
        self.get_logger().info(f"active: torque on, holding; control loop at {self.cfg.control_rate_hz:g} Hz")
        return TransitionCallbackReturn.SUCCESS

    def _stop_loop(self) -> None:
        self._stop.set()
        thread = self._loop_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._loop_thread = None

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_loop()
        if self.hand is not None:
            warning = self.hand.hold()
            if warning:
                self.get_logger().error(f"deactivate: could not send the hold: {warning}")
        self.state_label = "inactive"
        self.get_logger().info("inactive: holding the measured position")
        return TransitionCallbackReturn.SUCCESS

    def release_device(self, what: str) -> None:
        self._stop_loop()
        if self.hand is not None and self.hand.client is not None:
            warning = self.hand.cleanup(self.cfg.torque_off_on_shutdown)
            if warning:
                self.get_logger().error(f"{what}: {warning}")
            self.get_logger().info(f"{what}: hand left holding"
                                   + (", torque off" if self.cfg.torque_off_on_shutdown else " (torque on)"))
        self.hand = None

    # -- commands -------------------------------------------------------------------------------
    def _on_command(self, msg: JointState) -> None:
        hand = self.hand
        if hand is None or not hand.active:
            self.get_logger().warning("command ignored: driver not active", throttle_duration_sec=2.0)
            return
        try:
            hand.command(list(msg.name), list(msg.position), time.monotonic())
        except CommandError as exc:
            # One line per distinct reason per second: every kind of bad input is visible, a
            # publisher repeating one mistake at 40 Hz does not flood the log.
            reason = str(exc)
            now = time.monotonic()
            if now - self._rejection_logged.get(reason, -math.inf) >= 1.0:
                self._rejection_logged[reason] = now
                self.get_logger().warning(f"command rejected: {reason}")

    # -- loop -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        hand = self.hand
        assert hand is not None
        period = 1.0 / self.cfg.control_rate_hz
        next_time = time.monotonic()
        was_holding = None
        fatal = None
        while not self._stop.is_set():
            report = hand.cycle(time.monotonic())
            self._publish(report)
            if report.holding != was_holding and was_holding is not None:
                self.get_logger().warning("watchdog/fault: holding the measured position" if report.holding
                                          else "commands resumed")
            was_holding = report.holding
            for event in list(hand.events)[self._events_seen:]:
                self.get_logger().warning(event)
            self._events_seen = len(hand.events)
            hand.events.clear()
            self._events_seen = 0
            if report.missing:
                self.get_logger().error(f"servos {report.missing} not answering: holding",
                                        throttle_duration_sec=1.0)
            if report.fatal:
                fatal = report.fatal
                break
            next_time += period
            delay = next_time - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_time = time.monotonic()  # overrun: do not try to catch up with a burst
        if fatal:
            self.last_refusal = f"deactivated: {fatal}"
            self.get_logger().error(self.last_refusal)
            self.trigger_deactivate()

    def _publish(self, report: CycleReport) -> None:
        assert self.hand is not None and self.hand.model is not None
        stamp = self.get_clock().now().to_msg()
        names = list(self.hand.model.joint_names)
        state = JointState(name=names, position=report.positions.tolist(),
                           velocity=report.velocities.tolist(), effort=report.efforts.tolist())
        state.header.stamp = stamp
        self.joint_pub.publish(state)
        executed = JointState(name=names, position=report.sent.tolist())
        executed.header.stamp = stamp
        self.executed_pub.publish(executed)

    def _publish_diagnostics(self) -> None:
        hand = self.hand
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        values: dict[str, object] = {"state": self.state_label, "port": self.cfg.port,
                                     "hand_model": self.cfg.hand_model}
        level, message = DiagnosticStatus.OK, self.state_label
        if self.last_refusal:
            values["last_refusal"] = self.last_refusal
        if hand is not None and hand.model is not None:
            durations = np.array(hand.stats.durations) if hand.stats.durations else np.zeros(1)
            starts = list(hand.stats.starts)
            recent = [t for t in starts if starts and t >= starts[-1] - 1.0]
            rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 and recent[-1] > recent[0] else 0.0
            report = hand.last_report
            values.update({
                "loop_rate_hz": float(rate), "cycle_time_p50_ms": float(np.percentile(durations, 50) * 1e3),
                "cycle_time_max_ms": float(durations.max() * 1e3), "cycles": hand.stats.cycles,
                "rejected_commands": hand.stats.rejected_commands,
                "holding": bool(report.holding) if report else True,
                "stuffing_adjustments": hand.client.stuffing_adjustments if hand.client else 0,
                "stale_answers": hand.client.stale_answers if hand.client else 0,
            })
            if report is not None and report.holding and self.state_label == "active":
                level, message = DiagnosticStatus.WARN, "holding the measured position (no valid command)"
        if self.last_refusal and self.state_label != "active":
            level, message = DiagnosticStatus.ERROR, self.last_refusal
        array.status.append(diagnostic_status(f"{NODE_NAME}: hand", self.cfg.port, level, message, values))
        if hand is not None and hand.model is not None:
            for joint in hand.model.joints:
                health = hand.health.get(joint.motor)
                if health is None:
                    continue
                servo_level = DiagnosticStatus.OK
                text = "ok"
                if health.failed_cycles:
                    servo_level, text = DiagnosticStatus.ERROR, f"not answering for {health.failed_cycles} cycles"
                elif health.restore_at is not None:
                    servo_level, text = DiagnosticStatus.WARN, f"hardware error 0x{health.hardware_error:02x}: rebooting"
                array.status.append(diagnostic_status(
                    f"{NODE_NAME}: servo {joint.motor} ({joint.name})", f"dynamixel:{joint.motor}", servo_level, text,
                    {"temperature_c": health.temperature if health.temperature is not None else "unread",
                     "current_ma": float(health.current_raw * 1.34), "hardware_error": health.hardware_error,
                     "reboots": health.reboots, "failed_cycles": health.failed_cycles}))
        self.diag_pub.publish(array)


def main(args: list[str] | None = None) -> None:
    spin_node(OrcaHandNode, NODE_NAME, num_threads=1, args=args)


if __name__ == "__main__":
    main()
