"""The bringup package's ROS shell: code that runs rclpy (docs/design.md §2)."""
