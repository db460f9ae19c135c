"""sim_robot_node over real DDS: the simulated robot behind the drivers' topics."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import Trigger

from sernf_interfaces.msg import EpisodeEvent
from sernf_sim.hand_pick_place import env as hand_env
from sernf_sim.hand_pick_place import model as hand_model
from sernf_sim.hand_pick_place import rotations
from sernf_sim.hand_pick_place.config import test_configs

pytestmark = pytest.mark.ros


class Driver:
    """The test's side of the graph: a policy stand-in that commands and listens."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("sim_test_driver", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.ee: list[np.ndarray] = []
        self.joints: list[JointState] = []
        self.objects: list[np.ndarray] = []
        self.events: list[EpisodeEvent] = []
        n = self.node
        n.create_subscription(PoseStamped, "/franka/ee_pose", self._on_ee, 10)
        n.create_subscription(JointState, "/orca_hand/joint_states", self.joints.append, 10)
        n.create_subscription(Float32MultiArray, "/sim/object_state",
                              lambda m: self.objects.append(np.array(m.data)), 10)
        n.create_subscription(EpisodeEvent, "/sernf/episode", self.events.append, 10)
        self.arm = n.create_publisher(PoseStamped, "/franka/relative_pose_command", 10)
        self.hand = n.create_publisher(JointState, "/orca_hand/joint_command", 10)
        self.reset_client = n.create_client(Trigger, "/sim_robot/reset")
        self.param_client = n.create_client(SetParameters, "/sim_robot/set_parameters")

    def _on_ee(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        self.ee.append(np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z]))

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def call(self, client, request, timeout: float = 30.0):
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout), f"{client.srv_name} did not answer"
        return future.result()

    def command(self, delta: np.ndarray, hand_targets: np.ndarray, stamp: Any = None) -> None:
        """One action (arm delta + hand targets) under one stamp (default: now)."""
        stamp = stamp or self.node.get_clock().now().to_msg()
        arm = PoseStamped()
        arm.header.stamp = stamp
        arm.pose.position.x, arm.pose.position.y, arm.pose.position.z = map(float, delta[:3])
        o = arm.pose.orientation
        o.w, o.x, o.y, o.z = map(float, delta[3:7])
        hand = JointState()
        hand.header.stamp = stamp
        hand.name = [s.name for s in hand_model.FINGER_JOINTS]
        hand.position = [float(v) for v in hand_targets]
        self.arm.publish(arm)
        self.hand.publish(hand)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def driver():
    d = Driver()
    try:
        yield d
    finally:
        d.close()


def _start_sim(processes, *params: str):
    args = ["-m", "sernf_sim.sim_robot_node", "--ros-args", "-r", "__node:=sim_robot"]
    for p in params:
        args += ["-p", p]
    return processes.python("sim_robot", *args)


