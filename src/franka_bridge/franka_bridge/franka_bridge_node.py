"""franka_bridge: the lifecycle node around ``franka_bridge.core``.

Topics (names are parameters, see ``franka_bridge.config``):

* in: relative EE commands (PoseStamped), the measured EE pose (PoseStamped, best-effort QoS as
  franka_ros2's state broadcaster publishes it), the robot's error flag (std_msgs/Bool);
* out: the equilibrium pose for the Cartesian impedance controller, ``~/executed_command`` (the
  delta actually applied, same convention and stamp as the command: what the replay stores),
  ``/franka/ee_pose`` for the policy, ``/diagnostics``;
* an EpisodeEvent ABORT on ``episode_topic`` when a reflex starts (the episode running then is
  not trusted: the policy node ends it and marks it a device fault);
* ``~/resume`` (std_srvs/Trigger): forward again after a reflex;
* error recovery: a client of ``franka_msgs/action/ErrorRecovery``.

Lifecycle: configure = subscribe and connect (ee_pose is republished from then on); activate =
needs a fresh measured pose, latches it as the equilibrium and starts forwarding; deactivate =
the equilibrium becomes the measured pose and commands are refused; cleanup/shutdown = the
same, then everything is released.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from rclpy.wait_for_message import wait_for_message
from std_msgs.msg import Bool, Empty
from std_srvs.srv import Trigger

from franka_bridge.config import FrankaBridgeConfig
from franka_bridge.core import BridgeCore, Mode, Pose
from sernf_data.ros.diagnostics import diagnostic_array
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node
from sernf_interfaces.msg import EpisodeEvent

_LOG_REPEAT_S = 1.0


def _pose_msg(pose: Pose, stamp: Any) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = pose.frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pose.position)
    o = msg.pose.orientation
    o.w, o.x, o.y, o.z = (float(v) for v in pose.orientation)
    return msg


def _arrays(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    p, o = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z], dtype=np.float64), np.array([o.w, o.x, o.y, o.z], dtype=np.float64)


class FrankaBridgeNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__("franka_bridge")
        self.cfg: FrankaBridgeConfig = declare_config(self, FrankaBridgeConfig)
        self.core = BridgeCore(self.cfg)
        self._lock = threading.RLock()
        self._data_group = MutuallyExclusiveCallbackGroup()
        self._entities: list[Any] = []
        self._recovery_client = None
        self._recovery_started_at: float | None = None
        self._recovery_goal = None
        self._last_log: dict[str, tuple[float, int]] = {}
        self._last_ee_publish = -float("inf")
        self.target_pub = self.executed_pub = self.ee_pub = self.diag_pub = self.episode_pub = None
        self.recovery_request_pub = None
        self.get_logger().info("franka_bridge created (unconfigured): configure, then activate")

    # -- lifecycle --------------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        cfg = self.cfg
        if cfg.recovery_interface == "action":
            try:
                from franka_msgs.action import ErrorRecovery  # franka_ros2 (or the test stand-in)
            except ImportError as exc:
                self.get_logger().error(
                    f"configure failed: franka_msgs is not available ({exc}); source franka_ros2's "
                    "workspace, or set recovery_interface to 'topic' or 'none'")
                return TransitionCallbackReturn.FAILURE
            from rclpy.action import ActionClient
            self._recovery_client = ActionClient(self, ErrorRecovery, cfg.recovery_action,
                                                 callback_group=self._data_group)
            self._error_recovery_type = ErrorRecovery
        self.target_pub = self.create_publisher(PoseStamped, cfg.target_topic, 10)
        self.executed_pub = self.create_publisher(PoseStamped, "~/executed_command", 10)
        self.ee_pub = self.create_publisher(PoseStamped, cfg.ee_pose_topic, 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.episode_pub = (self.create_publisher(EpisodeEvent, cfg.episode_topic, 10)
                            if cfg.episode_topic else None)
        self._entities = [self.target_pub, self.executed_pub, self.ee_pub, self.diag_pub]
        if self.episode_pub is not None:
            self._entities.append(self.episode_pub)
        self.recovery_request_pub = None
        if cfg.recovery_interface == "topic":
            self.recovery_request_pub = self.create_publisher(Empty, cfg.recovery_request_topic, 10)
            self._entities.append(self.recovery_request_pub)
        g = self._data_group
        self._entities += [
            self.create_subscription(PoseStamped, cfg.pose_topic, self._on_pose, qos_profile_sensor_data,
                                     callback_group=g),
            self.create_subscription(PoseStamped, cfg.command_topic, self._on_command, 10, callback_group=g),
            self.create_service(Trigger, "~/resume", self._on_resume, callback_group=g),
            self.create_timer(1.0 / cfg.hold_publish_rate_hz, self._tick, callback_group=g),
            self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics, callback_group=g),
        ]
        if cfg.error_topic:
            self._entities.append(self.create_subscription(Bool, cfg.error_topic, self._on_error, 10,
                                                           callback_group=g))
        self.get_logger().info(
            f"configured: commands {cfg.command_topic} -> equilibrium {cfg.target_topic}; pose from "
            f"{cfg.pose_topic}; errors from {cfg.error_topic or '(none)'}; recovery: "
            + {"action": f"action {cfg.recovery_action}", "topic": f"requests on {cfg.recovery_request_topic}",
               "none": "by an operator"}[cfg.recovery_interface])
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        # The equilibrium must start where the arm is: wait for a fresh measured pose. The node
        # runs on one executor thread (rclpy's multi-threaded executor cost the command path
        # milliseconds of latency), which is busy in this callback, so the wait takes the pose
        # itself with wait_for_message (its own wait set) instead of letting the executor deliver it.
        deadline = time.monotonic() + self.cfg.activation_timeout_s
        while True:
            with self._lock:
                ok, reason = self.core.activate(time.monotonic())
                target = self.core.target
            remaining = deadline - time.monotonic()
            if ok or remaining <= 0:
                break
            got, msg = wait_for_message(PoseStamped, self, self.cfg.pose_topic,
                                        qos_profile=qos_profile_sensor_data, time_to_wait=remaining)
            if got:
                self._on_pose(msg)
        if not ok:
            self.get_logger().error(f"activate failed: {reason} (pose topic {self.cfg.pose_topic})")
            return TransitionCallbackReturn.FAILURE
        self.target_pub.publish(_pose_msg(target, self.get_clock().now().to_msg()))
        self.get_logger().info(f"active: equilibrium = measured pose {np.round(target.position, 4).tolist()}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._hold_measured("deactivated")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        if self.target_pub is not None:
            self._hold_measured("shutting down")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _hold_measured(self, why: str) -> None:
        with self._lock:
            hold = self.core.deactivate(time.monotonic())
        if hold is not None and self.target_pub is not None:
            self.target_pub.publish(_pose_msg(hold, self.get_clock().now().to_msg()))
            self.get_logger().info(f"{why}: equilibrium = measured pose, commands refused")
        else:
            self.get_logger().warning(f"{why}: no fresh measured pose; the controller keeps its last equilibrium")

    def _release(self) -> None:
        for entity in self._entities:
            if hasattr(entity, "cancel"):  # timers
                self.destroy_timer(entity)
            elif hasattr(entity, "publish"):
                self.destroy_publisher(entity)
            elif hasattr(entity, "srv_type"):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self._entities = []
        if self._recovery_client is not None:
            self._recovery_client.destroy()
            self._recovery_client = None
        self.target_pub = self.executed_pub = self.ee_pub = self.diag_pub = None
        self.recovery_request_pub = None

    # -- inputs -----------------------------------------------------------------------------------
    def _on_pose(self, msg: PoseStamped) -> None:
        position, orientation = _arrays(msg)
        with self._lock:
            problem = self.core.on_pose(position, orientation, msg.header.frame_id, time.monotonic())
        if problem:
            self._log_refusal(f"measured pose ignored: {problem}")
            return
        if self.ee_pub is not None:
            now = time.monotonic()
            if self.cfg.ee_pose_max_rate_hz <= 0 or now - self._last_ee_publish >= 1.0 / self.cfg.ee_pose_max_rate_hz:
                self._last_ee_publish = now
                self.ee_pub.publish(msg)

    def _on_command(self, msg: PoseStamped) -> None:
        translation, rotation = _arrays(msg)
        with self._lock:
            out = self.core.on_command(translation, rotation, msg.header.frame_id, time.monotonic())
        if not out.accepted:
            self._log_refusal(f"command refused, holding: {out.reason}")
            return
        self.target_pub.publish(_pose_msg(out.target, msg.header.stamp))
        executed = PoseStamped()
        executed.header = msg.header
        (executed.pose.position.x, executed.pose.position.y,
         executed.pose.position.z) = (float(v) for v in out.executed_translation)
        o = executed.pose.orientation
        o.w, o.x, o.y, o.z = (float(v) for v in out.executed_rotation)
        self.executed_pub.publish(executed)
        if out.limits:
            self._log_refusal(f"command clipped by limits: {', '.join(out.limits)}", level="info")

    def _on_error(self, msg: Bool) -> None:
        with self._lock:
            was_reflex = self.core.mode is Mode.REFLEX
            note = self.core.on_error_signal(bool(msg.data), time.monotonic())
            reflex_started = not was_reflex and self.core.mode is Mode.REFLEX
        if reflex_started and self.episode_pub is not None:
            # The robot stopped mid-motion: whatever episode runs now is not what the policy
            # commanded. Ending it here (rather than leaving it to time out) keeps the reflex and
            # its recovery out of the recorded data.
            event = EpisodeEvent()
            event.header.stamp = self.get_clock().now().to_msg()
            event.event = EpisodeEvent.ABORT
            event.reason = "device fault: franka reflex (robot error flag set)"
            self.episode_pub.publish(event)
        # rclpy binds one severity to each logging call site: one call per severity.
        if note and msg.data:
            self.get_logger().error(note)
        elif note:
            self.get_logger().warning(note)
        self._maybe_recover()

    def _on_resume(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            ok, message = self.core.resume(time.monotonic())
            target = self.core.target
        if ok and target is not None:
            self.target_pub.publish(_pose_msg(target, self.get_clock().now().to_msg()))
        if ok:
            self.get_logger().info(f"resume: {message}")
        else:
            self.get_logger().warning(f"resume: {message}")
        response.success, response.message = ok, message
        return response

    # -- periodic ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            target, note = self.core.tick(now)
            mode = self.core.mode
        if note:
            self.get_logger().warning(note)
        if target is not None and mode is not Mode.FORWARDING:
            # Holding or in a reflex: (re)publish, so a controller restarted meanwhile gets it.
            self.target_pub.publish(_pose_msg(target, self.get_clock().now().to_msg()))
        if self._recovery_started_at is not None and now - self._recovery_started_at > self.cfg.recovery_timeout_s:
            self.get_logger().error(f"error recovery gave no result within {self.cfg.recovery_timeout_s} s")
            if self._recovery_goal is not None:
                self._recovery_goal.cancel_goal_async()
            self._recovery_finished(False)
        self._maybe_recover()

    # -- error recovery ---------------------------------------------------------------------------
    def _maybe_recover(self) -> None:
        if self._recovery_client is None and self.recovery_request_pub is None:
            return
        now = time.monotonic()
        with self._lock:
            if not self.core.recovery_due(now):
                return
            self.core.recovery_started(now)
        if self.recovery_request_pub is not None:
            # A request has no result: the error flag clearing is the answer; the rate limit
            # (recovery_min_interval_s) spaces out repeated requests while it persists.
            self.get_logger().warning(f"requesting error recovery on {self.cfg.recovery_request_topic}")
            self.recovery_request_pub.publish(Empty())
            self._recovery_finished(True)
            return
        self._recovery_started_at = now
        if not self._recovery_client.server_is_ready():
            self.get_logger().error(f"error recovery: action server {self.cfg.recovery_action} is not available")
            self._recovery_finished(False)
            return
        self.get_logger().warning(f"calling error recovery ({self.cfg.recovery_action})")
        future = self._recovery_client.send_goal_async(self._error_recovery_type.Goal())
        future.add_done_callback(self._on_recovery_accepted)

    def _on_recovery_accepted(self, future) -> None:
        goal = future.result()
        if goal is None or not goal.accepted:
            self.get_logger().error("error recovery goal rejected")
            self._recovery_finished(False)
            return
        self._recovery_goal = goal
        goal.get_result_async().add_done_callback(self._on_recovery_result)

    def _on_recovery_result(self, future) -> None:
        from action_msgs.msg import GoalStatus

        result = future.result()
        succeeded = result is not None and result.status == GoalStatus.STATUS_SUCCEEDED
        if succeeded:
            self.get_logger().info("error recovery succeeded")
        else:
            self.get_logger().error("error recovery failed (retried after recovery_min_interval_s "
                                    "while the error persists)")
        self._recovery_finished(succeeded)

    def _recovery_finished(self, succeeded: bool) -> None:
        self._recovery_started_at = None
        self._recovery_goal = None
        with self._lock:
            if self.core.recovery_in_flight:
                self.core.recovery_finished(succeeded)

    # -- reporting --------------------------------------------------------------------------------
    def _log_refusal(self, line: str, level: str = "warning") -> None:
        """Every refusal is logged; an identical line repeats at most once a second, with the
        number of repeats in between."""
        now = time.monotonic()
        last, suppressed = self._last_log.get(line, (-float("inf"), 0))
        if now - last < _LOG_REPEAT_S:
            self._last_log[line] = (last, suppressed + 1)
            return
        self._last_log[line] = (now, 0)
        text = line if not suppressed else f"{line} (x{suppressed + 1} in the last {now - last:.1f} s)"
        if level == "info":
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._lock:
            core = self.core
            c = core.counters
            problem = core.pose_problem(now)
            mode = core.mode
            values = {
                "mode": mode.value,
                "pose_age_s": round(core.pose_age(now), 4) if core.measured_at is not None else "none",
                "error_present": core.error_present,
                "commands_accepted": c.accepted,
                "commands_refused": c.refused,
                "commands_clipped": c.clipped,
                "watchdog_holds": c.watchdog_holds,
                "reflexes": c.reflexes,
                "recovery_calls": c.recovery_calls,
                "recovery_failures": c.recovery_failures,
                "invalid_poses": c.invalid_poses,
                "refusals": ", ".join(f"{k}: {v}" for k, v in sorted(c.refusals_by_reason.items())) or "none",
            }
        if mode in (Mode.REFLEX, Mode.AWAITING_RESUME):
            level, message = DiagnosticStatus.ERROR, f"{mode.value}"
        elif problem and mode is not Mode.INACTIVE:
            level, message = DiagnosticStatus.WARN, problem
        else:
            level, message = DiagnosticStatus.OK, mode.value
        self.diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), "franka_bridge",
                                               "franka", level, message, values))


#: The node's parameters: exactly the fields of this dataclass (checked against config files).
PARAMETERS = FrankaBridgeConfig


def main(args: list[str] | None = None) -> None:
    spin_node(FrankaBridgeNode, "franka_bridge", num_threads=1, args=args)


if __name__ == "__main__":
    main()
