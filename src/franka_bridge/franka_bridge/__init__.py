"""franka_bridge: relative end-effector commands -> Franka Cartesian impedance equilibrium poses.

The pure core (``pose_math``, ``config``, ``core``, ``franka_state``) imports no rclpy and no
message types; ``franka_bridge_node`` is the thin lifecycle-node shell around it.
"""
