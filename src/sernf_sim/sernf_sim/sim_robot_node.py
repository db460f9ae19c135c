"""sim_robot_node: the simulated hand pick-and-place behind the real drivers' topics (docs/design.md §4).

Subscribes to the arm and hand command topics the Franka bridge and ORCA hand driver listen
to, steps the MuJoCo task one control step per command, and publishes what the drivers and
cameras publish: camera images, hand joint states, end-effector pose, the command each step
actually applied (on the drivers' ``executed_command`` topics, so ``sernf-record`` and
``sernf-bag2zarr`` see the action as on the robot), plus sparse rewards and episode boundaries.
A policy node cannot tell it from the robot.

Timing. A timer ticks at ``control_rate_hz × speed`` on the steady wall clock (``speed`` > 1
runs faster than real time). With ``publish_clock`` the node is the graph's time source: it
publishes simulated time on ``/clock`` (rosgraph_msgs/Clock), one control period per tick, and
stamps everything with it; nodes started with ``use_sim_time: true`` (the policy node) then
tick, stamp and record on simulated time, so at any speed they see the task's 10 Hz and the
episodes they record have the task's control rate (a policy node on wall time at speed > 1
would record 10 Hz timestamps for a 30 Hz stream, which the learner rejects). Each tick takes one
complete command (arm delta + hand targets with the same stamp) from a short FIFO, or the
hold action when none arrived — physics never waits for the policy, as on the robot. Relative
arm commands are consumed exactly once (replaying a delta would move the arm twice); the
FIFO absorbs the jitter between the two processes' timers.

Episodes. ``~/reset`` (std_srvs/Trigger) starts an episode from the layout chosen by the
``reset_config`` parameter (-1: random; 0..9: a fixed test configuration, settable at run
time); ``auto_reset`` starts the next one ``reset_delay_s`` after an episode ends. Each start
and end is announced on ``/sernf/episode``; each reward step on ``/sernf/reward`` with the
subtask it belongs to.

State-only mode (``render_images: false``) publishes the privileged ``object_state`` vector on
``/sim/object_state`` (std_msgs/Float32MultiArray) instead of camera images: the fast CPU
configuration. A robot has no such topic; policies for hardware use the cameras.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.time import Time
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import Trigger

from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node
from sernf_interfaces.msg import EpisodeEvent
from sernf_sim.episodes import SUBTASKS, EpisodeBook, end_reason, layout
from sernf_sim.hand_pick_place import env as hand_env
from sernf_sim.hand_pick_place import model as hand_model
from sernf_sim.hand_pick_place.config import test_configs
from sernf_sim.ros.task_events import TaskEventPublisher

__all__ = ["SUBTASKS", "SimRobotConfig", "SimRobotNode"]


@dataclass
class SimRobotConfig:
    """Parameters of sim_robot_node (declared as ROS parameters with these defaults)."""

    variant: str = "nominal"
    """'nominal' simulation or the 'shifted' stand-in for the real robot."""
    render_images: bool = False
    """Publish the wrist and front camera images (else the privileged object_state)."""
    image_size: int = 84
    """Square camera image side (pixels)."""
    max_steps: int = 100
    """Episode time limit in control steps."""
    control_rate_hz: float = 10.0
    """Control rate of the task (the policy's rate at speed 1)."""
    speed: float = 1.0
    """Wall-clock speed-up: the node steps at control_rate_hz × speed."""
    seed: int = 0
    """Seed of random layouts and observation noise."""
    reset_config: int = -1
    """Layout of the next reset: -1 random, 0..9 one of the fixed test configurations."""
    auto_reset: bool = False
    """Start the next episode automatically after one ends."""
    first_episode_after_s: float = -1.0
    """Start the first episode by itself this long after start-up (simulated seconds with
    publish_clock), so a graph started from the command line runs hands-free with auto_reset;
    negative: wait for ~/reset."""
    reset_delay_s: float = 0.5
    """Pause between an episode's end and the automatic reset (simulated seconds with
    publish_clock, else wall-clock)."""
    publish_clock: bool = False
    """Publish simulated time on /clock and stamp every message with it (start: the wall time
    at start-up, then one control period per tick). Needed for speed > 1 with a policy node
    (give it use_sim_time: true)."""
    lockstep_timeout_s: float = 0.0
    """With publish_clock, during an episode: wait up to this long (wall clock) for the command
    stamped with the current step before holding, so simulated time slows down instead of the
    robot holding when the policy's process falls behind (a loaded machine, speed > 1). A
    commander that has sent nothing for longer than this (a policy in a safety hold) is not
    waited for: the robot holds at the simulator's speed until a command comes again, instead of
    every remaining step of the episode costing this long; each episode starts waiting again.
    0: never wait (physics runs on, as on the real robot)."""
    frame_id: str = "world"
    """Frame of the published end-effector pose."""
    arm_command_topic: str = "/franka/relative_pose_command"
    """Relative end-effector pose commands (delta in the current EE frame)."""
    hand_command_topic: str = "/orca_hand/joint_command"
    """Hand joint position commands."""
    joint_states_topic: str = "/orca_hand/joint_states"
    """Published hand joint positions."""
    ee_pose_topic: str = "/franka/ee_pose"
    """Published end-effector pose."""
    object_state_topic: str = "/sim/object_state"
    """Published privileged object state (state-only mode)."""
    camera_topic_prefix: str = "/cameras"
    """Images go to <prefix>/<camera>/image_raw."""
    executed_arm_command_topic: str = "/franka_bridge/executed_command"
    """Published arm delta actually applied each step (PoseStamped), where franka_bridge
    publishes its own: what a demonstration bag records as the arm action."""
    executed_hand_command_topic: str = "/orca_hand_driver/executed_command"
    """Published hand joint targets actually applied each step (JointState), where the ORCA
    hand driver publishes its own."""

    def __post_init__(self) -> None:
        if self.variant not in ("nominal", "shifted"):
            raise ValueError(f"variant must be 'nominal' or 'shifted', got {self.variant!r}")
        for name in ("control_rate_hz", "speed"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not (-1 <= self.reset_config < len(test_configs())):
            raise ValueError(f"reset_config must be -1 or 0..{len(test_configs()) - 1}, got {self.reset_config}")
        if self.max_steps < 1 or self.image_size < 8:
            raise ValueError("max_steps must be >= 1 and image_size >= 8")
        if self.reset_delay_s < 0:
            raise ValueError("reset_delay_s must be >= 0")
        if not (math.isfinite(self.lockstep_timeout_s) and self.lockstep_timeout_s >= 0):
            raise ValueError(f"lockstep_timeout_s must be >= 0, got {self.lockstep_timeout_s}")


class SimRobotNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_robot")
        # reset_config / auto_reset may change at run time (e.g. evaluation on test layouts).
        self.cfg = declare_config(self, SimRobotConfig, dynamic=("reset_config", "auto_reset"))
        self.env = hand_env.make_env(
            self.cfg.variant, num_envs=1, render_images=self.cfg.render_images,
            image_size=self.cfg.image_size, max_steps=self.cfg.max_steps,
            control_hz=self.cfg.control_rate_hz, seed=self.cfg.seed)
        self.joint_names = [s.name for s in hand_model.FINGER_JOINTS]
        self._lock = threading.Lock()
        self._arm: dict[tuple[int, int], np.ndarray] = {}
        self._hand: dict[tuple[int, int], np.ndarray] = {}
        self._commands: deque[tuple[int, np.ndarray]] = deque(maxlen=3)  # (stamp ns, action)
        self._missed_commands = 0
        self._waiting_since: float | None = None
        self._last_command_wall = time.monotonic()  # when the last whole command arrived (wall clock)
        self._dropped_commands = 0
        self._book = EpisodeBook(seed=self.cfg.seed)
        self._obs = self.env.reset()

        self.joint_pub = self.create_publisher(JointState, self.cfg.joint_states_topic, 10)
        self.ee_pub = self.create_publisher(PoseStamped, self.cfg.ee_pose_topic, 10)
        self.object_pub = self.create_publisher(Float32MultiArray, self.cfg.object_state_topic, 10)
        self.image_pubs = {
            key: self.create_publisher(Image, f"{self.cfg.camera_topic_prefix}/{key.removesuffix('_rgb')}/image_raw", 10)
            for key in ("wrist_rgb", "front_rgb")
        } if self.cfg.render_images else {}
        self.events = TaskEventPublisher(self)
        self.executed_arm_pub = self.create_publisher(PoseStamped, self.cfg.executed_arm_command_topic, 10)
        self.executed_hand_pub = self.create_publisher(JointState, self.cfg.executed_hand_command_topic, 10)
        self.create_subscription(PoseStamped, self.cfg.arm_command_topic, self._on_arm, 10)
        self.create_subscription(JointState, self.cfg.hand_command_topic, self._on_hand, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        # Simulated time: whole control periods in integer nanoseconds (no float drift).
        self._step_ns = round(1e9 / self.cfg.control_rate_hz)
        self._sim_ns = self.get_clock().now().nanoseconds
        self.clock_pub = self.create_publisher(ClockMsg, "/clock", 10) if self.cfg.publish_clock else None
        period = 1.0 / (self.cfg.control_rate_hz * self.cfg.speed)
        # The physics timer runs on the steady clock: this node is the time source, it must not
        # wait for /clock itself (use_sim_time on this node would stall it).
        self.create_timer(period, self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._publish_clock()
        if self.cfg.first_episode_after_s >= 0:
            self._book.reset_at = self._now().nanoseconds * 1e-9 + self.cfg.first_episode_after_s
        self.get_logger().info(
            f"sim robot up: hand_pick_place ({self.cfg.variant}), {1 / period:.1f} Hz wall-clock "
            f"(speed {self.cfg.speed:g}{', simulated time on /clock' if self.clock_pub else ''}), "
            f"{'cameras' if self.cfg.render_images else 'state-only'}; "
            + (f"first episode in {self.cfg.first_episode_after_s:g} s" if self.cfg.first_episode_after_s >= 0
               else "call ~/reset to start"))

    # -- time -----------------------------------------------------------------------------------
    def _now(self) -> Time:
        """Simulated time with publish_clock, else the node's clock."""
        if self.clock_pub is not None:
            return Time(nanoseconds=self._sim_ns)
        return self.get_clock().now()

    def _publish_clock(self) -> None:
        if self.clock_pub is not None:
            msg = ClockMsg()
            msg.clock = self._now().to_msg()
            self.clock_pub.publish(msg)

    # -- commands -------------------------------------------------------------------------------
    def _on_arm(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        delta = np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z], dtype=np.float64)
        if not np.all(np.isfinite(delta)):
            self.get_logger().warning("rejected arm command with NaN/inf", throttle_duration_sec=1.0)
            return
        self._pair(self._arm, (msg.header.stamp.sec, msg.header.stamp.nanosec), delta)

    def _on_hand(self, msg: JointState) -> None:
        try:
            order = [list(msg.name).index(n) for n in self.joint_names] if msg.name else range(len(self.joint_names))
            targets = np.array([msg.position[i] for i in order], dtype=np.float64)
        except (ValueError, IndexError):
            self.get_logger().warning(
                f"rejected hand command: needs positions for {len(self.joint_names)} joints {self.joint_names}",
                throttle_duration_sec=1.0)
            return
        if not np.all(np.isfinite(targets)):
            self.get_logger().warning("rejected hand command with NaN/inf", throttle_duration_sec=1.0)
            return
        self._pair(self._hand, (msg.header.stamp.sec, msg.header.stamp.nanosec), targets)

    def _pair(self, own: dict, stamp: tuple[int, int], value: np.ndarray) -> None:
        # One action = the arm delta and the hand targets the policy published with one stamp.
        with self._lock:
            own[stamp] = value
            if stamp in self._arm and stamp in self._hand:
                if len(self._commands) == self._commands.maxlen:
                    self._dropped_commands += 1
                stamp_ns = stamp[0] * 1_000_000_000 + stamp[1]
                self._commands.append((stamp_ns, np.concatenate([self._arm.pop(stamp), self._hand.pop(stamp)])))
                self._last_command_wall = time.monotonic()
            for table in (self._arm, self._hand):  # forget unpaired halves that never complete
                while len(table) > 4:
                    table.pop(next(iter(table)))

    # -- episodes -------------------------------------------------------------------------------
    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._start_episode()
        response.success = True
        response.message = f"episode {self._book.episode_id} started"
        return response

    def _start_episode(self) -> None:
        configs, start_reason = layout(int(self.get_parameter("reset_config").value))
        with self._lock:
            self._commands.clear()
            self._arm.clear()
            self._hand.clear()
            if self._book.running:
                self._publish_episode(EpisodeEvent.ABORT, "reset")
            self._book.start()
            self._obs = self.env.reset(configs=configs)
            self._missed_commands = 0
            self._waiting_since = None
            self._last_command_wall = time.monotonic()  # a new episode: the commander is presumed alive
            if self.clock_pub is not None:
                # A new step of simulated time for the first state, published after it: a policy
                # on simulated time ticks on it and commands the first step at once.
                self._sim_ns += self._step_ns
        self._publish_episode(EpisodeEvent.START, start_reason)
        self._publish_observation()
        self._publish_clock()

    def _publish_episode(self, event: int, reason: str) -> None:
        self.events.episode(self._now().to_msg(), self._book.episode_id, event, reason)

    # -- control loop ---------------------------------------------------------------------------
    def _tick(self) -> None:
        if not self._book.running:
            if self._book.reset_due(self._now().nanoseconds * 1e-9):
                self._start_episode()
                return
            self._sim_ns += self._step_ns  # time runs whether or not we act (as on the robot)
            self._publish_observation()  # drivers publish state whether or not we act
            self._publish_clock()
            return
        with self._lock:
            action = self._take_command()
        if action is None and self.clock_pub is not None and self.cfg.lockstep_timeout_s > 0 and (
                self._waiting_since is not None
                or time.monotonic() - self._last_command_wall < self.cfg.lockstep_timeout_s):
            # Lockstep: simulated time stands still until the command for this step arrives (not
            # for a commander that fell silent: nothing came for a whole timeout).
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            if time.monotonic() - self._waiting_since < self.cfg.lockstep_timeout_s:
                # A paused robot's drivers still publish its (unchanged) state: the policy's
                # staleness watchdog measures wall time and must not fire while we wait.
                self._publish_observation()
                return
        self._waiting_since = None
        if action is None:
            self._missed_commands += 1
            action = self.env.hold_action(self._obs)[0]
        applied_at = self._now().to_msg()
        obs, reward, terminated, truncated, info = self.env.step(action[None])
        self._publish_executed(info["executed_action"][0], applied_at)
        self._obs = obs
        self._sim_ns += self._step_ns
        stamp = self._now().to_msg()
        if reward[0] > 0:
            self.events.reward(stamp, float(reward[0]), self._book.reward_subtask())
        self._publish_observation(stamp)
        if terminated[0] or truncated[0]:
            reason = end_reason(info["termination_reason"][0], bool(truncated[0]))
            self._book.end(self._now().nanoseconds * 1e-9, bool(self.get_parameter("auto_reset").value),
                           self.cfg.reset_delay_s)
            self._publish_episode(EpisodeEvent.END, reason)
            self.get_logger().info(f"episode {self._book.episode_id} ended: {reason} after {int(info['steps'][0])} steps"
                                   f" ({self._missed_commands} without a fresh command: held)")
        # The clock last: a policy on simulated time ticks on this message and must already have
        # the observation of the new time, so the command it sends is its reaction to that state.
        self._publish_clock()

    def _publish_executed(self, executed: np.ndarray, stamp: Any) -> None:
        """What this step applied (clipped; the hold action when no command came), as the
        drivers report theirs: stamped with the time it was applied, i.e. the time of the state
        it acted on (franka_bridge copies the command's stamp, which on simulated time is that
        state's stamp; the ORCA driver stamps the cycle that sent the targets)."""
        arm = PoseStamped()
        arm.header.stamp = stamp
        p, o = arm.pose.position, arm.pose.orientation
        p.x, p.y, p.z, o.w, o.x, o.y, o.z = (float(v) for v in executed[:7])
        self.executed_arm_pub.publish(arm)
        hand = JointState()
        hand.header.stamp = stamp
        hand.name = self.joint_names
        hand.position = [float(v) for v in executed[hand_env.HAND]]
        self.executed_hand_pub.publish(hand)

    def _take_command(self) -> np.ndarray | None:
        """The command for the current state (caller holds the lock); None = hold.

        On simulated time the policy stamps its reaction to the observation of time t with t:
        take exactly that command (older ones are late and dropped), so each action is applied
        to the state it was chosen for, as the episode recorder logs it. On wall-clock time
        (no /clock) the two timers drift against each other: take the oldest queued command."""
        if self.clock_pub is None:
            return self._commands.popleft()[1] if self._commands else None
        now = self._sim_ns
        while self._commands and self._commands[0][0] < now:
            self._commands.popleft()
        if self._commands and self._commands[0][0] == now:
            return self._commands.popleft()[1]
        return None

    def _publish_observation(self, stamp: Any = None) -> None:
        stamp = stamp or self._now().to_msg()
        obs = {k: v[0] for k, v in self._obs.items()}
        joints = JointState()
        joints.header.stamp = stamp
        joints.name = self.joint_names
        joints.position = obs["hand_joints"].astype(float).tolist()
        self.joint_pub.publish(joints)
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self.cfg.frame_id
        x, y, z, qw, qx, qy, qz = obs["ee_pose"].astype(float)
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = x, y, z
        o = pose.pose.orientation
        o.w, o.x, o.y, o.z = qw, qx, qy, qz
        self.ee_pub.publish(pose)
        if "object_state" in obs:
            state = Float32MultiArray()
            state.data = obs["object_state"].astype(float).tolist()
            self.object_pub.publish(state)
        for key, publisher in self.image_pubs.items():
            image = Image()
            image.header.stamp = stamp
            image.header.frame_id = key
            image.height, image.width = obs[key].shape[:2]
            image.encoding = "rgb8"
            image.step = image.width * 3
            image.data = obs[key].tobytes()
            publisher.publish(image)


#: The node's parameters: exactly the fields of this dataclass (checked against config/*.yaml).
PARAMETERS = SimRobotConfig


def main(args: list[str] | None = None) -> None:
    spin_node(SimRobotNode, "sim_robot", num_threads=1, args=args)


if __name__ == "__main__":
    main()
