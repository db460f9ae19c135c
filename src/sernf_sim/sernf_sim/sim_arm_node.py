"""sim_arm_node: a simulated Cartesian-impedance-controlled Franka arm at the ROS level.

It answers the franka_bridge the way the robot's controller stack does (docs/design.md §8):

* subscribes the equilibrium pose (geometry_msgs/PoseStamped, base frame), as franka's
  Cartesian impedance example controller does, and moves the end effector toward it like a
  spring-damper (``sernf_sim.impedance_arm``);
* publishes the measured pose (PoseStamped) on the state broadcaster's topic with its QoS
  (best effort) at ``rate_hz``;
* reports reflexes on a ``std_msgs/Bool`` error topic (true while in error; what the relay of
  the robot mode provides on a real robot);
* serves the error-recovery action with franka's type (``franka_msgs/action/ErrorRecovery``):
  it takes ``recovery_duration_s`` and clears the error; a goal while no error is present is
  counted (``~/status``), so tests can check that the bridge never sends one. It also takes
  ``std_msgs/Empty`` requests on ``recovery_request_topic``, as the ROS 1 relay
  (tools/ros1/franka_state_relay.py) does for franka_ros behind ros1_bridge.

Test hooks: ``~/inject_reflex`` (std_srvs/Trigger) puts the arm into a reflex;
``~/set_pose_stream`` (std_srvs/SetBool) stops or restarts the pose stream (a dead state
broadcaster); ``~/status`` (Trigger) answers the counters as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from franka_msgs.action import ErrorRecovery
from geometry_msgs.msg import PoseStamped
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.task import Future
from std_msgs.msg import Bool, Empty
from std_srvs.srv import SetBool, Trigger

from sernf_data.ros.diagnostics import diagnostic_array
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node
from sernf_sim.impedance_arm import FreeBody, ImpedanceArm, ImpedanceArmConfig


@dataclass
class SimArmConfig:
    """Parameters of sim_arm_node (declared as ROS parameters with these defaults)."""

    equilibrium_topic: str = "/franka/equilibrium_pose"
    """Subscribed equilibrium pose (the impedance controller's input)."""
    pose_topic: str = "/franka_robot_state_broadcaster/current_pose"
    """Published measured EE pose (franka_ros2 state broadcaster's convenience topic)."""
    error_topic: str = "/franka/robot_error"
    """Published std_msgs/Bool: true while the arm is in a reflex."""
    recovery_action: str = "/action_server/error_recovery"
    """Served franka_msgs/action/ErrorRecovery (franka_ros2's name)."""
    recovery_request_topic: str = "/franka/error_recovery_request"
    """std_msgs/Empty recovery requests (what the ROS 1 relay behind ros1_bridge takes); ''
    disables."""
    frame_id: str = "base"
    """frame_id of the published pose (and the expected one of equilibria; '' accepts any)."""
    rate_hz: float = 100.0
    """Physics and pose publishing rate (wall clock; physics substeps of 2 ms)."""
    error_publish_rate_hz: float = 20.0
    """Rate of the error flag (also published at once on every change)."""
    initial_position: tuple[float, ...] = (0.5, 0.0, 0.4)
    """Start position of the end effector (m, base frame)."""
    initial_orientation: tuple[float, ...] = (0.0, 1.0, 0.0, 0.0)
    """Start orientation (w, x, y, z); default: the hand pointing down."""
    translational_stiffness: float = 200.0
    """N/m."""
    rotational_stiffness: float = 20.0
    """Nm/rad."""
    damping_ratio: float = 1.0
    """Fraction of critical damping."""
    target_filter_time_constant_s: float = 0.2
    """Low-pass time constant of the equilibrium (franka's example controller: 0.2 s)."""
    recovery_duration_s: float = 0.5
    """How long an error recovery takes (franka: 0.4-16 s)."""
    canonical_quaternion: bool = False
    """Publish the pose quaternion with w >= 0, as converters from a rotation matrix (franka's
    O_T_EE) may: its sign then jumps when the orientation crosses w = 0."""

    def __post_init__(self) -> None:
        for name in ("rate_hz", "error_publish_rate_hz"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not (math.isfinite(self.recovery_duration_s) and self.recovery_duration_s >= 0):
            raise ValueError(f"recovery_duration_s must be >= 0, got {self.recovery_duration_s}")
        if len(self.initial_position) != 3 or len(self.initial_orientation) != 4:
            raise ValueError("initial_position needs 3 values and initial_orientation 4 (w, x, y, z)")
        if abs(float(np.linalg.norm(self.initial_orientation)) - 1.0) > 1e-3:
            raise ValueError(f"initial_orientation must be a unit quaternion, got {self.initial_orientation}")


class SimArmNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_arm")
        self.cfg = declare_config(self, SimArmConfig)
        arm_cfg = ImpedanceArmConfig(
            translational_stiffness=self.cfg.translational_stiffness,
            rotational_stiffness=self.cfg.rotational_stiffness,
            damping_ratio=self.cfg.damping_ratio,
            target_filter_time_constant_s=self.cfg.target_filter_time_constant_s)
        body = FreeBody(np.array(self.cfg.initial_position), np.array(self.cfg.initial_orientation),
                        arm_cfg.mass, arm_cfg.inertia)
        self.arm = ImpedanceArm(arm_cfg, body)
        self._streaming = True
        self._recovering = False
        self._goals = 0
        self._rejected_equilibria = 0
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._last_tick_ns: int | None = None

        self.pose_pub = self.create_publisher(PoseStamped, self.cfg.pose_topic, qos_profile_sensor_data)
        self.error_pub = self.create_publisher(Bool, self.cfg.error_topic, 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(PoseStamped, self.cfg.equilibrium_topic, self._on_equilibrium, 20)
        if self.cfg.recovery_request_topic:
            self.create_subscription(Empty, self.cfg.recovery_request_topic, self._on_recovery_request, 10)
        self._request_timer = None
        self.create_service(Trigger, "~/inject_reflex", self._on_inject_reflex)
        self.create_service(SetBool, "~/set_pose_stream", self._on_set_pose_stream)
        self.create_service(Trigger, "~/status", self._on_status)
        self._recovery_server = ActionServer(
            self, ErrorRecovery, self.cfg.recovery_action, execute_callback=self._execute_recovery,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _goal: CancelResponse.REJECT)
        self.create_timer(1.0 / self.cfg.rate_hz, self._tick, clock=self._steady)
        self.create_timer(1.0 / self.cfg.error_publish_rate_hz, self._publish_error, clock=self._steady)
        self.create_timer(1.0, self._publish_diagnostics, clock=self._steady)
        self.get_logger().info(
            f"simulated impedance arm up: equilibrium <- {self.cfg.equilibrium_topic}, pose -> "
            f"{self.cfg.pose_topic} at {self.cfg.rate_hz:g} Hz, errors -> {self.cfg.error_topic}, "
            f"recovery action {self.cfg.recovery_action}")

    # -- controller input ---------------------------------------------------------------------
    def _on_equilibrium(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        position = np.array([p.x, p.y, p.z])
        orientation = np.array([o.w, o.x, o.y, o.z])
        if self.cfg.frame_id and msg.header.frame_id != self.cfg.frame_id:
            self._rejected_equilibria += 1
            self.get_logger().warning(f"equilibrium ignored: frame {msg.header.frame_id!r} is not "
                                      f"{self.cfg.frame_id!r}", throttle_duration_sec=1.0)
            return
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(orientation))
                and abs(float(np.linalg.norm(orientation)) - 1.0) < 1e-2):
            self._rejected_equilibria += 1
            self.get_logger().warning("equilibrium ignored: NaN or non-unit quaternion", throttle_duration_sec=1.0)
            return
        self.arm.set_equilibrium(position, orientation)

    # -- physics and state ----------------------------------------------------------------------
    def _tick(self) -> None:
        now_ns = self._steady.now().nanoseconds
        dt = 1.0 / self.cfg.rate_hz if self._last_tick_ns is None else (now_ns - self._last_tick_ns) * 1e-9
        self._last_tick_ns = now_ns
        self.arm.step(min(max(dt, 0.0), 0.05))  # a stalled process must not take one huge step
        if self._streaming:
            p, q = self.arm.body.pose()
            if self.cfg.canonical_quaternion and q[0] < 0:
                q = -q
            msg = PoseStamped()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self.cfg.frame_id
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p)
            o = msg.pose.orientation
            o.w, o.x, o.y, o.z = (float(v) for v in q)
            self.pose_pub.publish(msg)

    def _publish_error(self) -> None:
        self.error_pub.publish(Bool(data=self.arm.error))

    def _publish_diagnostics(self) -> None:
        level = DiagnosticStatus.ERROR if self.arm.error else DiagnosticStatus.OK
        self.diag_pub.publish(diagnostic_array(
            self.get_clock().now().to_msg(), "sim_arm", "sim_arm", level,
            "reflex" if self.arm.error else "ok", self._counters()))

    def _counters(self) -> dict[str, object]:
        p, _ = self.arm.body.pose()
        return {
            "error": self.arm.error,
            "reflexes": self.arm.reflexes,
            "recovery_goals": self._goals,
            "recoveries": self.arm.recoveries,
            "recoveries_without_error": self.arm.recoveries_without_error,
            "equilibria_received": self.arm.equilibria_received,
            "equilibria_ignored_in_reflex": self.arm.equilibria_ignored,
            "equilibria_rejected": self._rejected_equilibria,
            "pose_stream": self._streaming,
            "position": [round(float(v), 6) for v in p],
        }

    # -- test hooks -----------------------------------------------------------------------------
    def _on_inject_reflex(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.arm.inject_reflex()
        self._publish_error()
        self.get_logger().warning("reflex injected: motion stopped, equilibria ignored until recovery")
        response.success = True
        response.message = "reflex injected"
        return response

    def _on_set_pose_stream(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._streaming = bool(request.data)
        self.get_logger().info(f"pose stream {'on' if self._streaming else 'off'}")
        response.success = True
        response.message = f"pose stream {'on' if self._streaming else 'off'}"
        return response

    def _on_status(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = True
        response.message = json.dumps(self._counters())
        return response

    # -- error recovery -------------------------------------------------------------------------
    def _on_recovery_request(self, _msg: Empty) -> None:
        """A topic request (the ROS 1 relay's interface): recover after recovery_duration_s."""
        self._goals += 1
        if not self.arm.error:
            self.get_logger().warning("error recovery requested while no error is present (counted)")
            self.arm.recover()
            return
        if self._request_timer is not None:
            return  # one recovery at a time, as the relay does

        def finish() -> None:
            self.destroy_timer(self._request_timer)
            self._request_timer = None
            self.arm.recover()
            self._publish_error()
            self.get_logger().info("error recovery done: error cleared")

        self._request_timer = self.create_timer(max(self.cfg.recovery_duration_s, 1e-3), finish, clock=self._steady)

    async def _execute_recovery(self, goal_handle) -> ErrorRecovery.Result:
        self._goals += 1
        had_error = self.arm.error
        if not had_error:
            self.get_logger().warning("error recovery requested while no error is present (counted)")
        if self.cfg.recovery_duration_s > 0:
            # Wait without blocking the executor (the arm keeps publishing its state meanwhile).
            done = Future()
            timer = self.create_timer(self.cfg.recovery_duration_s, lambda: done.done() or done.set_result(True),
                                      clock=self._steady)
            await done
            self.destroy_timer(timer)
        self.arm.recover()
        self._publish_error()
        goal_handle.succeed()
        if had_error:
            self.get_logger().info("error recovery done: error cleared")
        return ErrorRecovery.Result()


#: The node's parameters: exactly the fields of this dataclass.
PARAMETERS = SimArmConfig


def main(args: list[str] | None = None) -> None:
    spin_node(SimArmNode, "sim_arm", num_threads=1, args=args)


if __name__ == "__main__":
    main()
