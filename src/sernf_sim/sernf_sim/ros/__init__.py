"""ROS plumbing shared by sernf_sim's nodes (rclpy lives here and in ``*_node.py`` only)."""
