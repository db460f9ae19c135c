"""ORCA hand driver: a ROS 2 lifecycle node over a Dynamixel Protocol 2.0 bus (dynamixel-sdk).

Core modules (no rclpy): ``hand_model`` (joints, servo ids, ranges), ``calibration`` (per-motor
limits, joint↔tick mapping, the calibration file), ``commands`` (validation, clamping, rate limit,
watchdog), ``bus`` (the dynamixel-sdk client), ``hand`` (configure / activate / one control
cycle / fault recovery), ``calibrate`` (the hard-stop calibration routine). ROS lives only in
``orca_hand_node``.
"""
