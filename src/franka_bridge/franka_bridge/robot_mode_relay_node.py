"""robot_mode_relay: franka_ros2's robot state -> the bridge's error flag (std_msgs/Bool).

Subscribes ``franka_msgs/msg/FrankaRobotState`` (``/franka_robot_state_broadcaster/robot_state``,
1 kHz) and publishes ``robot_mode in ERROR_MODES`` (reflex, user stop) on the error topic: at
once on every change and at ``publish_rate_hz`` otherwise, so a late subscriber learns the state.
Needs franka_ros2's franka_msgs (robot PC); the project's tests use the simulated arm, which
publishes the flag itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from std_msgs.msg import Bool

from franka_bridge.franka_state import robot_mode_is_error
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node


@dataclass
class RobotModeRelayConfig:
    """Parameters of robot_mode_relay."""

    robot_state_topic: str = "/franka_robot_state_broadcaster/robot_state"
    """franka_msgs/msg/FrankaRobotState from franka_ros2's state broadcaster."""
    error_topic: str = "/franka/robot_error"
    """Published std_msgs/Bool (the bridge's error_topic)."""
    publish_rate_hz: float = 20.0
    """Republish rate of an unchanged flag."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.publish_rate_hz) and self.publish_rate_hz > 0):
            raise ValueError(f"publish_rate_hz must be positive, got {self.publish_rate_hz}")


class RobotModeRelayNode(Node):
    def __init__(self) -> None:
        super().__init__("robot_mode_relay")
        self.cfg = declare_config(self, RobotModeRelayConfig)
        try:  # franka_ros2 only: the test stand-in of franka_msgs has no messages
            from franka_msgs.msg import FrankaRobotState
        except ImportError as exc:
            raise ValueError(f"franka_msgs/msg/FrankaRobotState is not available ({exc}): source "
                             "franka_ros2's workspace on the robot PC") from exc

        self._error: bool | None = None
        self._last_publish_ns = 0
        self._period_ns = int(1e9 / self.cfg.publish_rate_hz)
        self.pub = self.create_publisher(Bool, self.cfg.error_topic, 10)
        # Sensor-data QoS (best effort) matches both reliable and best-effort publishers.
        self.create_subscription(FrankaRobotState, self.cfg.robot_state_topic, self._on_state,
                                 qos_profile_sensor_data)
        self.get_logger().info(f"relaying robot_mode of {self.cfg.robot_state_topic} -> {self.cfg.error_topic}")

    def _on_state(self, msg) -> None:
        error = robot_mode_is_error(msg.robot_mode)
        now = self.get_clock().now().nanoseconds
        if error != self._error or now - self._last_publish_ns >= self._period_ns:
            if error != self._error and self._error is not None:
                self.get_logger().warning(f"robot_mode {msg.robot_mode}: error {'set' if error else 'cleared'}")
            self._error = error
            self._last_publish_ns = now
            self.pub.publish(Bool(data=error))


#: The node's parameters: exactly the fields of this dataclass.
PARAMETERS = RobotModeRelayConfig


def main(args: list[str] | None = None) -> None:
    spin_node(RobotModeRelayNode, "robot_mode_relay", num_threads=1, args=args)


if __name__ == "__main__":
    main()
