"""The real drivers against the simulated world (sim_world) over real DDS.

``sim_world``, the real ``orca_hand_driver`` (port = the world's bus symlink, calibration = the
one the world writes) and the real ``franka_bridge`` run as processes in an isolated domain.
The test is the policy and the operator: it drives the lifecycles, commands the hand and the
arm on the drivers' command topics, and asserts from topics: the hand's joint_states reach the
targets, the end effector moves by the commanded delta, the cameras publish images with
matching camera_info; an injected servo overload is recovered by the driver, a Franka reflex
stops the bridge until recovery and resume.
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
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_srvs.srv import SetBool, Trigger

from sernf_interfaces.msg import EpisodeEvent
from sernf_sim.hand_pick_place import model as hand_model

pytestmark = pytest.mark.ros

WAIT = 40.0  # generous: the machine is shared; every wait polls a condition
IMAGE = 64
CAMERAS = {"front": "front", "under": "under", "left": "wrist"}  # published name -> MuJoCo camera
# The world's table top is at base z = 0.18: the bridge's box keeps the palm above it.
WORKSPACE_LOW, WORKSPACE_HIGH = (0.20, -0.38, 0.22), (0.80, 0.38, 0.53)


def pose_arrays(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    p, o = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([o.w, o.x, o.y, o.z])


def rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    m = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    return m @ v


def set_parameter(probe: GraphProbe, name: str, value: str) -> None:
    client = probe.node.create_client(SetParameters, "/sim_world/set_parameters")
    request = SetParameters.Request(parameters=[Parameter(name=name, value=ParameterValue(
        type=ParameterType.PARAMETER_STRING, string_value=value))])
    assert probe.call(client, request).results[0].successful


class Probe(GraphProbe):
    def __init__(self) -> None:
        super().__init__("sim_world_test", wait_s=WAIT)
        n = self.node
        self.images: dict[str, list[tuple[float, Image]]] = {c: [] for c in CAMERAS}
        self.infos: dict[str, list[CameraInfo]] = {c: [] for c in CAMERAS}
        for cam in CAMERAS:
            n.create_subscription(Image, f"/cameras/{cam}/image_raw",
                                  lambda m, c=cam: self.images[c].append((time.monotonic(), m)), qos_profile_sensor_data)
            n.create_subscription(CameraInfo, f"/cameras/{cam}/camera_info",
                                  lambda m, c=cam: self.infos[c].append(m), qos_profile_sensor_data)
        self.joint_states: list[tuple[float, JointState]] = []
        n.create_subscription(JointState, "/orca_hand/joint_states",
                              lambda m: self.joint_states.append((time.monotonic(), m)), qos_profile_sensor_data)
        self.ee: list[tuple[float, np.ndarray, np.ndarray]] = []
        n.create_subscription(PoseStamped, "/franka/ee_pose",
                              lambda m: self.ee.append((time.monotonic(), *pose_arrays(m))), qos_profile_sensor_data)
        self.executed_arm: list[PoseStamped] = []
        n.create_subscription(PoseStamped, "/franka_bridge/executed_command", self.executed_arm.append, 50)
        self.episodes: list[EpisodeEvent] = []
        n.create_subscription(EpisodeEvent, "/sernf/episode", self.episodes.append, 10)
        self.diagnostics: dict[str, list[dict[str, str]]] = {}
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.hand_pub = n.create_publisher(JointState, "/orca_hand/joint_command", 10)
        self.arm_pub = n.create_publisher(PoseStamped, "/franka/relative_pose_command", 10)
        self.lifecycle = {name: (n.create_client(ChangeState, f"/{name}/change_state"),
                                 n.create_client(GetState, f"/{name}/get_state"))
                          for name in ("orca_hand_driver", "franka_bridge")}
        self.world = {name: n.create_client(srv, f"/sim_world/{name}") for name, srv in (
            ("status", Trigger), ("reset", Trigger), ("inject_servo_overload", Trigger), ("inject_reflex", Trigger),
            ("set_camera_stream", SetBool))}
        self.resume = n.create_client(Trigger, "/franka_bridge/resume")

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            entry = {"message": status.message, **{kv.key: kv.value for kv in status.values}}
            self.diagnostics.setdefault(status.name, []).append(entry)

    def transition(self, node: str, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(self.lifecycle[node][0], request).success

    def state(self, node: str) -> str:
        return self.call(self.lifecycle[node][1], GetState.Request()).current_state.label

    def world_status(self) -> dict:
        return json.loads(self.call(self.world["status"], Trigger.Request()).message)

    def command_hand(self, targets: dict[str, float]) -> None:
        self.hand_pub.publish(JointState(name=list(targets), position=[float(v) for v in targets.values()]))

    def command_arm(self, translation) -> None:
        msg = PoseStamped()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "panda_EE"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in translation)
        msg.pose.orientation.w = 1.0
        self.arm_pub.publish(msg)

    def spin_commanding(self, predicate, targets: dict[str, float], timeout: float = WAIT) -> bool:
        """Spin while streaming hand targets at 25 Hz (the driver's watchdog needs a stream)."""
        deadline = time.monotonic() + timeout
        next_pub = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_pub:
                self.command_hand(targets)
                next_pub = time.monotonic() + 0.04
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.01)
        return predicate()

    def joint_positions(self, since: float = 0.0) -> dict[str, float] | None:
        recent = [m for t, m in self.joint_states if t >= since]
        if not recent:
            return None
        return dict(zip(recent[-1].name, recent[-1].position, strict=True))


