"""OAK cameras (depthai v3) for SERNF: a pure core (pipeline plan, intrinsics, frame conversion,
stream statistics, the capture loop with reconnection) and a thin ROS 2 lifecycle node."""
