#!/usr/bin/env python3
"""ROS 1 side of the paper's setup (Panda on franka_ros, policy on ROS 2 via ros1_bridge).

Run on the ROS 1 machine (Noetic, Python 3.8+, numpy), from a checkout of this repository:

    python3 tools/ros1/franka_state_relay.py [_states_topic:=...]

It turns what franka_ros offers into what the ROS 2 franka_bridge reads, using only message
types ros1_bridge carries out of the box:

* ``franka_msgs/FrankaState`` (``/franka_state_controller/franka_states``) -> the measured EE pose
  as ``geometry_msgs/PoseStamped`` on ``/franka/measured_pose`` (frame ``panda_link0``) and the
  error flag (robot_mode reflex / user stop) as ``std_msgs/Bool`` on ``/franka/robot_error``;
* ``std_msgs/Empty`` on ``/franka/error_recovery_request`` (the bridge's
  ``recovery_interface: topic``) -> one goal of franka_ros' actionlib error recovery
  (``/franka_control/error_recovery``), only while an error is present and none is running.

The conversions are franka_bridge's own (src/franka_bridge/franka_bridge/franka_state.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src" / "franka_bridge"))

from franka_bridge.franka_state import pose_from_o_t_ee, robot_mode_is_error  # noqa: E402


def main() -> None:
    import actionlib
    import rospy
    from franka_msgs.msg import ErrorRecoveryAction, ErrorRecoveryGoal, FrankaState
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Bool, Empty

    rospy.init_node("franka_state_relay")
    states_topic = rospy.get_param("~states_topic", "/franka_state_controller/franka_states")
    frame_id = rospy.get_param("~frame_id", "panda_link0")
    pose_pub = rospy.Publisher("/franka/measured_pose", PoseStamped, queue_size=10)
    error_pub = rospy.Publisher("/franka/robot_error", Bool, queue_size=10)
    recovery = actionlib.SimpleActionClient("/franka_control/error_recovery", ErrorRecoveryAction)
    state = {"error": False}

    def on_state(msg: FrankaState) -> None:
        try:
            p, q = pose_from_o_t_ee(msg.O_T_EE)
        except ValueError as exc:
            rospy.logwarn_throttle(1.0, f"franka_states ignored: {exc}")
            return
        out = PoseStamped()
        out.header.stamp = msg.header.stamp
        out.header.frame_id = frame_id
        out.pose.position.x, out.pose.position.y, out.pose.position.z = (float(v) for v in p)
        out.pose.orientation.w, out.pose.orientation.x, out.pose.orientation.y, out.pose.orientation.z = (
            float(v) for v in q)
        pose_pub.publish(out)
        state["error"] = robot_mode_is_error(msg.robot_mode)
        error_pub.publish(Bool(data=state["error"]))

    def on_request(_msg: Empty) -> None:
        if not state["error"]:
            rospy.logwarn("recovery request ignored: the robot reports no error")
            return
        if recovery.simple_state == actionlib.SimpleGoalState.ACTIVE:
            rospy.loginfo("recovery request ignored: a recovery is running")
            return
        if not recovery.wait_for_server(rospy.Duration(1.0)):
            rospy.logerr("recovery request: /franka_control/error_recovery is not available")
            return
        rospy.logwarn("calling /franka_control/error_recovery")
        recovery.send_goal(ErrorRecoveryGoal())

    rospy.Subscriber(states_topic, FrankaState, on_state, queue_size=1)
    rospy.Subscriber("/franka/error_recovery_request", Empty, on_request, queue_size=1)
    rospy.spin()


if __name__ == "__main__":
    main()
