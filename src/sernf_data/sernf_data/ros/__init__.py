"""The ROS plumbing every SERNF node shares, and nothing else: parameters declared from typed
config dataclasses, one process main with an orderly shutdown, diagnostics messages, stamp
conversions and the device lifecycle node.

It lives in the bottom package (its ``ros/`` subpackage: the rest of sernf_data imports no rclpy),
so drivers, teleoperation and perception use it without pulling in the model (torch) or the
learner (docs/design.md §2: dependencies point down).
"""