def test_real_drivers_run_against_the_world(processes, tmp_path) -> None:
    link = tmp_path / "dev" / "orca_hand"
    calibration = tmp_path / "orca_v1_right.calibration.yaml"
    world = processes.python(
        "sim_world", "-m", "sernf_sim.sim_world_node", "--ros-args",
        "-p", f"bus_link:={link}", "-p", f"calibration_file:={calibration}", "-p", f"image_size:={IMAGE}",
        "-p", "first_episode_after_s:=0.5", "-p", "max_steps:=1000", "-p", "recovery_duration_s:=0.3")
    probe = Probe()
    try:
        # -- the world is up: its bus link, calibration and cameras --------------------------------
        assert probe.spin_until(lambda: link.is_symlink() and calibration.is_file()), processes.log(world)
        hand = processes.python(
            "orca_hand_driver", "-m", "orca_hand_driver.orca_hand_node", "--ros-args",
            "-p", f"port:={link}", "-p", f"calibration_file:={calibration}", "-p", "read_timeout_ms:=60.0",
            "-p", "max_failed_cycles:=8", "-p", "reboot_wait_s:=0.1", "-p", "command_timeout_s:=1.0")
        bridge = processes.python(
            "franka_bridge", "-m", "franka_bridge.franka_bridge_node", "--ros-args",
            "-p", "pose_frame:=base", "-p", "pose_timeout_s:=0.5", "-p", "activation_timeout_s:=10.0",
            "-p", "command_timeout_s:=5.0", "-p", "recovery_min_interval_s:=1.0",
            "-p", f"workspace_low:={list(WORKSPACE_LOW)}", "-p", f"workspace_high:={list(WORKSPACE_HIGH)}")
        assert probe.spin_until(lambda: all(len(v) >= 2 for v in probe.images.values())
                                and all(probe.infos.values())), processes.log(world)
        model = hand_model.load_model()
        for cam, source in CAMERAS.items():
            image, info = probe.images[cam][-1][1], probe.infos[cam][-1]
            assert (image.width, image.height, image.encoding, image.step) == (IMAGE, IMAGE, "rgb8", 3 * IMAGE)
            assert len(image.data) == IMAGE * IMAGE * 3
            assert info.header.frame_id == image.header.frame_id == f"{cam}_optical_frame"
            assert (info.width, info.height) == (IMAGE, IMAGE)
            f = 0.5 * IMAGE / math.tan(math.radians(model.cam_fovy[model.camera(source).id]) / 2)
            np.testing.assert_allclose(info.k, [f, 0, (IMAGE - 1) / 2, 0, f, (IMAGE - 1) / 2, 0, 0, 1], rtol=1e-6)
        # The first episode started by itself; a reset aborts it and starts the next.
        assert probe.spin_until(lambda: probe.world_status()["episodes_started"] >= 1)
        assert probe.call(probe.world["reset"], Trigger.Request()).success
        assert probe.spin_until(lambda: [e.event for e in probe.episodes[-2:]] == [EpisodeEvent.ABORT, EpisodeEvent.START])
        assert probe.episodes[-1].episode_id == "sim-0-00002" and probe.episodes[-1].reason == "reset"

        # -- the drivers configure and activate against the world ---------------------------------
        for node in ("orca_hand_driver", "franka_bridge"):
            assert probe.transition(node, Transition.TRANSITION_CONFIGURE), processes.log(hand if "orca" in node else bridge)
            assert probe.transition(node, Transition.TRANSITION_ACTIVATE), processes.log(hand if "orca" in node else bridge)
            assert probe.state(node) == "active"

        # -- hand: joint_states reach the commanded targets ---------------------------------------
        targets = {"index_mcp": 0.9, "middle_mcp": 0.6, "ring_pip": 0.5, "thumb_mcp": 0.3}

        def reached(goal: dict[str, float], since: float = 0.0) -> bool:
            q = probe.joint_positions(since)
            return q is not None and all(abs(q[n] - v) < 0.06 for n, v in goal.items())

        assert probe.spin_commanding(lambda: reached(targets), targets), \
            (probe.joint_positions(), processes.log(hand)[-2000:])

        # -- arm: the EE moves by the commanded delta ---------------------------------------------
        assert probe.spin_until(lambda: len(probe.ee) > 3)
        _, p0, q0 = probe.ee[-1]
        np.testing.assert_allclose(p0, [0.5, 0.0, 0.4], atol=0.01)  # the world's home, base frame
        delta = np.array([0.0, 0.012, 0.01])  # EE frame, within the bridge's 2 cm step limit
        n_exec = len(probe.executed_arm)
        probe.command_arm(delta)
        assert probe.spin_until(lambda: len(probe.executed_arm) > n_exec), processes.log(bridge)[-2000:]
        np.testing.assert_allclose(pose_arrays(probe.executed_arm[-1])[0], delta, atol=1e-9)
        expected = p0 + rotate(q0, delta)
        assert expected[2] < p0[2] - 0.009  # EE +z points down (the hand looks at the table)
        assert probe.spin_until(lambda: np.linalg.norm(probe.ee[-1][1] - expected) < 0.004), \
            (probe.ee[-1][1], expected)

        # -- a servo overload: the driver reboots the servo and the finger follows again --------------
        t_overload = time.monotonic()
        assert probe.call(probe.world["inject_servo_overload"], Trigger.Request()).success
        servo = "orca_hand_driver: servo 15 (index_mcp)"
        assert probe.spin_commanding(lambda: probe.world_status()["servo_reboots"] >= 1, targets), \
            processes.log(hand)[-2000:]
        assert probe.spin_commanding(lambda: any(d.get("reboots") == "1" for d in probe.diagnostics.get(servo, [])),
                                     targets)
        moved = {**targets, "index_mcp": 0.4}
        assert probe.spin_commanding(lambda: reached(moved, since=t_overload), moved), probe.joint_positions()
        assert probe.state("orca_hand_driver") == "active"

        # -- a reflex: the bridge stops forwarding until recovery and resume ------------------------
        assert probe.call(probe.world["inject_reflex"], Trigger.Request()).success
        assert probe.spin_until(lambda: any(d.get("mode") in ("reflex", "awaiting_resume")
                                            for d in probe.diagnostics.get("franka_bridge", [])[-2:]))
        _, p_reflex, _ = probe.ee[-1]
        n_exec = len(probe.executed_arm)
        probe.command_arm([0.0, -0.02, 0.0])
        probe.spin_for(1.0)
        assert len(probe.executed_arm) == n_exec, "the bridge forwarded a command during a reflex"
        assert np.linalg.norm(probe.ee[-1][1] - p_reflex) < 0.003
        # The bridge recovers the arm through franka's action, then waits for the operator.
        assert probe.spin_until(lambda: probe.world_status()["arm"]["recoveries"] >= 1)
        assert not probe.world_status()["arm"]["error"]
        assert probe.spin_until(lambda: probe.call(probe.resume, Trigger.Request()).success, timeout=10.0)
        n_exec = len(probe.executed_arm)
        probe.command_arm([0.0, -0.02, 0.0])
        assert probe.spin_until(lambda: len(probe.executed_arm) > n_exec), "no forwarding after resume"
        assert probe.world_status()["arm"]["recoveries_without_error"] == 0

        # -- cameras stop and restart: all of them, then one (camera_stream_hook) -------------------
        assert probe.call(probe.world["set_camera_stream"], SetBool.Request(data=False)).success
        probe.spin_for(0.5)
        t_off = time.monotonic()
        probe.spin_for(1.0)
        assert not any(t > t_off for images in probe.images.values() for t, _ in images)
        assert probe.call(probe.world["set_camera_stream"], SetBool.Request(data=True)).success
        assert probe.spin_until(lambda: all(any(t > t_off + 1.0 for t, _ in images) for images in probe.images.values()))
        set_parameter(probe, "camera_stream_hook", "under")
        assert probe.call(probe.world["set_camera_stream"], SetBool.Request(data=False)).success
        probe.spin_for(0.5)
        t_off = time.monotonic()
        assert probe.spin_until(lambda: sum(t > t_off for t, _ in probe.images["front"]) >= 5)
        assert not any(t > t_off for t, _ in probe.images["under"])
        assert probe.world_status()["stopped_cameras"] == ["under"]
        # The world's own diagnostics: it keeps up with real time.
        assert probe.spin_until(lambda: bool(probe.diagnostics.get("sim_world")))
        assert float(probe.diagnostics["sim_world"][-1]["real_time_factor"]) > 0.5
    finally:
        probe.close()
    processes.stop_all()
    assert not link.exists(), "the world left its bus link behind"
