"""Glove teleoperation: Rokoko Studio Live → ORCA hand joint targets + Franka relative EE commands.

Pure core (no rclpy): ``studio_live`` (UDP receiver and packet parser), ``frames`` (rotations and
the Studio → robot frame change), ``hand_kinematics`` (the ORCA-like hand model),
``retargeting`` (key-vector retargeting and per-operator calibration), ``wrist`` (clutch and
relative end-effector commands). ROS lives in ``teleop_node``.
"""
