"""Scripted demonstrations of the hand task recorded in the scissors graph's observation layout.

``python -m sernf.run_graph scissors sim:=true`` runs the real policy against ``sim_world``: the
policy sees three camera images (``front``, ``under``, ``left``, rendered from the world's
MuJoCo cameras ``camera_sources`` at its ``image_size``), the ORCA driver's 17 joint positions
and the Franka bridge's measured end-effector pose in the robot *base* frame, and its actions
pass through the bridge (relative pose in the EE frame, clipped to ``max_translation_m`` /
``max_rotation_rad`` and the workspace box) and the hand driver (17 absolute joint targets).
A checkpoint for that graph must be trained on demonstrations in exactly that layout, which
:class:`GraphLayoutEnv` gives the vectorized hand task:

* observations: ``image_keys[i]`` = ``env.render_camera(camera_sources[i], image_size)`` (the
  very call ``SimWorld.render`` makes), ``joint_key`` = the hand joints in the env's order (the
  driver's, checked against the policy's ``hand_joint_names``), ``pose_key`` = the env's
  world-frame EE pose mapped into the base frame with the world's :class:`BaseFrame`;
* actions: the env's executed actions ``[dx dy dz qw qx qy qz | 17 joint targets]``, the
  bridge's relative EE-frame delta and the driver's targets, with the env's command limits set
  to the bridge's (what the world's arm would have executed);
* the world's control rate (10 Hz) and episode limit.

:func:`record_graph_demos` runs the hand task's scripted expert
(:class:`~sernf_sim.hand_pick_place.expert.HandExpert`, which reads the simulator state, not the
observations) through the chunk timing ``(T, P, H)`` and streams the episodes into a zarr
:class:`~sernf_data.store.EpisodeStore`, one batch at a time (images make a whole dataset too
big to hold in memory).

No ROS and no learner here: ``sernf.scissors_sim_data`` reads the graph's parameter files into
a :class:`GraphDemoLayout` and trains on the store.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sernf_data.spec import ObsKeySpec
from sernf_sim.evaluation import rollout_chunked
from sernf_sim.hand_pick_place import model as hand_model
from sernf_sim.hand_pick_place.env import HandPickPlace, make_env
from sernf_sim.hand_pick_place.expert import DEFAULT_DEMO_QUALITY, HandExpert, HandExpertConfig
from sernf_sim.sim_world import BaseFrame

__all__ = ["GraphDemoLayout", "GraphLayoutEnv", "RecordingConfig", "record_graph_demos"]


@dataclass(frozen=True)
class GraphDemoLayout:
    """What the graph's nodes see and execute: the world's, the bridge's and the policy's
    parameters that shape a recorded step (see the module docstring)."""

    image_keys: tuple[str, ...] = ("front_rgb", "under_rgb", "left_rgb")
    """Observation key of each camera (the policy's observation_keys of its image topics)."""
    camera_sources: tuple[str, ...] = ("front", "under", "wrist")
    """MuJoCo camera behind each key (sim_world.camera_sources of the key's camera)."""
    image_size: int = 224
    """Square image side (sim_world.image_size)."""
    joint_key: str = "hand_joints"
    """Key of the hand's joint positions (the policy's joint_state observation)."""
    pose_key: str = "ee_pose"
    """Key of the measured EE pose (the policy's pose observation, from the bridge)."""
    hand_joint_names: tuple[str, ...] = tuple(s.name for s in hand_model.FINGER_JOINTS)
    """The joint order the policy reads (policy.hand_joint_names); must be the env's."""
    base_in_world: tuple[float, ...] = (-0.5, 0.0, -0.18, 1.0, 0.0, 0.0, 0.0)
    """Robot base in the world (sim_world.base_in_world): x, y, z, qw, qx, qy, qz."""
    control_rate_hz: float = 10.0
    """Steps per second (sim_world.control_rate_hz = policy.control_rate_hz)."""
    max_steps: int = 300
    """Episode limit in steps (sim_world.max_steps)."""
    variant: str = "nominal"
    """World variant (sim_world.variant)."""
    max_translation_m: float = 0.02
    """Largest EE translation per command (franka_bridge.max_translation_m)."""
    max_rotation_rad: float = 0.1
    """Largest EE rotation per command (franka_bridge.max_rotation_rad)."""
    workspace_low: tuple[float, float, float] = (0.20, -0.38, 0.22)
    """Lower corner of the commanded position box, base frame (franka_bridge.workspace_low)."""
    workspace_high: tuple[float, float, float] = (0.80, 0.38, 0.53)
    """Upper corner of the commanded position box, base frame (franka_bridge.workspace_high)."""

    def __post_init__(self) -> None:
        keys = [*self.image_keys, self.joint_key, self.pose_key]
        if len(set(keys)) != len(keys) or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"observation keys must be distinct non-empty names, got {keys}")
        if not self.image_keys or len(self.image_keys) != len(self.camera_sources):
            raise ValueError(f"image_keys {list(self.image_keys)} and camera_sources {list(self.camera_sources)} "
                             "need the same (non-zero) length")
        if not (isinstance(self.image_size, int) and 8 <= self.image_size <= hand_model.MAX_IMAGE_SIZE):
            raise ValueError(f"image_size must be an int in 8..{hand_model.MAX_IMAGE_SIZE}, got {self.image_size!r}")
        env_joints = tuple(s.name for s in hand_model.FINGER_JOINTS)
        if tuple(self.hand_joint_names) != env_joints:
            raise ValueError(f"hand_joint_names {list(self.hand_joint_names)} are not the simulated hand's "
                             f"joints in its order {list(env_joints)}: the recording would mislabel joints")
        frame = BaseFrame.from_tuple(self.base_in_world)  # validates
        # The bridge's box is axis-aligned in the base frame, the env's in the world frame: the
        # same box only when the base is not rotated in the world (the shipped world's case).
        if abs(abs(float(frame.orientation[0])) - 1.0) > 1e-9:
            raise ValueError("base_in_world must not rotate the base (the bridge's workspace box would not be "
                             f"axis-aligned in the world), got {list(self.base_in_world)}")
        for name in ("control_rate_hz", "max_translation_m", "max_rotation_rad"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {self.max_steps!r}")
        if self.variant not in ("nominal", "shifted"):
            raise ValueError(f"variant must be 'nominal' or 'shifted', got {self.variant!r}")
        low, high = np.asarray(self.workspace_low, float), np.asarray(self.workspace_high, float)
        if low.shape != (3,) or high.shape != (3,) or not np.all(low < high):
            raise ValueError(f"workspace_low {list(self.workspace_low)} must be below workspace_high "
                             f"{list(self.workspace_high)} on every axis")

    @property
    def frame(self) -> BaseFrame:
        return BaseFrame.from_tuple(self.base_in_world)

    def observation_spec(self) -> dict[str, ObsKeySpec]:
        """The observation spec of a recorded step (= the policy's, = its replay's)."""
        s = self.image_size
        spec = {key: ObsKeySpec(shape=(s, s, 3), kind="rgb") for key in self.image_keys}
        spec[self.joint_key] = ObsKeySpec(shape=(hand_model.NUM_FINGER_JOINTS,), kind="lowdim")
        spec[self.pose_key] = ObsKeySpec(shape=(7,), kind="lowdim")
        return spec

    def make_task(self, num_envs: int, seed: int) -> HandPickPlace:
        """The hand task with the graph's command limits, workspace, rate and episode limit."""
        frame = self.frame
        low = frame.to_world(np.asarray(self.workspace_low, float), np.array([1.0, 0, 0, 0]))[0]
        high = frame.to_world(np.asarray(self.workspace_high, float), np.array([1.0, 0, 0, 0]))[0]
        return make_env(self.variant, num_envs=num_envs, seed=seed, render_images=False,
                        max_steps=self.max_steps, control_hz=float(self.control_rate_hz),
                        max_pos_delta=float(self.max_translation_m), max_rot_delta=float(self.max_rotation_rad),
                        workspace_low=tuple(float(v) for v in low), workspace_high=tuple(float(v) for v in high))


class GraphLayoutEnv:
    """The vectorized hand task seen through the graph's drivers (module docstring): the
    env's interface (docs/architecture.md, "Simulated tasks") with the graph's observations.

    Wraps a state-only :class:`HandPickPlace` (the expert reads its state); images are rendered
    per step for envs whose episode still runs (a finished env keeps its last frame: its steps
    are neither recorded nor acted on).
    """

    def __init__(self, env: HandPickPlace, layout: GraphDemoLayout) -> None:
        self.env = env
        self.layout = layout
        self.num_envs = env.num_envs
        self._frame = layout.frame
        self._images: dict[str, np.ndarray] = {}

    @property
    def observation_spec(self) -> dict[str, ObsKeySpec]:
        return self.layout.observation_spec()

    @property
    def action_dim(self) -> int:
        return self.env.action_dim

    @property
    def control_hz(self) -> float:
        return self.env.control_hz

    @property
    def time_limit(self) -> int:
        return self.env.time_limit

    @property
    def episode_configs(self) -> list[Any]:
        return self.env.episode_configs

    @property
    def done(self) -> np.ndarray:
        return self.env.done

    def hold_action(self, obs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        return self.env.hold_action(obs)

    def reset(self, seed: int | None = None, configs: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        inner = self.env.reset(seed=seed, configs=configs)
        s = self.layout.image_size
        self._images = {k: np.zeros((self.num_envs, s, s, 3), np.uint8) for k in self.layout.image_keys}
        return self._observe(inner, np.ones(self.num_envs, dtype=bool))

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray,
                                                 dict[str, Any]]:
        inner, reward, terminated, truncated, info = self.env.step(actions)
        return self._observe(inner, ~(terminated | truncated)), reward, terminated, truncated, info

    def _observe(self, inner: Mapping[str, np.ndarray], render: np.ndarray) -> dict[str, np.ndarray]:
        lay = self.layout
        for key, source in zip(lay.image_keys, lay.camera_sources, strict=True):
            frames = self._images[key]
            for i in np.flatnonzero(render):
                frames[i] = self.env.render_camera(int(i), source, lay.image_size)
        ee = np.asarray(inner["ee_pose"], dtype=np.float64)
        pose = np.empty_like(ee)
        for i in range(self.num_envs):
            p, q = self._frame.to_base(ee[i, :3], ee[i, 3:])
            pose[i, :3], pose[i, 3:] = p, q
        obs = {key: self._images[key].copy() for key in lay.image_keys}
        obs[lay.joint_key] = np.asarray(inner["hand_joints"], dtype=np.float32).copy()
        obs[lay.pose_key] = pose.astype(np.float32)
        return obs


@dataclass
class RecordingConfig:
    """How many demonstrations, with which expert (the graph's layout is :class:`GraphDemoLayout`)."""

    num_demos: int = 100
    """Episodes recorded (the paper's scissors dataset: 121 teleoperated demonstrations)."""
    seed: int = 0
    """Layout and expert seed."""
    expert_quality: float | None = None
    """Scripted-expert quality in [0, 1] (1 = clean); None = the task's default demonstration
    quality (successes and failures, like the paper's ~59 % successful demonstrations)."""
    box_prob: float | None = None
    """Probability that the expert picks the box (else the cylinder); None = the expert's
    default (two strategies)."""
    num_envs: int = 10
    """Envs simulated in parallel (one batch = this many episodes, streamed to the store)."""
    obs_history: int = 1
    """T of the chunk timing the expert acts through."""
    prefix_len: int = 3
    """P."""
    horizon: int = 10
    """H."""

    def __post_init__(self) -> None:
        for name, low in (("num_demos", 1), ("seed", 0), ("num_envs", 1), ("obs_history", 1), ("prefix_len", 0),
                          ("horizon", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name in ("expert_quality", "box_prob"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1] or None, got {value!r}")

    def expert_config(self) -> HandExpertConfig:
        quality = DEFAULT_DEMO_QUALITY if self.expert_quality is None else float(self.expert_quality)
        knobs = {} if self.box_prob is None else {"box_prob": float(self.box_prob)}
        return HandExpertConfig.from_quality(quality, **knobs)


def record_graph_demos(layout: GraphDemoLayout, recording: RecordingConfig, uri: str | os.PathLike[str],
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Record ``recording.num_demos`` expert episodes in the graph's layout into a new episode
    store at ``uri`` (written aside as ``<uri>.partial`` and renamed when complete, so a store
    at ``uri`` is always a whole dataset). Refuses an existing ``uri``.

    Returns counts: ``episodes``, ``successes``, ``grasps``, ``steps``, ``wall_time_s``.
    """
    from sernf_data.store import EpisodeStore, StoreSpec

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    uri = Path(uri)
    if uri.exists():
        raise FileExistsError(f"{uri} exists: refusing to overwrite a dataset")
    tmp = uri.with_name(uri.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    r = recording
    num_envs = min(r.num_envs, r.num_demos)
    env = GraphLayoutEnv(layout.make_task(num_envs, r.seed), layout)
    expert = HandExpert(env.env, r.expert_config(), seed=r.seed)
    spec = StoreSpec(obs=env.observation_spec, action_dim=env.action_dim, control_rate_hz=env.control_hz)
    store = EpisodeStore(str(tmp), mode="a", spec=spec)
    quality = DEFAULT_DEMO_QUALITY if r.expert_quality is None else float(r.expert_quality)
    extra = {"task": "hand_pick_place", "variant": layout.variant, "expert_quality": quality,
             "layout": "scissors graph (sim_world cameras, base-frame EE pose, bridge limits)"}
    counts = {"episodes": 0, "successes": 0, "grasps": 0, "steps": 0}
    t0 = time.perf_counter()
    batch = 0
    while counts["episodes"] < r.num_demos:
        count = min(num_envs, r.num_demos - counts["episodes"])
        result = rollout_chunked(env, expert.chunk_act_fn(r.horizon), r.obs_history, r.prefix_len, r.horizon,
                                 count, seed=int(np.random.SeedSequence([r.seed, batch]).generate_state(1)[0]),
                                 record=True, source="demo",
                                 max_steps=layout.max_steps + r.horizon + r.prefix_len + 1)
        for steps, meta in result.episodes:
            meta["extra"].update(extra, episode_index=counts["episodes"])
            store.append_episode(steps, meta)
            counts["episodes"] += 1
            counts["successes"] += bool(meta["success"])
            counts["grasps"] += bool(meta["subtask_success"].get("grasp"))
            counts["steps"] += len(steps["action"])
        batch += 1
        elapsed = time.perf_counter() - t0
        log(f"[record] {counts['episodes']}/{r.num_demos} demonstrations ({counts['successes']} placed, "
            f"{counts['grasps']} grasped, {counts['steps']} steps) in {elapsed:.0f} s")
    del store
    os.replace(tmp, uri)
    return {**counts, "wall_time_s": time.perf_counter() - t0}
