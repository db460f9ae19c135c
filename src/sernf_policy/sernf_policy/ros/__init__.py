"""ROS-side helpers shared by the nodes (the only non-node modules importing rclpy)."""
