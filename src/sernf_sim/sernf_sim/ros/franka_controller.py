"""The Franka controller's ROS interface, served for a simulated arm (sim_arm_node, sim_world).

It answers ``franka_bridge`` the way the robot's controller stack does (docs/design.md §8):

* subscribes the equilibrium pose (geometry_msgs/PoseStamped, base frame), as franka's
  Cartesian impedance example controller does, validates it and hands it to the arm;
* publishes the measured pose (PoseStamped) on the state broadcaster's topic with its QoS
  (best effort) when the node calls :meth:`FrankaControllerServer.publish_pose`;
* reports reflexes on a ``std_msgs/Bool`` error topic (true while in error; what the relay of
  the robot mode provides on a real robot);
* serves the error-recovery action with franka's type (``franka_msgs/action/ErrorRecovery``):
  it takes ``recovery_duration_s`` and clears the error; a goal while no error is present is
  counted, so tests can check that the bridge never sends one. It also takes ``std_msgs/Empty``
  requests on ``recovery_request_topic``, as the ROS 1 relay (tools/ros1/franka_state_relay.py)
  does for franka_ros behind ros1_bridge.

Test hooks on the node: ``~/inject_reflex`` (std_srvs/Trigger) puts the arm into a reflex;
``~/set_pose_stream`` (std_srvs/SetBool) stops or restarts the pose stream (a dead state
broadcaster).
"""

from __future__ import annotations

import numpy as np
from franka_msgs.action import ErrorRecovery
from geometry_msgs.msg import PoseStamped
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.task import Future
from std_msgs.msg import Bool, Empty
from std_srvs.srv import SetBool, Trigger

from sernf_sim.arm_interface import ControlledArm, FrankaControllerConfig

__all__ = ["FrankaControllerServer"]


class FrankaControllerServer:
    """Topics, action and test hooks of the controller interface on ``node`` for ``arm``."""

    def __init__(self, node: Node, cfg: FrankaControllerConfig, arm: ControlledArm) -> None:
        self.node = node
        self.cfg = cfg
        self.arm = arm
        self.streaming = True
        self.recovery_goals = 0
        self.rejected_equilibria = 0
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._request_timer = None
        self.pose_pub = node.create_publisher(PoseStamped, cfg.pose_topic, qos_profile_sensor_data)
        self.error_pub = node.create_publisher(Bool, cfg.error_topic, 10)
        node.create_subscription(PoseStamped, cfg.equilibrium_topic, self._on_equilibrium, 20)
        if cfg.recovery_request_topic:
            node.create_subscription(Empty, cfg.recovery_request_topic, self._on_recovery_request, 10)
        node.create_service(Trigger, "~/inject_reflex", self._on_inject_reflex)
        node.create_service(SetBool, "~/set_pose_stream", self._on_set_pose_stream)
        self._recovery_server = ActionServer(
            node, ErrorRecovery, cfg.recovery_action, execute_callback=self._execute_recovery,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _goal: CancelResponse.REJECT)
        node.create_timer(1.0 / cfg.error_publish_rate_hz, self.publish_error, clock=self._steady)

    def describe(self) -> str:
        cfg = self.cfg
        return (f"equilibrium <- {cfg.equilibrium_topic}, pose -> {cfg.pose_topic}, errors -> "
                f"{cfg.error_topic}, recovery action {cfg.recovery_action}")

    # -- controller input ---------------------------------------------------------------------
    def _on_equilibrium(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        position = np.array([p.x, p.y, p.z])
        orientation = np.array([o.w, o.x, o.y, o.z])
        if self.cfg.frame_id and msg.header.frame_id != self.cfg.frame_id:
            self.rejected_equilibria += 1
            self.node.get_logger().warning(f"equilibrium ignored: frame {msg.header.frame_id!r} is not "
                                           f"{self.cfg.frame_id!r}", throttle_duration_sec=1.0)
            return
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(orientation))
                and abs(float(np.linalg.norm(orientation)) - 1.0) < 1e-2):
            self.rejected_equilibria += 1
            self.node.get_logger().warning("equilibrium ignored: NaN or non-unit quaternion",
                                           throttle_duration_sec=1.0)
            return
        self.arm.set_equilibrium(position, orientation)

    # -- state out ------------------------------------------------------------------------------
    def publish_pose(self, position: np.ndarray, orientation: np.ndarray) -> None:
        """The measured pose (base frame), unless the stream is switched off."""
        if not self.streaming:
            return
        q = np.asarray(orientation, dtype=float)
        if self.cfg.canonical_quaternion and q[0] < 0:
            q = -q
        msg = PoseStamped()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = self.cfg.frame_id
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in position)
        o = msg.pose.orientation
        o.w, o.x, o.y, o.z = (float(v) for v in q)
        self.pose_pub.publish(msg)

    def publish_error(self) -> None:
        self.error_pub.publish(Bool(data=self.arm.error))

    def counters(self) -> dict[str, object]:
        arm = self.arm
        return {
            "error": arm.error,
            "reflexes": arm.reflexes,
            "recovery_goals": self.recovery_goals,
            "recoveries": arm.recoveries,
            "recoveries_without_error": arm.recoveries_without_error,
            "equilibria_received": arm.equilibria_received,
            "equilibria_ignored_in_reflex": arm.equilibria_ignored,
            "equilibria_rejected": self.rejected_equilibria,
            "pose_stream": self.streaming,
        }

    # -- test hooks -----------------------------------------------------------------------------
    def _on_inject_reflex(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.arm.inject_reflex()
        self.publish_error()
        self.node.get_logger().warning("reflex injected: motion stopped, equilibria ignored until recovery")
        response.success = True
        response.message = "reflex injected"
        return response

    def _on_set_pose_stream(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self.streaming = bool(request.data)
        self.node.get_logger().info(f"pose stream {'on' if self.streaming else 'off'}")
        response.success = True
        response.message = f"pose stream {'on' if self.streaming else 'off'}"
        return response

    # -- error recovery -------------------------------------------------------------------------
    def _on_recovery_request(self, _msg: Empty) -> None:
        """A topic request (the ROS 1 relay's interface): recover after recovery_duration_s."""
        self.recovery_goals += 1
        if not self.arm.error:
            self.node.get_logger().warning("error recovery requested while no error is present (counted)")
            self.arm.recover()
            return
        if self._request_timer is not None:
            return  # one recovery at a time, as the relay does

        def finish() -> None:
            self.node.destroy_timer(self._request_timer)
            self._request_timer = None
            self.arm.recover()
            self.publish_error()
            self.node.get_logger().info("error recovery done: error cleared")

        self._request_timer = self.node.create_timer(max(self.cfg.recovery_duration_s, 1e-3), finish,
                                                     clock=self._steady)

    async def _execute_recovery(self, goal_handle) -> ErrorRecovery.Result:
        self.recovery_goals += 1
        had_error = self.arm.error
        if not had_error:
            self.node.get_logger().warning("error recovery requested while no error is present (counted)")
        if self.cfg.recovery_duration_s > 0:
            # Wait without blocking the executor (the arm keeps publishing its state meanwhile).
            done = Future()
            timer = self.node.create_timer(self.cfg.recovery_duration_s,
                                           lambda: done.done() or done.set_result(True), clock=self._steady)
            await done
            self.node.destroy_timer(timer)
        self.arm.recover()
        self.publish_error()
        goal_handle.succeed()
        if had_error:
            self.node.get_logger().info("error recovery done: error cleared")
        return ErrorRecovery.Result()
