"""sim_arm_node: a simulated Cartesian-impedance-controlled Franka arm at the ROS level.

It answers the franka_bridge the way the robot's controller stack does (docs/design.md §8),
through the controller interface shared with the simulated world
(``sernf_sim.ros.franka_controller``: equilibrium in, measured pose out with the state
broadcaster's QoS, the error flag, franka's error-recovery action and the ROS 1 relay's
recovery topic). Behind it the end effector moves toward the equilibrium like a spring-damper
(``sernf_sim.impedance_arm``), at ``rate_hz``.

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
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_srvs.srv import Trigger

from sernf_data.ros.diagnostics import diagnostic_array
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node
from sernf_sim.arm_interface import FrankaControllerConfig
from sernf_sim.impedance_arm import FreeBody, ImpedanceArm, ImpedanceArmConfig
from sernf_sim.ros.franka_controller import FrankaControllerServer


@dataclass
class SimArmConfig(FrankaControllerConfig):
    """Parameters of sim_arm_node (declared as ROS parameters with these defaults): the
    controller interface's (topics, frame, recovery) and the simulated arm's."""

    rate_hz: float = 100.0
    """Physics and pose publishing rate (wall clock; physics substeps of 2 ms)."""
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {self.rate_hz}")
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
        self.controller = FrankaControllerServer(self, self.cfg, self.arm)
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._last_tick_ns: int | None = None
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/status", self._on_status)
        self.create_timer(1.0 / self.cfg.rate_hz, self._tick, clock=self._steady)
        self.create_timer(1.0, self._publish_diagnostics, clock=self._steady)
        self.get_logger().info(f"simulated impedance arm up at {self.cfg.rate_hz:g} Hz: {self.controller.describe()}")

    def _tick(self) -> None:
        now_ns = self._steady.now().nanoseconds
        dt = 1.0 / self.cfg.rate_hz if self._last_tick_ns is None else (now_ns - self._last_tick_ns) * 1e-9
        self._last_tick_ns = now_ns
        self.arm.step(min(max(dt, 0.0), 0.05))  # a stalled process must not take one huge step
        self.controller.publish_pose(*self.arm.body.pose())

    def _publish_diagnostics(self) -> None:
        level = DiagnosticStatus.ERROR if self.arm.error else DiagnosticStatus.OK
        self.diag_pub.publish(diagnostic_array(
            self.get_clock().now().to_msg(), "sim_arm", "sim_arm", level,
            "reflex" if self.arm.error else "ok", self._counters()))

    def _counters(self) -> dict[str, object]:
        p, _ = self.arm.body.pose()
        return {**self.controller.counters(), "position": [round(float(v), 6) for v in p]}

    def _on_status(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = True
        response.message = json.dumps(self._counters())
        return response


#: The node's parameters: exactly the fields of this dataclass.
PARAMETERS = SimArmConfig


def main(args: list[str] | None = None) -> None:
    spin_node(SimArmNode, "sim_arm", num_threads=1, args=args)


if __name__ == "__main__":
    main()
