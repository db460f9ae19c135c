"""A simulated demonstration recorded as a bag and converted equals the same demonstration
written directly to the store (issue #11).

The graph: ``sim_robot_node`` (cameras at 32 px, simulated time on ``/clock``, lockstep, so
every stamp lies on the 10 Hz grid and every command is applied to the state it was chosen
for), ``sernf-record`` (rosbags back-end, events on simulated time) as a subprocess, and this
test as the demonstrator: the hand task's clean scripted expert, rolled out beforehand in a
local twin of the task on the same fixed layout (the expert reads privileged simulator state),
replayed one action per observation, each stamped with the observation's stamp.

Two paths to a store:

* **direct**: what the test received at each step (both images, hand joints, EE pose), the
  action as the task executes it (clipped), the rewards the simulator published, the twin's
  subtask success; appended with ``EpisodeStore.append_episode``;
* **bag**: the recorder's MCAP bag, the operator's answers given on the recorder's stdin,
  converted with ``sernf_data.bag2zarr`` (``image_topics`` for the simulator's camera names).

Tolerances: images exact; timestamps 1 µs; low-dimensional values 1e-6 (both stores keep
float32; the converter's linear interpolation/slerp evaluated on the grid and the composition
of a single arm delta round at the last float32 digit). The converter writes orientations with
``qw >= 0``; the simulator's EE quaternion at home is ``(~0, 1, 0, ~0)``, so it is compared up
to sign (the same rotation).
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger

from sernf_data.bag2zarr import ConversionConfig, convert_bags
from sernf_data.store import EpisodeStore, StoreSpec
from sernf_interfaces.msg import EpisodeEvent, RewardEvent
from sernf_sim.hand_pick_place import env as hand_env
from sernf_sim.hand_pick_place import model as hand_model
from sernf_sim.hand_pick_place.config import test_configs
from sernf_sim.hand_pick_place.expert import HandExpert, HandExpertConfig

pytestmark = pytest.mark.ros

LAYOUT = 3  # fixed test layout: the clean expert succeeds in ~42 steps
IMAGE_SIZE = 32
MAX_STEPS = 100
STEP_NS = 100_000_000  # 10 Hz
CAMERAS = ("wrist", "front")
OBS_KEYS = ("wrist_rgb", "front_rgb", "hand_joints", "ee_pose")
SUBTASKS = ("grasp", "place")
ATOL = 1e-6


def expert_rollout():
    """The clean expert on the fixed layout in a local twin of the task (no rendering)."""
    env = hand_env.make_env("nominal", num_envs=1, render_images=False, max_steps=MAX_STEPS)
    obs = env.reset(configs=[test_configs()[LAYOUT]])
    expert = HandExpert(env, HandExpertConfig(), seed=0)
    expert.reset(obs)
    actions, executed, rewards = [], [], []
    while True:
        action = np.asarray(expert.act(obs), dtype=np.float64)
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action[0])
        executed.append(info["executed_action"][0])
        rewards.append(float(reward[0]))
        if terminated[0] or truncated[0]:
            break
    flags = {name: bool(info["subtask_success"][name][0]) for name in SUBTASKS}
    return (np.stack(actions), np.stack(executed).astype(np.float32), np.asarray(rewards, np.float32),
            flags, bool(terminated[0]))


def _ns(stamp: TimeMsg) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Demonstrator:
    """The test's participant: receives the simulator's streams by stamp and commands it."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        n = self.node = Node("sim_demonstrator", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self.obs: dict[int, dict[str, np.ndarray]] = {}
        self.rewards: dict[int, RewardEvent] = {}
        self.events: list[EpisodeEvent] = []
        self.clock_ns = 0
        for cam in CAMERAS:
            n.create_subscription(Image, f"/cameras/{cam}/image_raw",
                                  lambda m, key=f"{cam}_rgb": self._on_image(key, m), 50)
        n.create_subscription(JointState, "/orca_hand/joint_states", self._on_joints, 50)
        n.create_subscription(PoseStamped, "/franka/ee_pose", self._on_pose, 50)
        n.create_subscription(RewardEvent, "/sernf/reward", lambda m: self.rewards.setdefault(_ns(m.header.stamp), m), 50)
        n.create_subscription(EpisodeEvent, "/sernf/episode", self.events.append, 50)
        n.create_subscription(Clock, "/clock", self._on_clock, 50)
        self.arm = n.create_publisher(PoseStamped, "/franka/relative_pose_command", 10)
        self.hand = n.create_publisher(JointState, "/orca_hand/joint_command", 10)
        self.reset_client = n.create_client(Trigger, "/sim_robot/reset")

    def _put(self, stamp: TimeMsg, key: str, value: np.ndarray) -> None:
        self.obs.setdefault(_ns(stamp), {})[key] = value

    def _on_image(self, key: str, msg: Image) -> None:
        assert msg.encoding == "rgb8"
        self._put(msg.header.stamp, key,
                  np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3).copy())

    def _on_joints(self, msg: JointState) -> None:
        self._put(msg.header.stamp, "hand_joints", np.asarray(msg.position, dtype=np.float64))

    def _on_pose(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        self._put(msg.header.stamp, "ee_pose", np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z]))

    def _on_clock(self, msg: Clock) -> None:
        self.clock_ns = max(self.clock_ns, _ns(msg.clock))

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()

    def complete(self, stamp_ns: int) -> bool:
        return set(OBS_KEYS) <= set(self.obs.get(stamp_ns, {}))

    def event(self, kind: int, prefix: str) -> EpisodeEvent | None:
        return next((e for e in self.events if e.event == kind and e.episode_id.startswith(prefix)), None)

    def command(self, action: np.ndarray, stamp_ns: int) -> None:
        stamp = TimeMsg(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        arm = PoseStamped()
        arm.header.stamp = stamp
        p, o = arm.pose.position, arm.pose.orientation
        p.x, p.y, p.z, o.w, o.x, o.y, o.z = (float(v) for v in action[:7])
        hand = JointState(name=[s.name for s in hand_model.FINGER_JOINTS],
                          position=[float(v) for v in action[hand_env.HAND]])
        hand.header.stamp = stamp
        self.arm.publish(arm)
        self.hand.publish(hand)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _start_recorder(processes, out_dir) -> subprocess.Popen:
    """sernf-record as the operator runs it, answering on its stdin (registered for clean-up)."""
    log_path = processes.log_dir / "record.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "sernf_data.record", "--out", str(out_dir), "--rosbags", "--use-sim-time",
         "--cameras", ",".join(CAMERAS), "--subtasks", ",".join(SUBTASKS), "--operator", "expert",
         "--settle", "3"],
        env=processes.env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    proc.log_path = log_path  # type: ignore[attr-defined]
    processes.procs.append(proc)
    return proc


