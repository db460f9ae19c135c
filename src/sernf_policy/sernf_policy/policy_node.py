"""policy_node: runs the SERNF policy on the robot (or the simulator) with real-time chunking.

Data flow (docs/design.md §4, §6)::

    observation topics --> ObservationBuffer (latest per key, validated, freshness)
                                   | sampled every control tick (T-step history)
    control timer (control_rate_hz) -> ChunkScheduler.tick() -> clip -> /franka/relative_pose_command
         | decision due (P actions left)                             /orca_hand/joint_command
         v                                                           (+ EpisodeRecorder step)
    inference worker: Policy.act_batch(history, prefix) -> ChunkScheduler.submit -> /sernf/action_chunk

Threads, and why: the control timer has its own mutually exclusive callback group so sensor
callbacks never delay it; inference runs on a worker thread (a decision may take up to P ticks
without the queue running dry: execution never waits for it); checkpoint loading and replay
commits run on their own worker threads because they touch disks or networks of unknown speed.
The checkpoint thread ends after each load, so that torch's OpenMP pool lives on the inference
thread alone (:mod:`transient_worker`: a second, persistent pool made every chunk ~1.6x slower).

Safety and hold semantics (docs/design.md §2, "fail safe: hold, never jump"):

* **Inputs untrusted -> silence.** If any observation key is missing, stale (older than
  ``stale_after_s`` since it was received, or by its header stamp on the node's clock), or its
  last message was invalid (NaN, wrong size, wrong encoding, outside its physical bounds: joint
  ranges with a margin, the workspace box, a magnitude cap, a quaternion that is not unit), or
  no policy is loaded, the node *publishes no command at all*, logs why
  (immediately on the change, then throttled) and reports ``holding=true`` with the reason on
  /diagnostics. Silence is a hold for both devices: franka_bridge only moves on a relative
  command (no command = equilibrium pose unchanged) and the hand driver keeps its last target.
  We prefer silence to publishing an explicit hold here because computing the hold needs the
  very inputs that are untrusted, and because downstream watchdogs can then see that the policy
  stopped. The queued plan and the observation history are discarded (they describe a past the
  robot is no longer in); a running episode ends as truncated (ABORT, reason) and is committed.
  When the inputs are good again the node resumes: a fresh decision whose prefix is P hold
  actions (with ``auto_start_episode`` a new episode starts).
* **Inference late -> explicit hold.** Inputs are fine but the queue ran dry: the node publishes
  the hold action (zero relative motion, identity rotation, the hand's current target), keeps
  the control rate, counts an overrun (log + diagnostics), and records the hold as the executed
  action. A late chunk is spliced by time slot (see :mod:`realtime_chunking`).
* **Commands are clipped** to the action-space limits (hand joint limits and a per-step rate
  limit, arm translation/rotation per step); the clipped command is what is published, shown
  as executed, and recorded.

Commands are published only while an episode runs (``~/start_episode``, an EpisodeEvent START
from another node, or ``auto_start_episode``); outside episodes the node idles silently.

Hot reload: a CheckpointAvailable on /sernf/checkpoint (transient local: the latest reaches a
node started later) is checked on arrival (signature with ``checkpoint_key_file``; steps
increase within a learner run, never go back across runs) and verified off the control path
(the directory and its files inside ``checkpoint_roots`` after resolving symlinks, sha256 of
the weights and config files against the message, ``Policy.load``, the same T, P, H, A and
observation spec, a dry-run inference with finite output), then swapped in between chunks
(when no request is in flight). A rejected checkpoint is logged and reported; the old policy
keeps running.

Rewards and episode events are checked before they reach the recorder: the sending node (from
the DDS graph, by publisher gid) must be in ``reward_sources`` / ``episode_authorities``, the
reward must fit the task's reward spec (subtask, value range, once per episode); refused ones
are logged and counted on /diagnostics, never recorded (docs/security.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from sernf_data.ros.parameters import declare_config
from sernf_data.ros.sender_identity import SenderGate
from sernf_data.ros.spin import spin_node
from sernf_data.store import EpisodeStore, StoreSpec
from sernf_interfaces.msg import CheckpointAvailable, EpisodeEvent, ReplayEpisode
from sernf_interfaces.msg import RewardEvent as RewardEventMsg

from .action_space import ActionSpace, ActionSpaceConfig
from .announcement_auth import (
    CHECKPOINT_KIND,
    REPLAY_KIND,
    checkpoint_fields,
    checkpoint_order_problem,
    load_optional_key,
    replay_fields,
)
from .episode_recorder import (
    EpisodeRecorder,
    EpisodeRecorderConfig,
    EpisodeSummary,
    RewardEvent,
    RewardSpec,
)
from .observation_buffer import KeyBounds, ObservationBuffer, ObservationBufferConfig
from .realtime_chunking import HOLD, ChunkScheduler, ChunkTimingConfig, InferenceRequest
from .ros_conversions import (
    OBSERVATION_TYPES,
    chunk_to_trajectory,
    diagnostic_array,
    float_array_to_vector,
    hand_command,
    image_to_rgb,
    joint_positions,
    pose_to_array,
    relative_pose_command,
    time_to_seconds,
)
from .transient_worker import TransientWorker

__all__ = ["PolicyNode", "PolicyNodeConfig", "main"]

NODE_NAME = "policy"
_ACTION_DEFAULTS = ActionSpaceConfig()
_LOG_THROTTLE_S = 2.0
#: QoS of /sernf/checkpoint on both ends: reliable, transient local, the latest one kept, so
#: the announcement survives until a late subscriber (a restarted policy node) joins.
CHECKPOINT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
_SELECTIONS = ("", "best_of_n", "most_likely", "single")
# Episode ids become replay-store ids (sernf_data.store's rule): adopt only ids that fit.
_EPISODE_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
# EpisodeEvent END reasons that mean a time limit, i.e. a truncation (not a terminal state).
_TRUNCATION_REASONS = frozenset({"timeout", "time_limit", "truncated"})
_INPUTS_NOT_READY = "inputs not ready: "


#: RewardEvent.source values and their names.
_REWARD_SOURCE_KINDS = {0: "sim", 1: "operator", 2: "auto"}


def _node_fqn(name: str) -> str:
    """Fully qualified node name: "sim_robot" -> "/sim_robot"."""
    name = str(name).strip()
    return name if name.startswith("/") else "/" + name


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def policy_weights_sha(directory: Path) -> str:
    """The weights sha256 a checkpoint's config.json records (what Policy.load verified)."""
    import json

    from .checkpoint import CONFIG_FILE

    return str(json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8")).get("weights_sha256", ""))


# ------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class PolicyNodeConfig:
    """Parameters of policy_node (declared as ROS parameters with these defaults)."""

    checkpoint: str = ""
    """Checkpoint directory loaded at start-up; empty: wait for one on the checkpoint topic."""

    control_rate_hz: float = 10.0
    """Control rate: one action executed (published) per tick (scissors 10 Hz, cube 20 Hz)."""

    observation_keys: tuple[str, ...] = ()
    """Observation keys of the policy, each read from one topic (same order as the two below)."""

    observation_types: tuple[str, ...] = ()
    """Message kind per key: image (sensor_msgs/Image rgb8/bgr8 -> uint8 [h,w,3]), joint_state
    (positions of joint_state_names), pose (PoseStamped -> [x,y,z,qw,qx,qy,qz]) or
    pose_with_covariance (PoseWithCovarianceStamped -> the same 7 numbers) or float_array
    (std_msgs/Float32MultiArray -> its data; e.g. the simulator's privileged object state)."""

    observation_topics: tuple[str, ...] = ()
    """Topic per key, e.g. /cameras/front/image_raw, /orca_hand/joint_states, /franka/ee_pose."""

    joint_state_names: tuple[str, ...] = ()
    """Joints read (in this order) from joint_state observations; empty: the hand joints."""

    stale_after_s: float = 0.2
    """An observation older than this stops commanding: seconds since it was received, or since
    its header stamp on the node's clock (messages with a header; needs synchronised clocks)."""

    quaternion_tolerance: float = 0.05
    """Pose observations: | |q| - 1 | up to this is normalised, beyond it the pose is refused (hold)."""

    workspace_low: tuple[float, ...] = (-1.2, -1.2, -0.5)
    """Lower corner (x, y, z, m) of the box pose observations must lie in (robot base frame;
    the Franka reaches ~0.86 m); outside it the pose is refused (hold)."""

    workspace_high: tuple[float, ...] = (1.2, 1.2, 1.5)
    """Upper corner (x, y, z, m) of that box."""

    joint_limit_margin_rad: float = 0.1
    """Hand joint observations may exceed hand_lower/hand_upper by this much (sensor noise,
    compliance); further out they are refused (hold)."""

    lowdim_abs_max: float = 1000.0
    """Every low-dimensional observation value must satisfy |v| <= this (a catch-all for keys
    without tighter bounds, e.g. 1e30 from a broken driver)."""

    num_samples: int = 0
    """N candidate chunks per decision (Alg. 2); 0: the checkpoint's setting."""

    sigma_sample: float = 0.0
    """Latent standard deviation when sampling; 0: the checkpoint's setting (paper 0.7)."""

    selection: str = ""
    """best_of_n, most_likely or single; empty: the checkpoint's setting."""

    replay_uri: str = ""
    """Replay store (path or fsspec URL) that episodes are committed to; empty: no recording."""

    subtasks: tuple[str, ...] = ()
    """Subtask names reported for every episode (success false unless rewarded)."""

    max_episode_steps: int = 3000
    """An episode ends (truncated) after this many steps (bounds the recorder's memory)."""

    reward_grace_s: float = 0.5
    """After an episode ends, wait this long for late RewardEvents before committing it."""

    auto_start_episode: bool = False
    """Start an episode whenever none runs and the inputs are good (simulation, tests)."""

    start_on_episode_event: bool = True
    """An EpisodeEvent START from another node starts an episode with its id."""

    start_wait_s: float = 2.0
    """A START that arrives while the inputs are not good waits this long (wall clock) for
    them before it is refused: the reset that came with it is not yet in the observations (the
    fingers still where the last episode pushed them). 0: refuse at once."""

    arm_index: int = _ACTION_DEFAULTS.arm_index
    """First action index of the arm's relative pose (7 dims: xyz + quaternion wxyz); -1: none."""

    hand_index: int = _ACTION_DEFAULTS.hand_index
    """First action index of the hand joint targets; -1: no hand."""

    hand_joint_names: tuple[str, ...] = _ACTION_DEFAULTS.hand_joint_names
    """Hand joint names in action order (names of the hand JointState command)."""

    hand_lower: tuple[float, ...] = _ACTION_DEFAULTS.hand_lower
    """Hand joint lower limits (rad), one per hand joint."""

    hand_upper: tuple[float, ...] = _ACTION_DEFAULTS.hand_upper
    """Hand joint upper limits (rad), one per hand joint."""

    arm_max_translation_m: float = _ACTION_DEFAULTS.arm_max_translation_m
    """Largest arm translation per control step (m); larger commands are scaled down."""

    arm_max_rotation_rad: float = _ACTION_DEFAULTS.arm_max_rotation_rad
    """Largest arm rotation per control step (rad); larger rotations are scaled down."""

    hand_max_step_rad: float = _ACTION_DEFAULTS.hand_max_step_rad
    """Largest hand target change per control step (rad); 0 disables the rate limit."""

    arm_command_topic: str = "/franka/relative_pose_command"
    """Relative EE pose commands (geometry_msgs/PoseStamped, delta in the current EE frame)."""

    arm_command_frame: str = "panda_EE"
    """header.frame_id of the relative pose commands: the end-effector frame they are in."""

    hand_command_topic: str = "/orca_hand/joint_command"
    """Hand joint position commands (sensor_msgs/JointState)."""

    chunk_topic: str = "/sernf/action_chunk"
    """Each new chunk as a trajectory_msgs/JointTrajectory (names = action dims)."""

    reward_topic: str = "/sernf/reward"
    """sernf_interfaces/RewardEvent input."""

    episode_topic: str = "/sernf/episode"
    """sernf_interfaces/EpisodeEvent input and output."""

    replay_topic: str = "/sernf/replay"
    """sernf_interfaces/ReplayEpisode announcements of committed episodes."""

    checkpoint_topic: str = "/sernf/checkpoint"
    """sernf_interfaces/CheckpointAvailable input (hot reload; transient-local QoS: a node
    started after the learner gets its latest announcement)."""

    reward_sources: tuple[str, ...] = ()
    """Nodes (names as in the DDS graph, e.g. /sim_robot, /reward_labeler) whose RewardEvents
    are accepted; empty: any publisher. Without SROS2 a node name is a claim, not an identity."""

    reward_source_kinds: tuple[str, ...] = ()
    """RewardEvent.source values accepted: sim, operator, auto; empty: any."""

    reward_value_min: float = 0.0
    """Smallest reward value the task can earn (smaller ones are refused, never recorded)."""

    reward_value_max: float = 1.0
    """Largest reward value the task can earn (paper: sparse subtask rewards of 1)."""

    reward_once_per_subtask: bool = True
    """A subtask earns at most one reward per episode; with subtasks set, rewards must name one."""

    episode_authorities: tuple[str, ...] = ()
    """Nodes whose EpisodeEvents (START, END, ABORT) are obeyed, e.g. /sim_robot or the operator
    console; empty: any publisher (not for a robot). Events from others are refused and counted."""

    device_fault_sources: tuple[str, ...] = ()
    """Drivers (e.g. /franka_bridge) whose ABORT EpisodeEvents mean a device fault (a reflex):
    the running episode ends, is committed with ``extra.device_fault`` = the reason, and
    learners leave it out of training until a person labels it. These nodes may only abort."""

    sender_discovery_timeout_s: float = 5.0
    """A reward or episode event whose sending node DDS discovery has not named yet waits this
    long (in order, with later ones) before it is refused as from an unknown publisher."""

    checkpoint_roots: tuple[str, ...] = ()
    """Directories announced checkpoints must lie in (after resolving '..' and symlinks), e.g.
    the learner's checkpoint directory. Empty: every announced checkpoint is refused (only the
    checkpoint parameter is loaded)."""

    checkpoint_key_file: str = ""
    """Key (file, mode 0600, made by sernf-keys) the learner signs checkpoint announcements
    with; set: unsigned or wrongly signed announcements are refused. Empty: not checked."""

    replay_key_file: str = ""
    """Key this node signs its replay announcements with (the learner's replay_key_file);
    empty: announcements go out unsigned."""

    diagnostics_period_s: float = 1.0
    """Period of /diagnostics messages (also sent after every inference)."""

    artificial_inference_delay_s: float = 0.0
    """Extra seconds added to every inference (tests of the real-time behaviour); keep 0."""

    device: str = "cpu"
    """Torch device for the policy (cpu, cuda, cuda:1, ...)."""

    torch_num_threads: int = 0
    """Torch intra-op threads for inference; 0: torch's default."""

    compile_for_acting: bool = False
    """``torch.compile`` the flow's sampling of every checkpoint this node loads, and run one
    warm-up chunk at the acting batch and N, before it is swapped in. Compiling happens in the
    checkpoint thread: the running policy keeps commanding meanwhile, and the first chunk of
    an episode does not pay for it. Costs 1-2 CPU minutes per checkpoint on a 2-core machine;
    chunks are 1.2-1.25x faster there (docs/performance.md). Flow actors only."""

    allow_tf32: bool = False
    """Let float32 matmuls and convolutions on a GPU use TF32 (process-wide): the scissors
    chunk's ViT-L encoders ran 1.2-1.6x faster on an H200; chunks differ from fp32 by ~1e-3
    (docs/performance.md). No effect on a CPU."""

    cuda_graph: bool = False
    """Capture ``act_batch`` of every checkpoint this node loads as a CUDA graph at the acting
    batch (1), N and sigma (``Policy.capture_cuda_graph``), in the checkpoint thread before the
    swap. On a GPU a chunk is mostly kernel-launch time: the cube config's p99 fell from 56 to
    13 ms on an H200 (docs/performance.md). Needs ``device`` cuda; a checkpoint whose capture
    fails (e.g. not a flow actor) acts eagerly, with a warning."""

    def __post_init__(self) -> None:
        for name in ("observation_keys", "observation_types", "observation_topics",
                     "joint_state_names", "subtasks", "hand_joint_names", "reward_sources",
                     "reward_source_kinds", "episode_authorities", "device_fault_sources", "checkpoint_roots"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        for name in ("hand_lower", "hand_upper"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        n = len(self.observation_keys)
        if len(self.observation_types) != n or len(self.observation_topics) != n:
            raise ValueError(
                f"observation_keys ({n}), observation_types ({len(self.observation_types)}) and "
                f"observation_topics ({len(self.observation_topics)}) must have the same length"
            )
        if len(set(self.observation_keys)) != n:
            raise ValueError(f"observation_keys must be unique, got {list(self.observation_keys)}")
        bad = [t for t in self.observation_types if t not in OBSERVATION_TYPES]
        if bad:
            raise ValueError(f"observation_types {bad} are not among {list(OBSERVATION_TYPES)}")
        if any(not t for t in self.observation_topics):
            raise ValueError("observation_topics must not be empty strings")
        positive = ("control_rate_hz", "stale_after_s", "diagnostics_period_s")
        for name in positive:
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ("sigma_sample", "reward_grace_s", "artificial_inference_delay_s", "start_wait_s"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.cuda_graph and not str(self.device).startswith("cuda"):
            raise ValueError(f"cuda_graph needs a CUDA device, device is {self.device!r}")
        for name in ("num_samples", "torch_num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("workspace_low", "workspace_high"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must be 3 numbers (x, y, z), got {list(getattr(self, name))}")
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high, strict=True)):
            raise ValueError(f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high}")
        if not (0 < self.quaternion_tolerance < 1):
            raise ValueError(f"quaternion_tolerance must be in (0, 1), got {self.quaternion_tolerance}")
        for name in ("joint_limit_margin_rad", "lowdim_abs_max"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if self.selection not in _SELECTIONS:
            raise ValueError(f"selection must be one of {list(_SELECTIONS)}, got {self.selection!r}")
        bad_kinds = sorted(set(self.reward_source_kinds) - set(_REWARD_SOURCE_KINDS.values()))
        if bad_kinds:
            raise ValueError(f"reward_source_kinds {bad_kinds} are not among {sorted(_REWARD_SOURCE_KINDS.values())}")
        if not self.sender_discovery_timeout_s >= 0:
            raise ValueError(f"sender_discovery_timeout_s must be >= 0, got {self.sender_discovery_timeout_s}")
        for name in ("reward_sources", "episode_authorities", "device_fault_sources"):
            object.__setattr__(self, name, tuple(_node_fqn(n) for n in getattr(self, name)))
        self.reward_spec()  # validates the reward bounds
        self.action_space_config()  # validates the action-space fields
        EpisodeRecorderConfig(control_period_s=1.0 / self.control_rate_hz, subtasks=self.subtasks,
                              max_steps=self.max_episode_steps)

    def reward_spec(self) -> RewardSpec:
        """The rewards this task can earn (subtasks, value range, once per episode)."""
        return RewardSpec(subtasks=self.subtasks, value_min=float(self.reward_value_min),
                          value_max=float(self.reward_value_max), once_per_subtask=bool(self.reward_once_per_subtask))

    def action_space_config(self) -> ActionSpaceConfig:
        names = {f.name for f in dataclasses.fields(ActionSpaceConfig)}
        return ActionSpaceConfig(**{name: getattr(self, name) for name in names})

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz


# ------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class _LoadedPolicy:
    """A verified policy and where it came from."""

    policy: Any  # sernf_policy.policy.Policy (imported lazily: torch is slow to import)
    uri: str
    step: int
    stage: str
    sha256: str
    run_id: str = ""
    """Learner run that announced it ("" for the node's own checkpoint parameter)."""

    @property
    def config(self) -> Any:
        return self.policy.config


@dataclass
class _Episode:
    episode_id: str
    start_stamp: float
    recorder: EpisodeRecorder | None
    checkpoint_steps: list[int] = dataclasses.field(default_factory=list)
    """Checkpoints (training steps) that acted in this episode, in order (hot reloads)."""


@dataclass
class _Stats:
    """Values reported on /diagnostics (guarded by PolicyNode._lock)."""

    inference_latency_s: float = float("nan")
    log_prob: float = float("nan")
    q: float = float("nan")
    commands_published: int = 0
    hold_commands: int = 0
    commands_clipped: int = 0
    late_chunks: int = 0
    inference_errors: int = 0
    last_inference_error: str = ""
    checkpoints_rejected: int = 0
    last_checkpoint_error: str = ""
    episodes_committed: int = 0
    last_replay_error: str = ""
    last_observation_error: str = ""
    rewards_rejected: int = 0
    last_reward_rejection: str = ""
    episode_events_rejected: int = 0
    device_faults: int = 0
    last_episode_event_rejection: str = ""


# -------------------------------------------------------------------------------------- node


class PolicyNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.cfg: PolicyNodeConfig = declare_config(self, PolicyNodeConfig)
        if not self.cfg.observation_keys:
            raise ValueError("observation_keys is empty: configure the policy's observation topics")
        self.action_space = ActionSpace(self.cfg.action_space_config())
        self._joint_names = self.cfg.joint_state_names or self.cfg.hand_joint_names
        # Observation key whose joint positions can serve as the hand's hold target.
        self._hand_key = next(
            (k for k, t in zip(self.cfg.observation_keys, self.cfg.observation_types, strict=True)
             if t == "joint_state" and self.action_space.hand is not None
             and tuple(self._joint_names) == self.cfg.hand_joint_names),
            None,
        )

        # State shared between callbacks and workers; RLock because helpers nest.
        self._lock = threading.RLock()
        self._policy: _LoadedPolicy | None = None
        self._pending: _LoadedPolicy | None = None
        self._buffer: ObservationBuffer | None = None
        self._scheduler: ChunkScheduler | None = None
        self._episode: _Episode | None = None
        self._known_episode_ids: deque[str] = deque(maxlen=256)
        # A START from another node that waits for good inputs: (episode id, monotonic deadline).
        self._pending_start: tuple[str, float] | None = None
        self._closing: list[EpisodeRecorder] = []
        self._hold_reason = "starting"
        self._hold_kind = ""
        self._hold_logged_at = 0.0
        self._safety_hold = True
        self._last_tick_overrun = False
        # Latest hand target seen on the hand command topic (ours or e.g. teleop's): what the
        # hand driver is holding now, hence the hand part of the hold action.
        self._hand_target: np.ndarray | None = None
        self._stats = _Stats()
        self._stores: dict[str, Any] = {}
        # Learner runs whose announcements a later run superseded (a learner restart is a new run).
        self._retired_runs: set[str] = set()
        # Fail at start-up on a bad key file (mode, contents), not at the first announcement.
        self._checkpoint_key = load_optional_key(self.cfg.checkpoint_key_file)
        self._replay_key = load_optional_key(self.cfg.replay_key_file)

        self._inference_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inference")
        # A thread that ends after each load: see transient_worker (OpenMP pools slow acting).
        self._checkpoint_pool = TransientWorker("checkpoint")
        self._replay_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="replay")

        if self.cfg.torch_num_threads > 0:
            import torch

            torch.set_num_threads(self.cfg.torch_num_threads)
        if self.cfg.allow_tf32:
            import torch

            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

        self._control_group = MutuallyExclusiveCallbackGroup()
        self._sensor_group = ReentrantCallbackGroup()
        self._event_group = MutuallyExclusiveCallbackGroup()

        self._arm_pub = self.create_publisher(PoseStamped, self.cfg.arm_command_topic, 10)
        self._hand_pub = self.create_publisher(JointState, self.cfg.hand_command_topic, 10)
        self._chunk_pub = self.create_publisher(JointTrajectory, self.cfg.chunk_topic, 10)
        self._episode_pub = self.create_publisher(EpisodeEvent, self.cfg.episode_topic, 10)
        self._replay_pub = self.create_publisher(ReplayEpisode, self.cfg.replay_topic, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self._create_observation_subscriptions()
        if self.action_space.hand is not None:
            self.create_subscription(
                JointState, self.cfg.hand_command_topic, self._on_hand_command, 10,
                callback_group=self._sensor_group,
            )
        # Callbacks with the message info: its publisher gid names the sending node. The gates
        # hold messages whose sender discovery has not named yet; their retry timer shares the
        # mutually exclusive event group with the subscriptions.
        self._reward_gate = SenderGate(self, self.resolve_topic_name(self.cfg.reward_topic), self._on_reward,
                                       timeout_s=self.cfg.sender_discovery_timeout_s,
                                       check=bool(self.cfg.reward_sources))
        self._episode_gate = SenderGate(
            self, self.resolve_topic_name(self.cfg.episode_topic), self._on_episode_event,
            timeout_s=self.cfg.sender_discovery_timeout_s,
            check=bool(self.cfg.device_fault_sources or self.cfg.episode_authorities))
        self.create_subscription(RewardEventMsg, self.cfg.reward_topic, self._reward_gate.admit, 100,
                                 callback_group=self._event_group)
        self.create_subscription(EpisodeEvent, self.cfg.episode_topic, self._episode_gate.admit, 10,
                                 callback_group=self._event_group)
        self.create_timer(0.05, self._retry_gates, callback_group=self._event_group)
        # Transient local: the learner's latest announcement reaches a policy node started later.
        self.create_subscription(CheckpointAvailable, self.cfg.checkpoint_topic, self._on_checkpoint,
                                 CHECKPOINT_QOS, callback_group=self._event_group)
        self.create_service(Trigger, "~/start_episode", self._on_start_service,
                            callback_group=self._event_group)
        self.create_service(Trigger, "~/stop_episode", self._on_stop_service,
                            callback_group=self._event_group)
        self._control_timer = self.create_timer(self.cfg.period_s, self._on_control_tick,
                                                callback_group=self._control_group)
        self._diag_timer = self.create_timer(self.cfg.diagnostics_period_s, self.publish_diagnostics,
                                             callback_group=self._event_group)

        if self.cfg.checkpoint:
            self._checkpoint_pool.submit(self._load_checkpoint, self.cfg.checkpoint, "", None, "initial")
        if not self.cfg.checkpoint_roots:
            self.get_logger().warning("checkpoint_roots is empty: every announced checkpoint will be refused")
        if self._checkpoint_key is None:
            self.get_logger().warning("checkpoint_key_file is empty: checkpoint announcements are not authenticated "
                                      "(only their location and step order are checked)")
        self.get_logger().info(
            f"policy node up: {self.cfg.control_rate_hz:g} Hz, observations "
            f"{list(self.cfg.observation_keys)}, action dims {self.action_space.names}, "
            f"checkpoint {self.cfg.checkpoint or '(waiting for one)'}"
        )

    # ------------------------------------------------------------------------ subscriptions

    def _create_observation_subscriptions(self) -> None:
        converters: dict[str, tuple[type, Callable[[Any], np.ndarray]]] = {
            "image": (Image, image_to_rgb),
            "joint_state": (JointState, lambda m: joint_positions(m, self._joint_names)),
            "pose": (PoseStamped, lambda m: pose_to_array(m.pose)),
            "pose_with_covariance": (PoseWithCovarianceStamped, lambda m: pose_to_array(m.pose.pose)),
            "float_array": (Float32MultiArray, float_array_to_vector),
        }
        for key, kind, topic in zip(self.cfg.observation_keys, self.cfg.observation_types,
                                    self.cfg.observation_topics, strict=True):
            msg_type, convert = converters[kind]
            self.create_subscription(
                msg_type, topic,
                lambda msg, key=key, convert=convert: self._on_observation(key, msg, convert),
                qos_profile_sensor_data, callback_group=self._sensor_group,
            )

    def _clock_s(self) -> float:
        """The node's clock (ROS time: wall or simulated) in seconds, what header stamps are on."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_observation(self, key: str, msg: Any, convert: Callable[[Any], np.ndarray]) -> None:
        buffer = self._buffer
        if buffer is None or key not in buffer.keys:
            return  # no policy yet, or a key the policy does not use (warned at load)
        try:
            value = convert(msg)
        except ValueError as exc:
            buffer.invalidate(key, str(exc))
            self._note_observation_error(key, str(exc))
            return
        header = getattr(msg, "header", None)
        stamp = time_to_seconds(header.stamp) if header is not None else None
        reason = buffer.update(key, value, time.monotonic(), stamp)
        if reason:
            self._note_observation_error(key, reason)

    def _note_observation_error(self, key: str, reason: str) -> None:
        with self._lock:
            self._stats.last_observation_error = f"{key}: {reason}"
        self.get_logger().warning(f"rejected observation {key!r}: {reason}",
                                  throttle_duration_sec=_LOG_THROTTLE_S)

    def _on_hand_command(self, msg: JointState) -> None:
        try:
            target = joint_positions(msg, self.cfg.hand_joint_names)
        except ValueError as exc:
            self.get_logger().warning(f"ignoring hand command: {exc}", throttle_duration_sec=_LOG_THROTTLE_S)
            return
        if np.isfinite(target).all():
            with self._lock:
                self._hand_target = target.astype(np.float32)

    def _retry_gates(self) -> None:
        self._reward_gate.retry()
        self._episode_gate.retry()

    def _refuse_reward(self, why: str) -> None:
        with self._lock:
            self._stats.rewards_rejected += 1
            self._stats.last_reward_rejection = why
            count = self._stats.rewards_rejected
        self.get_logger().warning(f"reward refused, not recorded: {why} [{count} refused so far]",
                                  throttle_duration_sec=_LOG_THROTTLE_S)

    def _on_reward(self, msg: RewardEventMsg, sender: str) -> None:
        event = RewardEvent(stamp=time_to_seconds(msg.header.stamp), value=float(msg.value),
                            subtask=str(msg.subtask))
        kind = _REWARD_SOURCE_KINDS.get(int(msg.source), f"unknown({int(msg.source)})")
        if self.cfg.reward_sources and sender not in self.cfg.reward_sources:
            self._refuse_reward(f"from {sender or 'an unknown publisher'}, not among reward_sources "
                                f"{list(self.cfg.reward_sources)} (value {event.value:g}, {event.subtask!r})")
            return
        if self.cfg.reward_source_kinds and kind not in self.cfg.reward_source_kinds:
            self._refuse_reward(f"source {kind} is not among reward_source_kinds {list(self.cfg.reward_source_kinds)}")
            return
        problem = self.cfg.reward_spec().check(event)
        if problem:
            self._refuse_reward(f"{problem} (from {kind})")
            return
        with self._lock:
            recorders = list(self._closing)
            if self._episode is not None and self._episode.recorder is not None:
                recorders.append(self._episode.recorder)
        # Give it to every recorder whose episode may contain it; each checks the time window.
        reasons = [recorder.add_reward(event) for recorder in recorders]
        if recorders and all(reasons):
            if any("already rewarded" in r for r in reasons):
                self._refuse_reward(f"{reasons[-1]} (value {event.value:g})")
                return
            self.get_logger().warning(f"reward {event.value:g} at {event.stamp:.3f} not recorded: "
                                      f"{reasons[-1]}", throttle_duration_sec=_LOG_THROTTLE_S)

    def _on_episode_event(self, msg: EpisodeEvent, sender: str) -> None:
        episode_id = str(msg.episode_id)
        if self.cfg.device_fault_sources or self.cfg.episode_authorities:
            if sender == self.get_fully_qualified_name():
                return  # our own announcement coming back
            if sender and sender in self.cfg.device_fault_sources and msg.event == EpisodeEvent.ABORT:
                self._on_device_fault(sender, str(msg.reason))
                return
        if self.cfg.episode_authorities and sender not in self.cfg.episode_authorities:
            names = {EpisodeEvent.START: "START", EpisodeEvent.END: "END", EpisodeEvent.ABORT: "ABORT"}
            why = (f"{names.get(msg.event, msg.event)} for {episode_id!r} ({msg.reason!r}) from "
                   f"{sender or 'an unknown publisher'}, not among episode_authorities "
                   f"{list(self.cfg.episode_authorities)}")
            with self._lock:
                self._stats.episode_events_rejected += 1
                self._stats.last_episode_event_rejection = why
            self.get_logger().warning(f"episode event refused: {why}", throttle_duration_sec=_LOG_THROTTLE_S)
            return
        with self._lock:
            if episode_id and episode_id in self._known_episode_ids:
                running = self._episode is not None and self._episode.episode_id == episode_id
                if not (running and msg.event in (EpisodeEvent.END, EpisodeEvent.ABORT)):
                    return  # our own announcement coming back, or an episode already handled
            if msg.event == EpisodeEvent.START:
                if self._episode is None and self.cfg.start_on_episode_event:
                    if episode_id and not _EPISODE_ID_RE.match(episode_id):
                        self.get_logger().warning(f"episode id {episode_id!r} cannot name a replay "
                                                  "episode; using a new id")
                        episode_id = ""
                    problem = self._start_episode(episode_id or None, announce=not episode_id)
                    if problem.startswith(_INPUTS_NOT_READY) and self.cfg.start_wait_s > 0:
                        self._pending_start = (episode_id, time.monotonic() + self.cfg.start_wait_s)
                        self.get_logger().info(f"episode {episode_id!r}: waiting up to "
                                               f"{self.cfg.start_wait_s:g} s for good inputs ({problem})")
                    elif problem:
                        self.get_logger().warning(f"cannot start episode {episode_id!r}: {problem}")
            elif (msg.event in (EpisodeEvent.END, EpisodeEvent.ABORT) and self._pending_start is not None
                  and self._pending_start[0] == episode_id):
                self._pending_start = None
                self.get_logger().warning(f"episode {episode_id!r} ended before the inputs were good: not recorded")
            elif msg.event in (EpisodeEvent.END, EpisodeEvent.ABORT) and self._episode is not None:
                terminated = msg.event == EpisodeEvent.END and msg.reason not in _TRUNCATION_REASONS
                self._end_episode(f"{'END' if msg.event == EpisodeEvent.END else 'ABORT'} event: "
                                  f"{msg.reason or 'no reason'}", terminated=terminated, announce=False)

    def _on_device_fault(self, sender: str, reason: str) -> None:
        """A driver reported a fault that invalidates the running episode (e.g. a reflex)."""
        why = f"device fault from {sender}: {reason or 'no reason'}"
        with self._lock:
            self._stats.device_faults += 1
            if self._episode is None:
                self.get_logger().warning(f"{why} (no episode running)")
                return
            self.get_logger().error(f"{why}: ending episode {self._episode.episode_id}; it is kept out "
                                    "of training until labeled")
            self._end_episode(f"ABORT: {why}", terminated=False, announce=True,
                              event=EpisodeEvent.ABORT, reason=why, device_fault=why)

    # ----------------------------------------------------------------------------- services

    def _on_start_service(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            problem = self._start_episode(None, announce=True)
            response.success = not problem
            response.message = problem or f"started episode {self._episode.episode_id}"
        return response

    def _on_stop_service(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            if self._episode is None:
                response.success, response.message = False, "no episode running"
                return response
            episode_id = self._episode.episode_id
            self._end_episode("stopped by ~/stop_episode", terminated=False, announce=True)
        response.success, response.message = True, f"stopped episode {episode_id}"
        return response

    # ------------------------------------------------------------------------------ control

    def _on_control_tick(self) -> None:
        """One control step: check inputs, maybe start a decision, publish the next action."""
        now = time.monotonic()
        stamp = self.get_clock().now()
        with self._lock:
            self._swap_pending_policy()
            reason, kind = self._input_problem(now)
            if self._pending_start is not None and (not reason or now > self._pending_start[1]):
                self._start_pending_episode(reason)
            if reason:
                self._enter_safety_hold(reason, kind)
                return
            if self._safety_hold:
                self._safety_hold = False
                self._hold_kind = ""
                self.get_logger().info("inputs are good again: resuming")
            if self._episode is None and self.cfg.auto_start_episode:
                self._start_episode(None, announce=True)
            if self._episode is None:
                self._hold_reason = "no episode running (call ~/start_episode)"
                return
            if self._buffer.history_length() == 0:
                self._buffer.sample(now)  # the episode started in this tick: its first step
            try:
                command, overrun = self._next_command(stamp)
            except ValueError as exc:
                # No safe hold exists (e.g. no hand state yet): do not command at all.
                self._enter_safety_hold(f"cannot compute a command: {exc}", "no command")
                return
            self._last_tick_overrun = overrun
            self._hold_reason = "inference late: holding (overrun)" if overrun else ""
            self._publish_command(command, stamp)
            if self._policy.step not in self._episode.checkpoint_steps:
                self._episode.checkpoint_steps.append(self._policy.step)
            self._record_step(stamp, command)

    def _input_problem(self, now: float) -> tuple[str, str]:
        """Why the node must not command now, and a short form of it without numbers that
        changes only when the kind of problem changes (for logging); ('', '') when it may.
        Samples the observation history."""
        if self._policy is None:
            return "no policy loaded", "no policy"
        problems = self._buffer.sample(now, self._clock_s())
        if problems:
            ordered = sorted(problems.items())
            return (
                "; ".join(f"{key} {reason}" for key, reason in ordered),
                "; ".join(f"{key} {reason.split(':', 1)[0]}" for key, reason in ordered),
            )
        return "", ""

    def _enter_safety_hold(self, reason: str, kind: str) -> None:
        # Log a new kind of problem at once, the same one again only every few seconds.
        now = time.monotonic()
        if not self._safety_hold or kind != self._hold_kind:
            self.get_logger().warning(f"stop commanding: {reason}")
            self._hold_logged_at = now
        elif now - self._hold_logged_at >= _LOG_THROTTLE_S:
            self.get_logger().warning(f"still not commanding: {reason}")
            self._hold_logged_at = now
        self._safety_hold = True
        self._hold_kind = kind
        self._hold_reason = reason
        if self._episode is not None:
            self._end_episode(f"safety hold: {reason}", terminated=False, announce=True)
        if self._scheduler is not None:
            self._scheduler.reset()  # the queued plan belongs to a past the robot left
        if self._buffer is not None:
            self._buffer.reset_history()  # the history must be contiguous control ticks

    def _hold_action(self) -> np.ndarray:
        measured = self._buffer.latest(self._hand_key) if self._hand_key else None
        return self.action_space.hold(
            last_command=self._hold_command_basis(), hand_positions=measured
        )

    def _hold_command_basis(self) -> np.ndarray | None:
        """An [A] vector whose hand part is the hand's current target (None if unknown)."""
        if self.action_space.hand is None or self._hand_target is None:
            return None
        basis = np.zeros(self.action_space.action_dim, np.float32)
        basis[self.action_space.hand] = self._hand_target
        return basis

    def _next_command(self, stamp: Time) -> tuple[np.ndarray, bool]:
        scheduler = self._scheduler
        if scheduler.decision_due():
            request = scheduler.begin_decision(self._hold_action())
            history = self._buffer.history()
            self._inference_pool.submit(self._infer, self._policy, request, history, stamp)
        action = scheduler.tick()
        overrun = action is HOLD
        if overrun:
            action = self._hold_action()
            self.get_logger().warning("inference late: queue empty, holding",
                                      throttle_duration_sec=_LOG_THROTTLE_S)
        previous = self._hand_target
        if previous is None and self._hand_key is not None:
            previous = self._buffer.latest(self._hand_key)
        command, report = self.action_space.clip(action, previous_hand=previous)
        if report.any:
            self._stats.commands_clipped += 1
        return command, overrun

    def _publish_command(self, command: np.ndarray, stamp: Time) -> None:
        ros_stamp = stamp.to_msg()
        if self.action_space.arm is not None:
            self._arm_pub.publish(relative_pose_command(command[self.action_space.arm], ros_stamp,
                                                        self.cfg.arm_command_frame))
        if self.action_space.hand is not None:
            hand = command[self.action_space.hand]
            self._hand_pub.publish(hand_command(hand, self.cfg.hand_joint_names, ros_stamp))
            self._hand_target = hand.copy()
        self._stats.commands_published += 1
        if self._last_tick_overrun:
            self._stats.hold_commands += 1

    def _record_step(self, stamp: Time, command: np.ndarray) -> None:
        episode = self._episode
        if episode is None or episode.recorder is None:
            return
        try:
            episode.recorder.add_step(stamp.nanoseconds * 1e-9, self._buffer.current(), command)
        except (ValueError, RuntimeError) as exc:
            # E.g. the clock jumped back: the recording cannot go on, but what it has is valid.
            self._end_episode(f"recording failed: {exc}", terminated=False, announce=True)
            return
        if episode.recorder.full:
            self._end_episode(f"reached max_episode_steps={self.cfg.max_episode_steps}",
                              terminated=False, announce=True, event=EpisodeEvent.END, reason="timeout")

    # ---------------------------------------------------------------------------- episodes

    def _start_pending_episode(self, input_problem: str) -> None:
        """The waiting START: start it now that the inputs are good, or refuse it (waited too
        long, ``input_problem`` says why). Caller holds the lock."""
        episode_id, _ = self._pending_start
        self._pending_start = None
        problem = (f"{_INPUTS_NOT_READY}{input_problem} (after waiting {self.cfg.start_wait_s:g} s)"
                   if input_problem else self._start_episode(episode_id or None, announce=not episode_id))
        if problem:
            self.get_logger().warning(f"cannot start episode {episode_id!r}: {problem}")

    def _start_episode(self, episode_id: str | None, announce: bool) -> str:
        """Start an episode now; returns '' or why it cannot start. Caller holds the lock."""
        if self._episode is not None:
            return f"episode {self._episode.episode_id} is already running"
        if self._policy is None:
            return "no policy loaded"
        problems = self._buffer.problems(time.monotonic(), clock_now=self._clock_s())
        if problems:
            return _INPUTS_NOT_READY + "; ".join(f"{k} {r}" for k, r in sorted(problems.items()))
        if not episode_id:
            episode_id = f"online-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        stamp = self.get_clock().now().nanoseconds * 1e-9
        recorder = None
        if self.cfg.replay_uri:
            recorder = EpisodeRecorder(
                EpisodeRecorderConfig(control_period_s=self.cfg.period_s, subtasks=self.cfg.subtasks,
                                      max_steps=self.cfg.max_episode_steps, reward_spec=self.cfg.reward_spec()),
                episode_id=episode_id, start_time=stamp, obs_keys=list(self._policy.config.observation_spec),
                action_dim=self.action_space.action_dim,
            )
        self._episode = _Episode(episode_id, stamp, recorder)
        self._known_episode_ids.append(episode_id)
        # A fresh start: first decision with P hold actions, history padded from the next tick.
        self._scheduler.reset()
        self._buffer.reset_history()
        # The hand's last target belongs to the previous episode: the reset between episodes
        # moved the hand (home pose). Holding it would make the prefix (and the first P
        # executed actions) jump back to where the last episode ended, e.g. a closed fist
        # before the approach. Until this episode commands the hand, hold what is measured.
        self._hand_target = None
        self.get_logger().info(f"episode {episode_id} started")
        if announce:
            self._announce_episode(episode_id, EpisodeEvent.START, "started")
        return ""

    def _end_episode(self, why: str, terminated: bool, announce: bool,
                     event: int | None = None, reason: str = "", device_fault: str = "") -> None:
        """End the running episode; commit its recording in the background. Caller holds the lock."""
        episode = self._episode
        if episode is None:
            return
        self._episode = None
        self._scheduler.reset()  # stop commanding now; nothing queued survives the episode
        self.get_logger().info(f"episode {episode.episode_id} ended ({why})")
        if announce:
            if event is None:
                event = EpisodeEvent.END if terminated else EpisodeEvent.ABORT
            self._announce_episode(episode.episode_id, event, reason or why)
        if episode.recorder is None:
            return
        end = self.get_clock().now().nanoseconds * 1e-9
        episode.recorder.close(end)
        self._closing.append(episode.recorder)
        metadata = {"terminated": terminated, "extra": {
            "end_reason": why, "checkpoint_steps": list(episode.checkpoint_steps),
            "checkpoint_stage": self._policy.stage if self._policy else ""}}
        if device_fault:
            metadata["extra"]["device_fault"] = device_fault  # sernf_data.labels: awaits a label
        self._replay_pool.submit(self._commit_episode, episode.recorder, metadata)

    def _announce_episode(self, episode_id: str, event: int, reason: str) -> None:
        msg = EpisodeEvent()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.episode_id = episode_id
        msg.event = event
        msg.reason = reason[:200]
        self._episode_pub.publish(msg)

    def _commit_episode(self, recorder: EpisodeRecorder, metadata: dict[str, Any]) -> None:
        """Replay worker: wait for late rewards, write the episode, announce it."""
        time.sleep(self.cfg.reward_grace_s)
        with self._lock:
            if recorder in self._closing:
                self._closing.remove(recorder)
        try:
            steps, meta = recorder.finish(metadata)
            store = self._replay_store()
            episode_id = store.append_episode(steps, meta)
        except (ImportError, OSError, ValueError, RuntimeError, KeyError) as exc:
            with self._lock:
                self._stats.last_replay_error = f"{recorder.episode_id}: {exc}"
            self.get_logger().error(f"episode {recorder.episode_id} not committed to "
                                    f"{self.cfg.replay_uri}: {exc}")
            return
        summary = EpisodeSummary.of(steps, meta)
        with self._lock:
            self._stats.episodes_committed += 1
        msg = ReplayEpisode()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.episode_id = episode_id
        msg.uri = self.cfg.replay_uri
        msg.num_steps = summary.num_steps
        msg.episode_return = summary.episode_return
        msg.source = meta["source"]
        msg.subtask_names = list(summary.subtask_names)
        msg.subtask_success = list(summary.subtask_success)
        if self._replay_key is not None:
            msg.key_id = self._replay_key.key_id
            msg.signature = self._replay_key.sign(REPLAY_KIND, replay_fields(
                episode_id=msg.episode_id, uri=msg.uri, num_steps=msg.num_steps, episode_return=msg.episode_return,
                source=msg.source, subtask_names=list(msg.subtask_names), subtask_success=list(msg.subtask_success)))
        if self.context.ok():
            self._replay_pub.publish(msg)
        self.get_logger().info(f"episode {episode_id} committed: {summary.num_steps} steps, "
                               f"return {summary.episode_return:g}")

    def _replay_store(self) -> Any:
        """The EpisodeStore for replay_uri (opened once; created with the policy's spec)."""
        uri = self.cfg.replay_uri
        if uri not in self._stores:
            spec = StoreSpec(obs=dict(self._policy.config.observation_spec),
                             action_dim=self.action_space.action_dim,
                             control_rate_hz=self.cfg.control_rate_hz)
            self._stores[uri] = EpisodeStore(uri, mode="a", spec=spec)
        return self._stores[uri]

    # ---------------------------------------------------------------------------- inference

    def _infer(self, loaded: _LoadedPolicy, request: InferenceRequest,
               history: dict[str, np.ndarray], decision_stamp: Time) -> None:
        """Inference worker: one decision -> a chunk in the queue (or a failed request)."""
        scheduler = self._scheduler
        try:
            if self.cfg.artificial_inference_delay_s > 0:
                time.sleep(self.cfg.artificial_inference_delay_s)
            chunks, info = loaded.policy.act_batch(
                {key: value[None] for key, value in history.items()},  # [1, T, ...]
                request.prefix[None],  # [1, P, A]
                num_samples=self.cfg.num_samples or None,
                sigma=self.cfg.sigma_sample or None,
            )
            result = scheduler.submit(chunks[0], request.request_id)  # chunks: [1, H, A]
        except Exception as exc:  # noqa: BLE001 - any model failure must end in a hold, not a dead worker
            scheduler.fail(request.request_id)
            with self._lock:
                self._stats.inference_errors += 1
                self._stats.last_inference_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"inference failed (holding, retrying at the next tick): {exc}",
                                    throttle_duration_sec=_LOG_THROTTLE_S)
            return
        with self._lock:
            self._stats.inference_latency_s = result.latency_s
            self._stats.log_prob = float(info["log_prob"][0])
            self._stats.q = float("nan") if info.get("q") is None else float(info["q"][0])
            if result.dropped:
                self._stats.late_chunks += 1
        if result.dropped:
            self.get_logger().warning(f"late chunk: {result.reason}", throttle_duration_sec=_LOG_THROTTLE_S)
        elif not result.accepted:
            # The episode ended or a safety stop cleared the queue while inference ran.
            self.get_logger().info(f"chunk not used: {result.reason}")
        if result.accepted:
            first = decision_stamp + Duration(
                nanoseconds=int(request.prefix.shape[0] * self.cfg.period_s * 1e9))
            self._chunk_pub.publish(chunk_to_trajectory(
                chunks[0], self.action_space.names, first.to_msg(), self.cfg.period_s))
        self.publish_diagnostics()

    # --------------------------------------------------------------------------- checkpoints

    def _on_checkpoint(self, msg: CheckpointAvailable) -> None:
        """An announcement: cheap checks here (fields, signature, step order), disk work on
        the checkpoint worker. Nothing from the topic is trusted (see the module docstring)."""
        sha = str(msg.sha256).strip().lower()
        uri, step, stage, run_id = str(msg.uri), int(msg.step), str(msg.stage), str(msg.run_id)
        config_sha = str(msg.config_sha256).strip().lower()
        if not uri or not _is_sha256(sha) or (config_sha and not _is_sha256(config_sha)):
            self._reject_checkpoint(uri, f"invalid announcement (uri {msg.uri!r}, sha256 {msg.sha256!r}, "
                                         f"config_sha256 {msg.config_sha256!r})")
            return
        if self._checkpoint_key is not None:
            fields = checkpoint_fields(uri=str(msg.uri), step=step, stage=stage, sha256=str(msg.sha256),
                                       run_id=run_id, config_sha256=str(msg.config_sha256))
            problem = self._checkpoint_key.verify(CHECKPOINT_KIND, fields, str(msg.key_id), str(msg.signature))
            if problem:
                self._reject_checkpoint(uri, problem)
                return
        with self._lock:
            running = self._pending or self._policy
            if running is not None and running.sha256 == sha and running.step == step:
                # Learners re-announce their latest checkpoint (transient local, after a
                # restart); reloading the model we already run would only cost time. A restarted
                # learner announces it under its new run id: later steps come from that run.
                if run_id and run_id != running.run_id:
                    if running.run_id:
                        self._retired_runs.add(running.run_id)
                    self._adopt_run(run_id)
                self.get_logger().info(f"checkpoint {msg.uri} (step {msg.step}) is the one already loaded")
                return
            problem = self._order_problem(run_id, step, sha)
        if problem:
            self._reject_checkpoint(uri, problem)
            return
        self.get_logger().info(f"checkpoint announced: {msg.uri} (step {msg.step}, {msg.stage}, run {run_id or '?'})")
        self._checkpoint_pool.submit(self._load_checkpoint, uri, sha, step, stage, run_id, config_sha, True)

    def _order_problem(self, run_id: str, step: int, sha: str) -> str:
        """Why (run_id, step) may not replace the newest verified policy; '' if it may. Holds the lock."""
        newest = self._pending or self._policy
        current = None if newest is None else (newest.run_id, newest.step, newest.sha256)
        return checkpoint_order_problem(current, run_id, step, sha, self._retired_runs)

    def _adopt_run(self, run_id: str) -> None:
        """The running policy now belongs to learner run ``run_id``. Holds the lock."""
        for attr in ("_pending", "_policy"):
            loaded = getattr(self, attr)
            if loaded is not None:
                setattr(self, attr, dataclasses.replace(loaded, run_id=run_id))

    def _load_checkpoint(self, uri: str, sha256: str, step: int | None, stage: str, run_id: str = "",
                         config_sha256: str = "", announced: bool = False) -> None:
        """Checkpoint worker: verify and load; the control tick swaps it in between chunks."""
        # Lazy imports keep torch off the import path of tools that only read the config.
        from .checkpoint import (
            CONFIG_FILE,
            WEIGHTS_FILE,
            CheckpointError,
            file_sha256,
            resolve_inside_roots,
        )
        from .policy import Policy

        try:
            # Announced: only from the configured roots, symlinks resolved (the node's own
            # checkpoint parameter is configuration, trusted as such).
            directory = resolve_inside_roots(uri, self.cfg.checkpoint_roots) if announced else Path(uri)
            actual = file_sha256(directory / WEIGHTS_FILE)
            if sha256 and actual != sha256:
                raise CheckpointError(f"sha256 of {WEIGHTS_FILE} is {actual}, announced {sha256}")
            if config_sha256 and file_sha256(directory / CONFIG_FILE) != config_sha256:
                raise CheckpointError(f"sha256 of {CONFIG_FILE} differs from the announced {config_sha256}")
            policy = Policy.load(directory, device=self.cfg.device)
            if sha256 and policy_weights_sha(directory) != sha256:
                raise CheckpointError("the checkpoint changed while it was loaded")
            self._check_compatible(policy.config)
            if self.cfg.selection:
                policy.config.selection = self.cfg.selection
            self._dry_run(policy)
            if self.cfg.compile_for_acting:
                self._compile(policy)
            if self.cfg.cuda_graph:
                self._capture_cuda_graph(policy)
            if step is None:
                step = self._step_from_metadata(directory)
        except (CheckpointError, OSError, ValueError, RuntimeError) as exc:
            self._reject_checkpoint(uri, str(exc))
            return
        with self._lock:
            # Announcements may have been overtaken while this one loaded: check the order again.
            problem = self._order_problem(run_id, int(step), actual) if announced else ""
            if not problem:
                newest = self._pending or self._policy
                if newest is not None and run_id and newest.run_id and run_id != newest.run_id:
                    self._retired_runs.add(newest.run_id)
                self._pending = _LoadedPolicy(policy, uri, int(step), stage, actual, run_id)
                self._stats.last_checkpoint_error = ""
        if problem:
            self._reject_checkpoint(uri, problem)
            return
        self.get_logger().info(f"checkpoint {uri} (step {step}) verified; swapping it in between chunks")

    def _reject_checkpoint(self, uri: str, why: str) -> None:
        with self._lock:
            self._stats.checkpoints_rejected += 1
            self._stats.last_checkpoint_error = f"{uri}: {why}"
            running = "none" if self._policy is None else f"step {self._policy.step}"
        self.get_logger().error(f"checkpoint {uri} rejected, keeping the current policy ({running}): {why}")
        self.publish_diagnostics()

    def _check_compatible(self, config: Any) -> None:
        """Raise ValueError unless the policy fits this node and the running policy."""
        a = self.action_space.action_dim
        if config.action_dim != a:
            raise ValueError(f"policy action_dim {config.action_dim} != action space {a} "
                             f"({self.action_space.names})")
        kinds = {"image": "rgb", "joint_state": "lowdim", "pose": "lowdim", "pose_with_covariance": "lowdim",
                 "float_array": "lowdim"}
        topics = dict(zip(self.cfg.observation_keys, self.cfg.observation_types, strict=True))
        for key, spec in config.observation_spec.items():
            if key not in topics:
                raise ValueError(f"policy observation {key!r} has no topic (observation_keys)")
            if kinds[topics[key]] != spec.kind:
                raise ValueError(f"policy observation {key!r} is {spec.kind}, its topic is {topics[key]}")
            if topics[key] in ("pose", "pose_with_covariance") and tuple(spec.shape) != (7,):
                raise ValueError(f"policy observation {key!r} has shape {spec.shape}; poses are (7,)")
            if topics[key] == "joint_state" and tuple(spec.shape) != (len(self._joint_names),):
                raise ValueError(f"policy observation {key!r} has shape {spec.shape}; "
                                 f"{len(self._joint_names)} joints are read")
        unused = sorted(set(topics) - set(config.observation_spec))
        if unused:
            self.get_logger().warning(f"configured observations {unused} are not used by the policy")
        with self._lock:
            current = self._policy.config if self._policy is not None else None
        if current is not None:
            mine = (current.obs_history, current.prefix_len, current.horizon, current.action_dim)
            theirs = (config.obs_history, config.prefix_len, config.horizon, config.action_dim)
            if mine != theirs:
                raise ValueError(f"(T, P, H, A) = {theirs} differs from the running policy's {mine}")
            if dict(current.observation_spec) != dict(config.observation_spec):
                raise ValueError("observation spec differs from the running policy's")

    def _dry_run(self, policy: Any) -> None:
        """One inference on placeholder inputs: a policy that cannot act is not swapped in."""
        policy.warm_up(batch_size=1, num_samples=1)

    def _compile(self, policy: Any) -> None:
        """``Policy.compile_for_acting``, then warm-up chunks at the shapes the node acts with
        (the dry run's N = 1 would not compile the real path)."""
        if policy.config.actor != "flow":
            raise ValueError(f"compile_for_acting needs a flow actor, the checkpoint has {policy.config.actor!r}")
        started = time.monotonic()
        policy.compile_for_acting()
        for _ in range(2):  # the first call compiles; the second runs the compiled path
            policy.warm_up(batch_size=1, num_samples=self.cfg.num_samples or None, sigma=self.cfg.sigma_sample or None)
        self.get_logger().info(f"compiled the policy for acting in {time.monotonic() - started:.1f} s")

    def _capture_cuda_graph(self, policy: Any) -> None:
        """``Policy.capture_cuda_graph`` at the shapes the node acts with. A checkpoint whose
        capture fails (an actor without a flow, an op a graph cannot hold) is still a valid
        policy: it acts eagerly, slower, and the log says why."""
        started = time.monotonic()
        try:
            policy.capture_cuda_graph(batch_size=1, num_samples=self.cfg.num_samples or None,
                                      sigma=self.cfg.sigma_sample or None)
        except (ValueError, RuntimeError) as exc:
            policy.release_cuda_graph()
            self.get_logger().warning(f"no CUDA graph for this checkpoint, it acts eagerly: {exc}")
            return
        self.get_logger().info(f"captured the acting CUDA graph in {time.monotonic() - started:.1f} s")

    @staticmethod
    def _step_from_metadata(directory: Path) -> int:
        """Training step recorded in the checkpoint's metadata (0 when absent)."""
        import json

        from .checkpoint import CONFIG_FILE

        metadata = json.loads((directory / CONFIG_FILE).read_text()).get("metadata") or {}
        step = metadata.get("step", 0) if isinstance(metadata, dict) else 0
        return int(step) if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else 0

    def _swap_pending_policy(self) -> None:
        """Swap a verified checkpoint in, between chunks (no request in flight). Holds the lock."""
        pending = self._pending
        if pending is None or (self._scheduler is not None and self._scheduler.stats().in_flight):
            return
        self._pending = None
        if self._policy is None:
            cfg = pending.config
            self._buffer = ObservationBuffer(
                cfg.observation_spec,
                ObservationBufferConfig(history=cfg.obs_history, stale_after_s=self.cfg.stale_after_s),
                bounds=self._deployment_bounds(cfg.observation_spec),
            )
            self._scheduler = ChunkScheduler(
                ChunkTimingConfig(P=cfg.prefix_len, H=cfg.horizon, action_dim=cfg.action_dim)
            )
        self._policy = pending
        self.get_logger().info(f"running checkpoint {pending.uri} (step {pending.step}, {pending.stage})")

    def _deployment_bounds(self, spec: Any) -> dict[str, KeyBounds]:
        """This robot's physical limits per observation key (on top of the spec's own): a
        magnitude bound for every lowdim value, the hand joint ranges with a margin, the
        workspace box and unit quaternions for poses."""
        out: dict[str, KeyBounds] = {}
        types = dict(zip(self.cfg.observation_keys, self.cfg.observation_types, strict=True))
        cap, tol = self.cfg.lowdim_abs_max, self.cfg.quaternion_tolerance
        for key, key_spec in spec.items():
            if key_spec.kind != "lowdim" or key not in types:
                continue
            d = int(key_spec.shape[0])
            low, high = np.full(d, -cap), np.full(d, cap)
            what, quaternion_at = f"|v| <= {cap:g}", None
            if types[key] in ("pose", "pose_with_covariance"):
                low[:3], high[:3] = np.maximum(low[:3], self.cfg.workspace_low), np.minimum(
                    high[:3], self.cfg.workspace_high)
                quaternion_at, what = 3, f"workspace box {list(self.cfg.workspace_low)}..{list(self.cfg.workspace_high)} m"
            elif types[key] == "joint_state" and key == self._hand_key and self.action_space.hand is not None:
                margin = self.cfg.joint_limit_margin_rad
                low = np.maximum(low, np.asarray(self.cfg.hand_lower) - margin)
                high = np.minimum(high, np.asarray(self.cfg.hand_upper) + margin)
                what = f"hand joint limits +- {margin:g} rad"
            out[key] = KeyBounds(low, high, quaternion_at, tol, what)
        return out

    # ---------------------------------------------------------------------------- diagnostics

    def publish_diagnostics(self) -> None:
        with self._lock:
            stats = dataclasses.replace(self._stats)
            loaded, episode = self._policy, self._episode
            sched = self._scheduler.stats() if self._scheduler is not None else None
            hold_reason, safety = self._hold_reason, self._safety_hold
        holding = bool(hold_reason)
        if safety:
            level, message = DiagnosticStatus.ERROR, f"not commanding: {hold_reason}"
        elif holding:
            level, message = DiagnosticStatus.WARN, hold_reason
        elif stats.last_checkpoint_error:
            level, message = DiagnosticStatus.WARN, f"checkpoint rejected: {stats.last_checkpoint_error}"
        else:
            level, message = DiagnosticStatus.OK, "commanding"
        values: dict[str, object] = {
            "holding": holding,
            "safety_hold": safety,
            "hold_reason": hold_reason,
            "inference_latency_s": stats.inference_latency_s,
            "queue_depth": sched.queue_depth if sched else 0,
            "overruns": sched.overruns if sched else 0,
            "decisions": sched.decisions if sched else 0,
            "actions_dropped": sched.actions_dropped if sched else 0,
            "late_chunks": stats.late_chunks,
            "log_prob": stats.log_prob,
            "q": stats.q,
            "checkpoint_step": loaded.step if loaded else -1,
            "checkpoint_stage": loaded.stage if loaded else "",
            "checkpoint_uri": loaded.uri if loaded else "",
            "checkpoints_rejected": stats.checkpoints_rejected,
            "last_checkpoint_error": stats.last_checkpoint_error,
            "inference_errors": stats.inference_errors,
            "last_inference_error": stats.last_inference_error,
            "last_observation_error": stats.last_observation_error,
            "rewards_rejected": stats.rewards_rejected,
            "last_reward_rejection": stats.last_reward_rejection,
            "episode_events_rejected": stats.episode_events_rejected,
            "device_faults": stats.device_faults,
            "last_episode_event_rejection": stats.last_episode_event_rejection,
            "commands_published": stats.commands_published,
            "hold_commands": stats.hold_commands,
            "commands_clipped": stats.commands_clipped,
            "episode_id": episode.episode_id if episode else "",
            "episode_steps": episode.recorder.num_steps if episode and episode.recorder else 0,
            "episodes_committed": stats.episodes_committed,
            "last_replay_error": stats.last_replay_error,
            # rewards and episode events that waited for DDS discovery to name their sender
            "messages_held_for_sender_discovery": self._reward_gate.held + self._episode_gate.held,
            "messages_awaiting_sender_discovery": self._reward_gate.pending + self._episode_gate.pending,
        }
        if not self.context.ok():
            return
        self._diag_pub.publish(diagnostic_array(
            self.get_clock().now().to_msg(), f"{self.get_name()}: control", "sernf_policy",
            level, message, values))

    # ------------------------------------------------------------------------------ shutdown

    def shutdown_workers(self) -> None:
        """End a running episode (committed, truncated) and stop the worker threads."""
        with self._lock:
            if self._episode is not None:
                self._end_episode("node shutting down", terminated=False, announce=self.context.ok())
        self._control_timer.cancel()
        self._inference_pool.shutdown(wait=False, cancel_futures=True)
        self._checkpoint_pool.shutdown(wait=False, cancel_futures=True)
        # Episodes are data: wait for their commits.
        self._replay_pool.shutdown(wait=True)


#: The node's parameters: exactly the fields of this dataclass (checked against config/*.yaml).
PARAMETERS = PolicyNodeConfig


def main(args: list[str] | None = None) -> None:
    # Control timer, sensor callbacks and event callbacks each get a thread.
    spin_node(PolicyNode, NODE_NAME, num_threads=1, args=args)


if __name__ == "__main__":
    main()
