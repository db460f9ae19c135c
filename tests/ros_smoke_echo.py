"""Echo peer for the ROS smoke test: republishes what it receives, in its own process."""

import rclpy
from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory

from sernf_interfaces.msg import ReplayEpisode


class Echo(Node):
    def __init__(self) -> None:
        super().__init__("smoke_echo")
        self.traj_pub = self.create_publisher(JointTrajectory, "/smoke/trajectory_echo", 10)
        self.replay_pub = self.create_publisher(ReplayEpisode, "/smoke/replay_echo", 10)
        self.create_subscription(JointTrajectory, "/smoke/trajectory", self.traj_pub.publish, 10)
        self.create_subscription(ReplayEpisode, "/smoke/replay", self.replay_pub.publish, 10)


def main() -> None:
    rclpy.init()
    node = Echo()
    node.get_logger().info("echo ready")
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        node.get_logger().info("interrupted")
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
