"""teleop_rokoko over real DDS and real UDP: Studio Live stand-in → node → command topics."""

from __future__ import annotations

import socket
import sys
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from graph_probe import GraphProbe
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from sernf_sim import studio_live_sender as stand_in
from teleop_rokoko.hand_kinematics import load_hand_joints

pytestmark = pytest.mark.ros

STALE_S = 0.1
RATE_HZ = 30.0
EE_P = (0.5, 0.0, 0.4)
EE_Q_XYZW = (1.0, 0.0, 0.0, 0.0)  # pointing down


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator(GraphProbe):
    """The test's side of the graph: listens to the commands, plays the arm's EE pose, calls
    the clutch services."""

    def __init__(self) -> None:
        super().__init__("teleop_test_operator")
        self.hand: list[tuple[float, JointState]] = []
        self.arm: list[tuple[float, PoseStamped]] = []
        self.diagnostics: list[DiagnosticArray] = []
        n = self.node
        n.create_subscription(JointState, "/orca_hand/joint_command",
                              lambda m: self.hand.append((time.time(), m)), 50)
        n.create_subscription(PoseStamped, "/franka/relative_pose_command",
                              lambda m: self.arm.append((time.time(), m)), 50)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.ee_pub = n.create_publisher(PoseStamped, "/franka/ee_pose", 10)
        n.create_timer(0.05, self._publish_ee)
        self.clients = {name: n.create_client(Trigger, f"/teleop_rokoko/{name}")
                        for name in ("engage", "disengage", "calibrate_frame")}

    def _publish_ee(self) -> None:
        msg = PoseStamped()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "panda_link0"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = EE_P
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = EE_Q_XYZW
        self.ee_pub.publish(msg)

    def trigger(self, name: str, timeout: float = 30.0) -> Trigger.Response:
        return self.call(self.clients[name], Trigger.Request(), timeout)


class Glove(threading.Thread):
    """Studio Live datagrams from this process (so the test knows when the last one left)."""

    def __init__(self, port: int, pose: str = "open") -> None:
        super().__init__(daemon=True)
        self.sender = stand_in.StudioLiveSender(port=port, host="127.0.0.1", rate_hz=60.0)
        self.pose = stand_in.hand_pose(pose)
        self.wrist = np.array([0.35, -0.2, 1.1])
        self.running = threading.Event()
        self.running.set()
        self.last_send = 0.0

    def run(self) -> None:
        t0 = time.monotonic()
        while self.running.is_set():
            packet = stand_in.make_packet(self.pose, self.wrist.copy(), np.eye(3), time.monotonic() - t0)
            self.sender.send_packet(packet)
            self.last_send = time.time()
            time.sleep(1 / 60)

    def stop(self) -> float:
        self.running.clear()
        self.join(timeout=5)
        self.sender.close()
        return self.last_send


def start_node(processes, port: int, *extra: str):
    return processes.python(
        "teleop", "-m", "teleop_rokoko.teleop_node", "--ros-args",
        "-p", f"port:={port}", "-p", "bind_address:=127.0.0.1", "-p", f"stale_after_s:={STALE_S}",
        "-p", f"rate_hz:={RATE_HZ}", *extra)


def delta(msg: PoseStamped) -> np.ndarray:
    return np.array([msg.pose.position.x, msg.pose.position.y, msg.pose.position.z])