def test_simulated_demonstration_bag_equals_the_direct_store(processes, tmp_path):
    actions, executed, twin_rewards, twin_flags, twin_terminated = expert_rollout()
    length = len(actions)
    assert twin_flags == {"grasp": True, "place": True} and length < MAX_STEPS  # a successful demonstration
    sim = processes.python(
        "sim_robot", "-m", "sernf_sim.sim_robot_node", "--ros-args", "-r", "__node:=sim_robot",
        "-p", "render_images:=true", "-p", f"image_size:={IMAGE_SIZE}", "-p", "publish_clock:=true",
        "-p", "lockstep_timeout_s:=30.0", "-p", f"reset_config:={LAYOUT}", "-p", f"max_steps:={MAX_STEPS}")
    demo = Demonstrator()
    try:
        assert demo.spin_until(lambda: any(demo.complete(s) for s in demo.obs), 90), processes.log(sim)
        recorder = _start_recorder(processes, tmp_path / "bags")
        # The recorder's START (on simulated time) precedes the reset: its span encloses the episode.
        assert demo.spin_until(lambda: demo.event(EpisodeEvent.START, "demo_") is not None, 90), \
            processes.log(recorder)
        assert demo.reset_client.wait_for_service(timeout_sec=30)
        future = demo.reset_client.call_async(Trigger.Request())
        assert demo.spin_until(future.done, 30) and future.result().success
        assert demo.spin_until(lambda: demo.event(EpisodeEvent.START, "sim-") is not None, 30)
        t_start = _ns(demo.event(EpisodeEvent.START, "sim-").header.stamp)
        assert t_start > _ns(demo.event(EpisodeEvent.START, "demo_").header.stamp)

        # Lockstep: observation k has stamp t_start + k periods and waits for the action stamped so.
        for k in range(length):
            stamp = t_start + k * STEP_NS
            assert demo.spin_until(lambda stamp=stamp: demo.complete(stamp), 60), \
                f"no complete observation for step {k}\n{processes.log(sim)}"
            demo.command(actions[k], stamp)
        t_end = t_start + length * STEP_NS
        assert demo.spin_until(lambda: demo.event(EpisodeEvent.END, "sim-") is not None, 60), processes.log(sim)
        end = demo.event(EpisodeEvent.END, "sim-")
        assert _ns(end.header.stamp) == t_end and end.reason == "success", (end.reason, _ns(end.header.stamp) - t_end)
        # Let simulated time move on before the operator ends the recording (its END comes after).
        assert demo.spin_until(lambda: demo.clock_ns >= t_end + 3 * STEP_NS, 30)

        # The operator marks each subtask from what they saw: a reward for it.
        seen = {e.subtask for e in demo.rewards.values() if e.value > 0}
        answers = "\n" + "".join("y\n" if name in seen else "n\n" for name in SUBTASKS)
        recorder.stdin.write(answers)
        recorder.stdin.close()
        assert demo.spin_until(lambda: recorder.poll() is not None, 60), processes.log(recorder)
        assert recorder.returncode == 0, processes.log(recorder)
    finally:
        demo.close()
    assert sim.poll() is None, processes.log(sim)

    # -- the direct path ------------------------------------------------------------------------
    stamps = [t_start + k * STEP_NS for k in range(length)]
    direct_steps = {key: np.stack([demo.obs[s][key] for s in stamps]) for key in OBS_KEYS}
    for key in ("hand_joints", "ee_pose"):
        direct_steps[key] = direct_steps[key].astype(np.float32)
    direct_steps["action"] = executed
    reward_at = {s: e.value for s, e in demo.rewards.items()}
    direct_steps["reward"] = np.array([reward_at.get(s + STEP_NS, 0.0) for s in stamps], dtype=np.float32)
    direct_steps["timestamp"] = np.array(stamps, dtype=np.float64) * 1e-9
    np.testing.assert_array_equal(direct_steps["reward"], twin_rewards)  # the sim replayed the twin
    spec = StoreSpec(obs={
        "wrist_rgb": {"shape": [IMAGE_SIZE, IMAGE_SIZE, 3], "kind": "rgb"},
        "front_rgb": {"shape": [IMAGE_SIZE, IMAGE_SIZE, 3], "kind": "rgb"},
        "hand_joints": {"shape": [hand_env.NUM_HAND], "kind": "lowdim"},
        "ee_pose": {"shape": [7], "kind": "lowdim", "quaternion_at": 3},
    }, action_dim=hand_env.ACTION_DIM, control_rate_hz=10.0)
    direct = EpisodeStore(tmp_path / "direct.zarr", mode="a", spec=spec)
    direct_id = direct.append_episode(direct_steps, {
        "source": "demo", "terminated": twin_terminated, "subtask_success": twin_flags, "operator": "expert"})

    # -- the bag path ---------------------------------------------------------------------------
    (bag,) = sorted((tmp_path / "bags").iterdir())
    config = ConversionConfig(image_topics={f"{cam}_rgb": f"/cameras/{cam}/image_raw" for cam in CAMERAS})
    report = convert_bags([bag], tmp_path / "converted.zarr", config)
    assert not report.skipped, report.skipped
    converted = EpisodeStore(tmp_path / "converted.zarr")
    assert converted.spec == direct.spec
    (converted_id,) = converted.episode_ids()
    got, got_meta = converted.read_episode(converted_id)
    want, want_meta = direct.read_episode(direct_id)

    assert len(got["timestamp"]) == len(want["timestamp"]) == length, (got_meta["extra"], t_start * 1e-9)
    np.testing.assert_allclose(got["timestamp"], want["timestamp"], rtol=0, atol=1e-6)
    for key in ("wrist_rgb", "front_rgb"):
        assert got[key].dtype == want[key].dtype == np.uint8
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_allclose(got["hand_joints"], want["hand_joints"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(got["ee_pose"][:, :3], want["ee_pose"][:, :3], rtol=0, atol=ATOL)
    quat_err = np.minimum(np.abs(got["ee_pose"][:, 3:] - want["ee_pose"][:, 3:]).max(axis=1),
                          np.abs(got["ee_pose"][:, 3:] + want["ee_pose"][:, 3:]).max(axis=1))
    assert quat_err.max() <= ATOL, quat_err.max()
    np.testing.assert_allclose(got["action"], want["action"], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(got["reward"], want["reward"])
    assert float(got["reward"].sum()) == 2.0  # grasp, then place
    for field in ("success", "subtask_success", "terminated", "operator", "source", "return", "length"):
        assert got_meta[field] == want_meta[field], (field, got_meta[field], want_meta[field])
    assert got_meta["extra"]["end_reason"] == "success"
