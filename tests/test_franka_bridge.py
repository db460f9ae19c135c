"""franka_bridge over real DDS against the simulated impedance-controlled arm (sim_arm_node).

The bridge and the arm run as processes in an isolated domain; the test is the policy side
(commands) and the operator (lifecycle, resume), and reads the controller's side of the
boundary (equilibrium topic, the arm's recovery-goal counters).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from graph_probe import GraphProbe
from lifecycle_msgs.msg import Transition
from rclpy.qos import qos_profile_sensor_data
from scipy.spatial.transform import Rotation
from std_srvs.srv import SetBool, Trigger

from sernf_interfaces.msg import EpisodeEvent

pytestmark = pytest.mark.ros

EQUILIBRIUM = "/franka/equilibrium_pose"
# EE frame of the arm at start: hand down (180 deg about base x), then 90 deg about its own z,
# so the EE x axis is the base's -y axis.
START_Q = (Rotation.from_euler("x", math.pi) * Rotation.from_euler("z", math.pi / 2)).as_quat(scalar_first=True)
START_P = (0.5, 0.0, 0.4)
WAIT = 30.0  # generous: the machine is shared; every wait polls a condition


def pose_arrays(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    p, o = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([o.w, o.x, o.y, o.z])


class Operator(GraphProbe):
    """Policy + operator stand-in: publishes commands, drives the lifecycle, records topics."""

    def __init__(self) -> None:
        super().__init__("franka_bridge_test", lifecycle_node="franka_bridge", wait_s=WAIT)
        n = self.node
        self.equilibria: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.executed: list[tuple[np.ndarray, np.ndarray]] = []
        self.measured: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.ee: list[np.ndarray] = []
        self.diagnostics: list[dict[str, str]] = []
        n.create_subscription(PoseStamped, EQUILIBRIUM, lambda m: self.equilibria.append((time.monotonic(), *pose_arrays(m))), 50)
        n.create_subscription(PoseStamped, "/franka_bridge/executed_command", lambda m: self.executed.append(pose_arrays(m)), 50)
        n.create_subscription(PoseStamped, "/franka_robot_state_broadcaster/current_pose",
                              lambda m: self.measured.append((time.monotonic(), *pose_arrays(m))), qos_profile_sensor_data)
        n.create_subscription(PoseStamped, "/franka/ee_pose", lambda m: self.ee.append(pose_arrays(m)[0]), qos_profile_sensor_data)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.episode_events: list[EpisodeEvent] = []
        n.create_subscription(EpisodeEvent, "/sernf/episode", self.episode_events.append, 10)
        self.command_pub = n.create_publisher(PoseStamped, "/franka/relative_pose_command", 10)
        self.resume_client = n.create_client(Trigger, "/franka_bridge/resume")
        self.reflex_client = n.create_client(Trigger, "/sim_arm/inject_reflex")
        self.stream_client = n.create_client(SetBool, "/sim_arm/set_pose_stream")
        self.status_client = n.create_client(Trigger, "/sim_arm/status")

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "franka_bridge":
                self.diagnostics.append({"message": status.message, **{kv.key: kv.value for kv in status.values}})

    def arm_status(self) -> dict:
        return json.loads(self.call_idempotent(self.status_client, Trigger.Request()).message)

    def command(self, translation, rotation=(1.0, 0.0, 0.0, 0.0), frame: str = "ee") -> None:
        msg = PoseStamped()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in translation)
        o = msg.pose.orientation
        o.w, o.x, o.y, o.z = (float(v) for v in rotation)
        self.command_pub.publish(msg)

    def command_and_wait(self, translation, rotation=(1.0, 0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """One command; returns the equilibrium it produced (waits for the executed echo)."""
        n_exec = len(self.executed)
        # The bridge subscribes to commands when it is configured; on a loaded machine discovery
        # can lag the activation, and a command published before it has matched is lost.
        assert self.spin_until(lambda: self.command_pub.get_subscription_count() > 0), "bridge not subscribed"
        self.command(translation, rotation)
        assert self.spin_until(lambda: len(self.executed) > n_exec), "command not executed"
        assert self.spin_until(lambda: len(self.equilibria) > 0)
        return self.executed[-1][0], self.equilibria[-1]

    def latest_measured(self) -> tuple[np.ndarray, np.ndarray]:
        return self.measured[-1][1], self.measured[-1][2]


def start_graph(processes, *bridge_params: str, arm_params: tuple[str, ...] = (),
                command_timeout_s: float = 0.6, activation_timeout_s: float = 10.0) -> tuple[Operator, object, object]:
    args = ["-p", f"initial_orientation:=[{','.join(f'{v:.12f}' for v in START_Q)}]",
            "-p", f"initial_position:=[{','.join(str(v) for v in START_P)}]",
            "-p", "target_filter_time_constant_s:=0.05", "-p", "recovery_duration_s:=0.3", *arm_params]
    arm = processes.python("sim_arm", "-m", "sernf_sim.sim_arm_node", "--ros-args", *args)
    bridge = processes.python(
        "franka_bridge", "-m", "franka_bridge.franka_bridge_node", "--ros-args",
        "-p", "command_frame:=ee", "-p", "pose_frame:=base",
        # a loaded test machine delays messages: generous staleness, still far below the stop test
        "-p", "pose_timeout_s:=0.5", "-p", f"activation_timeout_s:={activation_timeout_s}", "-p", f"command_timeout_s:={command_timeout_s}",
        "-p", "recovery_min_interval_s:=3.0",
        "-p", f"reference_orientation:=[{','.join(f'{v:.12f}' for v in START_Q)}]", *bridge_params)
    op = Operator()
    assert op.state() == "unconfigured"
    assert op.spin_until(lambda: len(op.measured) > 5), "no pose from the simulated arm"
    return op, arm, bridge


def activate(op: Operator) -> None:
    assert op.transition(Transition.TRANSITION_CONFIGURE), "configure failed"
    assert op.state() == "inactive"
    assert op.transition(Transition.TRANSITION_ACTIVATE), "activate failed"
    assert op.state() == "active"


def test_lifecycle_composition_and_limits(processes) -> None:
    # A long watchdog: a hold must not be mistaken for a refused command moving the target.
    op, arm, bridge = start_graph(processes, "-p", "workspace_high:=[0.8,0.45,0.41]", command_timeout_s=30.0)
    try:
        # Commands before activation change nothing.
        op.command([0.01, 0.0, 0.0])
        op.spin_for(0.5)
        assert op.executed == []
        activate(op)
        assert op.spin_until(lambda: len(op.equilibria) > 0), "no equilibrium after activation"
        _, p0, q0 = op.equilibria[-1]
        np.testing.assert_allclose(p0, START_P, atol=2e-3)  # starts at the measured pose
        assert op.spin_until(lambda: len(op.ee) > 0), "no /franka/ee_pose"

        # +x in the EE frame moves along the EE's x axis, which is base -y here.
        executed, (_, p1, q1) = op.command_and_wait([0.01, 0.0, 0.0])
        np.testing.assert_allclose(executed, [0.01, 0.0, 0.0], atol=1e-9)
        measured_p, _ = op.latest_measured()
        assert p1[1] < p0[1] - 0.009, f"expected a move along base -y, got {p1 - p0}"
        assert abs(p1[0] - p0[0]) < 1e-3 and abs(p1[2] - p0[2]) < 1e-3
        assert abs(abs(np.dot(q1, START_Q)) - 1) < 1e-6

        # Per-step clipping: 10 cm requested, max_translation_m (2 cm) applied, direction kept.
        executed, (_, p2, _) = op.command_and_wait([0.0, 0.1, 0.0])
        np.testing.assert_allclose(executed, [0.0, 0.02, 0.0], atol=1e-9)
        # Workspace: 2 cm up (EE -z, the hand points down) from ~0.40 would pass z = 0.41.
        for _ in range(3):
            executed, (_, p3, _) = op.command_and_wait([0.0, 0.0, -0.02])
        assert p3[2] == pytest.approx(0.41, abs=1e-9)
        assert executed[2] > -0.02 + 1e-6  # the executed delta shows the clipped step

        # Invalid commands are refused and leave the equilibrium alone.
        n_eq, n_exec = len(op.equilibria), len(op.executed)
        op.command([math.nan, 0, 0])
        op.command([0, 0, 0], rotation=(0.5, 0, 0, 0))
        op.command([0.01, 0, 0], frame="panda_link0")
        op.spin_for(0.5)
        assert len(op.executed) == n_exec
        assert all(np.allclose(p, p3) for _, p, _ in op.equilibria[n_eq:])  # only holds, no moves
        log = processes.log(bridge)
        assert "NaN" in log and "not a unit quaternion" in log and "frame_id 'panda_link0'" in log
        # ... and counted on /diagnostics, with the clipped ones.
        assert op.spin_until(lambda: any(d.get("commands_refused") == "3" for d in op.diagnostics)), op.diagnostics[-1:]
        report = [d for d in op.diagnostics if d.get("commands_refused") == "3"][-1]
        assert report["mode"] == "forwarding" and int(report["commands_clipped"]) >= 2
        assert report["commands_accepted"] == "5"

        assert op.transition(Transition.TRANSITION_DEACTIVATE) and op.state() == "inactive"
        op.command([0.01, 0, 0])
        op.spin_for(0.3)
        assert len(op.executed) == n_exec
        assert op.transition(Transition.TRANSITION_CLEANUP) and op.state() == "unconfigured"
        assert op.arm_status()["recovery_goals"] == 0  # never without an error
    finally:
        op.close()


def test_hemisphere_continuity(processes) -> None:
    # The arm reports w >= 0 quaternions; rotating about the EE x axis from DOWN crosses w = 0,
    # so the measured quaternion's sign jumps. The equilibria must not.
    start = Rotation.from_euler("x", math.pi) * Rotation.from_euler("x", 0.15)
    q_start = start.as_quat(scalar_first=True)
    op, _, _ = start_graph(processes, "-p", "reanchor_distance_m:=0.0", "-p", "reanchor_angle_rad:=0.0",
                           "-p", "max_orientation_deviation_rad:=3.14159",
                           arm_params=("-p", "canonical_quaternion:=true", "-p",
                                       f"initial_orientation:=[{','.join(f'{v:.12f}' for v in q_start)}]"))
    try:
        activate(op)
        step = Rotation.from_euler("x", -0.1).as_quat(scalar_first=True)
        for _ in range(5):
            op.command_and_wait([0.0, 0.0, 0.0], step)
            op.spin_for(0.15)
        quats = [q for _, _, q in op.equilibria]
        assert len(quats) >= 6
        assert all(np.dot(a, b) > 0.9 for a, b in zip(quats, quats[1:], strict=False)), "equilibrium sign jumped"
        measured = [q for _, _, q in op.measured]
        assert any(np.dot(a, b) < 0 for a, b in zip(measured, measured[1:], strict=False)), \
            "the arm's reported quaternion never flipped: the test did not cross w = 0"
    finally:
        op.close()


def test_stale_pose_and_watchdog(processes) -> None:
    # A soft arm (20 N/m) is still on its way when the watchdog fires.
    op, arm, bridge = start_graph(processes, arm_params=("-p", "translational_stiffness:=20.0"),
                                  activation_timeout_s=2.0)
    try:
        activate(op)
        # Watchdog: a burst of commands, then silence. The equilibrium must settle on the measured
        # pose of the moment the watchdog fired, not on the last commanded target.
        for _ in range(4):
            op.command_and_wait([0.02, 0.0, 0.0])
        last_target = op.equilibria[-1][1]
        t_last = time.monotonic()
        assert op.spin_until(lambda: any(t > t_last + 0.6 and not np.allclose(p, last_target)
                                         for t, p, _ in op.equilibria)), "watchdog never set a hold pose"
        op.spin_for(1.0)
        holds = [p for t, p, _ in op.equilibria if t > t_last + 0.6]
        assert all(np.allclose(h, holds[0]) for h in holds), "the hold pose drifted"
        assert np.linalg.norm(holds[0] - last_target) > 1e-3
        assert "no command for" in processes.log(bridge)
        measured_now, _ = op.latest_measured()
        assert np.linalg.norm(measured_now - holds[0]) < 0.01  # the arm stopped near the hold pose

        # Stale pose: the state stream stops -> commands are refused with the reason.
        n_exec = len(op.executed)
        op.call(op.stream_client, SetBool.Request(data=False))
        op.spin_for(1.0)
        op.command([0.01, 0.0, 0.0])
        op.spin_for(0.5)
        assert len(op.executed) == n_exec
        assert op.spin_until(lambda: "stale" in processes.log(bridge), 10.0), processes.log(bridge)
        # ... and accepted again when it comes back.
        op.call(op.stream_client, SetBool.Request(data=True))
        assert op.spin_until(lambda: (op.command([0.005, 0, 0]) or op.spin_for(0.2) or len(op.executed) > n_exec))
        # Without a pose, activation fails and says why.
        assert op.transition(Transition.TRANSITION_DEACTIVATE) and op.state() == "inactive"
        op.call(op.stream_client, SetBool.Request(data=False))
        op.spin_for(0.8)
        assert not op.transition(Transition.TRANSITION_ACTIVATE)
        assert op.state() == "inactive"
        assert "activate failed: measured robot pose is stale" in processes.log(bridge)
    finally:
        op.close()


@pytest.mark.parametrize("interface", ["action", "topic"])
def test_reflex_single_recovery_and_resume(processes, interface: str) -> None:
    # action: franka_ros2's ErrorRecovery action; topic: requests to the ROS 1 relay (ros1_bridge)
    op, arm, bridge = start_graph(processes, "-p", f"recovery_interface:={interface}")
    try:
        activate(op)
        op.command_and_wait([0.01, 0.0, 0.0])
        op.spin_for(1.0)
        assert op.arm_status()["recovery_goals"] == 0  # no error, no recovery call
        assert not op.episode_events
        op.call(op.reflex_client, Trigger.Request())
        # The running episode is aborted as a device fault (the policy node keeps it out of
        # training until labeled): exactly one ABORT per reflex.
        assert op.spin_until(lambda: len(op.episode_events) >= 1)
        abort = op.episode_events[0]
        assert abort.event == EpisodeEvent.ABORT and "reflex" in abort.reason
        # The bridge calls recovery once; the arm's error clears after recovery_duration_s.
        assert op.spin_until(lambda: op.arm_status()["recoveries"] >= 1), processes.log(bridge)
        assert op.spin_until(lambda: not op.arm_status()["error"])
        # While waiting for ~/resume, commands are refused.
        n_exec = len(op.executed)
        assert op.spin_until(lambda: "waiting for ~/resume" in processes.log(bridge)
                             or (op.command([0.005, 0, 0]) or op.spin_for(0.2)), 10.0)
        op.command([0.005, 0.0, 0.0])
        op.spin_for(0.5)
        assert len(op.executed) == n_exec
        op.spin_for(4.0)  # longer than recovery_min_interval_s: still exactly one call
        status = op.arm_status()
        assert status["recovery_goals"] == 1 and status["recoveries_without_error"] == 0, status
        # Resume on request, then commands move the arm again.
        response = op.call(op.resume_client, Trigger.Request())
        assert response.success, response.message
        executed, _ = op.command_and_wait([0.005, 0.0, 0.0])
        np.testing.assert_allclose(executed, [0.005, 0, 0], atol=1e-9)
        assert not op.call(op.resume_client, Trigger.Request()).success  # nothing to resume
        assert op.arm_status()["recovery_goals"] == 1
        assert len(op.episode_events) == 1
    finally:
        op.close()