def test_stand_in_stream_drives_both_command_topics(processes) -> None:
    port = free_udp_port()
    node = start_node(processes, port)
    sender = processes.python("sender", "-m", "sernf_sim.studio_live_sender", "--script", "demo",
                              "--port", str(port), "--lz4", "--malformed-every", "5")
    op = Operator()
    try:
        assert op.spin_until(lambda: len(op.hand) >= 20 and len(op.arm) >= 20, 60.0), (
            f"no commands: node log:\n{processes.log(node)}\nsender log:\n{processes.log(sender)}")
        joints = load_hand_joints()
        for _, msg in op.hand[-20:]:
            assert tuple(msg.name) == joints.names
            q = np.array(msg.position)
            assert np.all(q >= joints.lower - 1e-9) and np.all(q <= joints.upper + 1e-9)
        # Disengaged: zero deltas, identity rotations, paired with the hand by stamp.
        for _, msg in op.arm[-20:]:
            np.testing.assert_array_equal(delta(msg), 0.0)
            assert msg.pose.orientation.w == pytest.approx(1.0)
        hand_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in op.hand}
        assert sum((m.header.stamp.sec, m.header.stamp.nanosec) in hand_stamps for _, m in op.arm) >= 10
        # The demo script closes the hand: some finger flexes beyond 60 degrees at some point.
        index_mcp = joints.index("index_mcp")
        assert op.spin_until(lambda: max(m.position[index_mcp] for _, m in op.hand) > np.radians(60), 30.0)
        answer = op.trigger("engage")
        assert answer.success, answer.message
        engaged_from = len(op.arm)
        # The demo's wrist circles move the arm once engaged.
        assert op.spin_until(lambda: any(np.linalg.norm(delta(m)) > 1e-4 for _, m in op.arm[engaged_from:]), 30.0)
        assert all(np.linalg.norm(delta(m)) <= 0.01 + 1e-9 for _, m in op.arm)
        # Malformed datagrams were counted by reason, and the node kept going.
        def drops() -> int:
            if not op.diagnostics:
                return 0
            values = {kv.key: kv.value for kv in op.diagnostics[-1].status[0].values}
            return sum(int(v) for k, v in values.items() if k.startswith("dropped_"))
        assert op.spin_until(lambda: drops() > 0, 30.0)
        assert node.poll() is None
    finally:
        op.close()


def test_clutch_and_stale_stream_hold(processes) -> None:
    port = free_udp_port()
    node = start_node(processes, port)
    glove = Glove(port)
    glove.start()
    op = Operator()
    try:
        assert op.spin_until(lambda: len(op.arm) >= 5, 60.0), processes.log(node)
        assert op.trigger("engage").success
        # Hand forward 4 cm (glove world +x = robot +x; EE points down: EE-frame +x = base +x).
        glove.wrist = glove.wrist + [0.04, 0.0, 0.0]
        start = len(op.arm)
        assert op.spin_until(lambda: sum(delta(m)[0] for _, m in op.arm[start:]) > 0.035, 30.0)
        total = sum(delta(m) for _, m in op.arm[start:])
        assert total[0] == pytest.approx(0.04, abs=0.005) and abs(total[1]) < 0.005
        # Disengaged: the operator moves back 20 cm; no arm motion at all.
        assert op.trigger("disengage").success
        start = len(op.arm)
        glove.wrist = glove.wrist - [0.2, 0.0, 0.0]
        op.spin_for(1.0)
        assert len(op.arm) - start >= 10
        assert all(np.linalg.norm(delta(m)) == 0.0 for _, m in op.arm[start:])
        # Re-engaged at the new place: no jump (re-centred), then relative motion again.
        assert op.trigger("engage").success
        start = len(op.arm)
        op.spin_for(0.5)
        assert all(np.linalg.norm(delta(m)) < 1e-6 for _, m in op.arm[start:])
        glove.wrist = glove.wrist + [0.0, 0.02, 0.0]
        assert op.spin_until(lambda: abs(sum(delta(m)[1] for _, m in op.arm[start:])) > 0.015, 30.0)
        # Stale stream: the node stops commanding within stale_after_s + one tick.
        last_send = glove.stop()
        op.spin_for(1.5)
        late = [m for _, m in op.hand + op.arm
                if m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 > last_send + STALE_S + 1 / RATE_HZ + 0.05]
        assert not late, f"{len(late)} commands after the stream went stale"
        assert op.spin_until(lambda: op.diagnostics and "stale" in op.diagnostics[-1].status[0].message, 10.0)
        # The clutch dropped with the stream: engaging now is refused with the reason.
        answer = op.trigger("engage")
        assert not answer.success and "stale" in answer.message, processes.log(node)
        assert node.poll() is None
    except TimeoutError:
        print(processes.log(node))
        raise
    finally:
        glove.running.clear()
        op.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
