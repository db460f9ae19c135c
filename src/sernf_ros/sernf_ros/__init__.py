"""The ROS plumbing every SERNF node shares, and nothing else: parameters declared from typed
config dataclasses, one process main with an orderly shutdown, diagnostics messages and stamp
conversions.

It depends only on rclpy and standard messages, so drivers, teleoperation and perception use it
without pulling in the model (torch) or the learner (docs/design.md §2: dependencies point down).
"""
