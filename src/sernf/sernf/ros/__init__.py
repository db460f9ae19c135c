"""The bringup package's ROS shell: code that runs rclpy (DESIGN §2)."""