def test_relative_commands_move_the_end_effector_in_its_own_frame(processes, driver):
    sim = _start_sim(processes, "max_steps:=200")
    assert driver.spin_until(lambda: len(driver.ee) > 0, 60), processes.log(sim)
    response = driver.call(driver.reset_client, Trigger.Request())
    assert response.success, response.message
    assert driver.spin_until(lambda: any(e.event == EpisodeEvent.START for e in driver.events), 10)
    driver.spin_until(lambda: False, 0.3)
    start = driver.ee[-1].copy()
    home_joints = np.array(driver.joints[-1].position)
    delta = np.array([0.02, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    for _ in range(5):
        driver.command(delta, home_joints)
        driver.spin_until(lambda: False, 0.1)
    driver.spin_until(lambda: False, 0.5)
    moved = driver.ee[-1][:3] - start[:3]
    # +x in the end-effector frame = the EE's current x axis expressed in the world.
    ee_x = rotations.to_matrix(start[3:7][None])[0][:, 0]
    assert np.linalg.norm(moved) > 0.05, f"EE barely moved: {moved}"
    cos = moved @ ee_x / np.linalg.norm(moved)
    assert cos > 0.95, f"EE moved along {moved}, its x axis is {ee_x}"
    assert sim.poll() is None, processes.log(sim)


def test_reset_to_a_test_configuration_and_time_limit_ends_the_episode(processes, driver):
    sim = _start_sim(processes, "max_steps:=5")
    assert driver.spin_until(lambda: len(driver.objects) > 0, 60), processes.log(sim)
    request = SetParameters.Request()
    request.parameters = [Parameter(name="reset_config", value=ParameterValue(
        type=ParameterType.PARAMETER_INTEGER, integer_value=3))]
    result = driver.call(driver.param_client, request)
    assert result.results[0].successful, result.results[0].reason
    driver.objects.clear()
    assert driver.call(driver.reset_client, Trigger.Request()).success
    assert driver.spin_until(lambda: any(e.event == EpisodeEvent.END for e in driver.events), 10), \
        processes.log(sim)
    start_event = next(e for e in driver.events if e.event == EpisodeEvent.START)
    end_event = next(e for e in driver.events if e.event == EpisodeEvent.END)
    assert start_event.reason == "test_config_3"
    assert end_event.reason == "time_limit" and end_event.episode_id == start_event.episode_id
    # The first state after the reset is the one the task itself gives for test config 3.
    local = hand_env.make_env("nominal", num_envs=1, render_images=False)
    expected = local.reset(configs=[test_configs()[3]])["object_state"][0]
    np.testing.assert_allclose(driver.objects[0], expected, atol=1e-4)


def test_malformed_commands_are_rejected_and_the_robot_holds(processes, driver):
    sim = _start_sim(processes, "max_steps:=200")
    assert driver.spin_until(lambda: len(driver.ee) > 0, 60), processes.log(sim)
    assert driver.call(driver.reset_client, Trigger.Request()).success
    driver.spin_until(lambda: False, 0.3)
    start = driver.ee[-1].copy()
    joints = np.array(driver.joints[-1].position)
    for _ in range(4):
        driver.command(np.array([np.nan, 0, 0, 1, 0, 0, 0]), joints)  # NaN delta
        driver.command(np.array([0.02, 0, 0, 1, 0, 0, 0]), joints[:3])  # too few joints
        driver.spin_until(lambda: False, 0.1)
    driver.spin_until(lambda: False, 0.4)
    assert np.linalg.norm(driver.ee[-1][:3] - start[:3]) < 2e-3
    assert sim.poll() is None
    assert "rejected" in processes.log(sim)


def test_publish_clock_at_speed_advances_simulated_time_one_period_per_step(processes, driver):
    from rosgraph_msgs.msg import Clock

    clocks: list[int] = []
    driver.node.create_subscription(Clock, "/clock", lambda m: clocks.append(
        m.clock.sec * 1_000_000_000 + m.clock.nanosec), 50)
    sim = _start_sim(processes, "publish_clock:=true", "speed:=4.0", "max_steps:=30")
    assert driver.spin_until(lambda: len(driver.ee) > 0 and len(clocks) > 2, 60), processes.log(sim)
    assert driver.call(driver.reset_client, Trigger.Request()).success
    driver.ee.clear()
    stamps: list[int] = []
    driver.node.create_subscription(PoseStamped, "/franka/ee_pose", lambda m: stamps.append(
        m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec), 50)
    assert driver.spin_until(lambda: any(e.event == EpisodeEvent.END for e in driver.events), 20), processes.log(sim)
    # /clock moves in whole control periods (10 Hz -> 100 ms), strictly forward.
    steps = np.diff(np.array(clocks))
    assert len(steps) > 10 and np.all(steps > 0) and np.all(steps % 100_000_000 == 0), steps[:20]
    # Messages carry simulated time: consecutive observation stamps are one period apart.
    assert len(stamps) > 10
    np.testing.assert_array_equal(np.diff(np.array(stamps)) % 100_000_000, 0)
    end = next(e for e in driver.events if e.event == EpisodeEvent.END)
    end_ns = end.header.stamp.sec * 1_000_000_000 + end.header.stamp.nanosec
    # The clock message of the last step is published after the episode end: let it arrive.
    assert driver.spin_until(lambda: clocks[-1] >= end_ns, 5.0), (end_ns, clocks[-3:])
    assert clocks[0] <= end_ns


def test_lockstep_does_not_wait_for_a_silent_commander(processes, driver):
    """A policy in a safety hold sends nothing: after one timed-out wait the robot holds at the
    simulator's speed (not one timeout per remaining step), and the next episode waits again."""
    from rosgraph_msgs.msg import Clock

    clocks: list[int] = []
    driver.node.create_subscription(Clock, "/clock", lambda m: clocks.append(
        m.clock.sec * 1_000_000_000 + m.clock.nanosec), 50)
    stamps: list[Any] = []
    driver.node.create_subscription(PoseStamped, "/franka/ee_pose", lambda m: stamps.append(m.header.stamp), 50)
    sim = _start_sim(processes, "publish_clock:=true", "lockstep_timeout_s:=2.0", "max_steps:=40", "speed:=5.0")
    assert driver.spin_until(lambda: len(driver.ee) > 0 and len(clocks) > 0, 60), processes.log(sim)
    assert driver.call(driver.reset_client, Trigger.Request()).success
    assert driver.spin_until(lambda: any(e.event == EpisodeEvent.START for e in driver.events), 10)
    driver.spin_until(lambda: False, 0.3)  # the new episode's first state
    home = np.array(driver.joints[-1].position)
    for _ in range(2):  # two steps in lockstep
        current = stamps[-1]
        driver.command(np.array([0.01, 0, 0, 1.0, 0, 0, 0]), home, stamp=current)
        now_ns = current.sec * 1_000_000_000 + current.nanosec
        assert driver.spin_until(lambda now_ns=now_ns: clocks[-1] > now_ns, 5.0), processes.log(sim)
    # Silence: one 2 s wait, then the other 37 steps at 5x (0.02 s each), not 37 x 2 s.
    t0 = time.monotonic()
    assert driver.spin_until(lambda: any(e.event == EpisodeEvent.END for e in driver.events), 30.0), processes.log(sim)
    assert time.monotonic() - t0 < 15.0, f"the silent episode took {time.monotonic() - t0:.1f} s"
    import re

    assert driver.spin_until(lambda: "ended: time_limit after 40 steps" in processes.log(sim), 5.0), processes.log(sim)
    held = int(re.search(r"after 40 steps \((\d+) without a fresh command", processes.log(sim)).group(1))
    assert held >= 37, processes.log(sim)  # the two commanded steps (maybe one late) and the silent rest
    # A new episode: the commander is presumed alive again, simulated time stands still for it.
    assert driver.call(driver.reset_client, Trigger.Request()).success
    assert driver.spin_until(lambda: sum(e.event == EpisodeEvent.START for e in driver.events) == 2, 10)
    driver.spin_until(lambda: False, 0.3)
    paused_at = clocks[-1]
    driver.spin_until(lambda: False, 1.0)
    assert clocks[-1] == paused_at, "the new episode did not wait for its first command"


def test_lockstep_waits_for_the_command_stamped_with_the_current_state(processes, driver):
    from builtin_interfaces.msg import Time as TimeMsg
    from rosgraph_msgs.msg import Clock

    clocks: list[int] = []
    stamps: list[TimeMsg] = []
    driver.node.create_subscription(Clock, "/clock", lambda m: clocks.append(
        m.clock.sec * 1_000_000_000 + m.clock.nanosec), 50)
    driver.node.create_subscription(PoseStamped, "/franka/ee_pose", lambda m: stamps.append(m.header.stamp), 50)
    sim = _start_sim(processes, "publish_clock:=true", "lockstep_timeout_s:=30.0", "max_steps:=50")
    assert driver.spin_until(lambda: len(driver.ee) > 0 and len(clocks) > 0, 60), processes.log(sim)
    assert driver.call(driver.reset_client, Trigger.Request()).success
    assert driver.spin_until(lambda: any(e.event == EpisodeEvent.START for e in driver.events), 10)
    # No command: simulated time stands still, the state keeps being published (unchanged).
    driver.spin_until(lambda: False, 0.5)
    paused_at = clocks[-1]
    ee_count = len(driver.ee)
    driver.spin_until(lambda: False, 1.0)
    assert clocks[-1] == paused_at, "simulated time advanced without a command in lockstep"
    assert len(driver.ee) > ee_count + 3, "the paused robot stopped publishing its state"
    assert np.allclose(driver.ee[-1], driver.ee[ee_count])
    # A command stamped with an older time is late: dropped, the sim still waits.
    start = driver.ee[-1].copy()
    home = np.array(driver.joints[-1].position)
    current = stamps[-1]
    old = TimeMsg(sec=current.sec - 1, nanosec=current.nanosec)
    driver.command(np.array([0.02, 0, 0, 1.0, 0, 0, 0]), home, stamp=old)
    driver.spin_until(lambda: False, 0.5)
    assert clocks[-1] == paused_at
    # The command for the current state: one step, exactly one period of simulated time.
    for _ in range(3):
        current = stamps[-1]
        driver.command(np.array([0.02, 0, 0, 1.0, 0, 0, 0]), home, stamp=current)
        now_ns = current.sec * 1_000_000_000 + current.nanosec
        assert driver.spin_until(lambda now_ns=now_ns: clocks[-1] > now_ns, 5.0), processes.log(sim)
        assert clocks[-1] == now_ns + 100_000_000
        driver.spin_until(lambda: False, 0.2)
    assert driver.ee[-1][0] - start[0] > 0.04, f"the EE did not follow the three commands: {driver.ee[-1] - start}"

