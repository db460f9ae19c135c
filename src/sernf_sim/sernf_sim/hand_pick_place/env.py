"""Vectorized MuJoCo pick-and-place task for a multi-finger hand on a 6-DoF end effector.

The dexterous stand-in for the paper's scissors task (appendix E): grasp one of two objects
from the table with the (simplified) ORCA v1 hand and put it down upright in a green target
square.

Action (one step, ``A = 7 + 17 = 24``, the paper's action space), the Franka bridge's
convention:

* ``[0:3]`` EE position delta in the *current* EE frame (m); scaled down to
  ``max_pos_delta`` if longer;
* ``[3:7]`` EE orientation delta as a quaternion (w, x, y, z) in the current EE frame;
  normalised (a zero quaternion means identity), sign made ``w >= 0`` and its angle clipped
  to ``max_rot_delta``;
* ``[7:24]`` absolute hand-joint position targets (rad), clipped to the joint ranges, in the
  ORCA v1 order of :data:`model.FINGER_JOINTS` (thumb_mcp, thumb_abd, thumb_pip, thumb_dip;
  index, middle, ring, pinky: abd/mcp/pip; wrist), the ORCA driver's joint names and ranges.

The new commanded pose is ``current EE pose ∘ delta`` (position clipped to the workspace box),
reached by moving the weld target linearly over the control period. "Current" is the previous
commanded pose (the impedance equilibrium) while the measured EE is within ``reanchor_*`` of
it, else the measured pose: consecutive commands chain smoothly, and a hand held back by
contact does not wind up. The executed (clipped) command is returned in
``info["executed_action"]``.

Observations (``observation_spec``): ``wrist_rgb``/``front_rgb`` ``[s, s, 3]`` uint8 when
rendering; ``hand_joints`` ``[17]`` (rad, same order), ``ee_pose`` ``[7]`` (world position + w-x-y-z
quaternion of the EE frame); ``object_state`` ``[20]`` (privileged, state-only mode by default):
per object (box, cylinder) its position relative to the EE (3, world axes), relative to the
target centre on the table (3) and its orientation quaternion (4).

Reward (sparse, two stages, each fires once per episode):

* +1 **grasp**: an object's lowest point is ``lift_height`` above the table, it touches the
  thumb and at least one other finger, and not the table;
* +1 **place**: the grasped object rests on the table (touching it, slower than
  ``place_max_speed``, upright) with its centre inside the target square, and is released
  (not touched by both the thumb and a finger).

Termination: success (place) → ``terminated``; failure → ``terminated`` too: any object falls
off the table, the grasped object comes to rest released but not placed (dropped outside the
square or knocked over), or the simulation diverged (MuJoCo then resets the state, which must
not pass for physics); time limit → ``truncated``. Finished envs are frozen and ignore
actions (their executed action is the hold action) until the next ``reset``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mujoco
import numpy as np

from sernf_data.spec import ObsKeySpec
from sernf_sim.hand_pick_place import model as M
from sernf_sim.hand_pick_place import rotations as R
from sernf_sim.hand_pick_place.config import (
    DomainShift,
    HandEpisodeConfig,
    HandPickPlaceConfig,
    test_configs,
)

NUM_HAND = M.NUM_FINGER_JOINTS
ACTION_DIM = 7 + NUM_HAND
POS = slice(0, 3)
QUAT = slice(3, 7)
HAND = slice(7, 7 + NUM_HAND)
NUM_OBJECTS = len(M.OBJECT_NAMES)
OBJECT_STATE_DIM = 10 * NUM_OBJECTS
JOINT_LOW = np.array([s.range[0] for s in M.FINGER_JOINTS])
JOINT_HIGH = np.array([s.range[1] for s in M.FINGER_JOINTS])
HOME_JOINTS = np.array([s.home for s in M.FINGER_JOINTS])
JOINT_RANGE_MARGIN_RAD = 0.1
"""How far a hand joint reading may lie outside its range before the policy node refuses it and
holds the robot (its ``joint_limit_margin_rad`` default). :meth:`HandPickPlace.step` reports
episodes that crossed it (``info["joints_past_range"]``) without ending them, so in-process
evaluations can say how many episodes the robot would have stopped."""

#: Fraction of the control period over which the commanded pose/targets are interpolated. The
#: whole period: consecutive commands then chain into a continuous motion instead of a
#: start-stop at 10 Hz, whose accelerations shake grasped objects loose.
_MOVE_FRACTION = 1.0
#: Physics steps per interpolation point (fewer Python round trips than one per step).
_CHUNK = 5
#: An object is "on the table" when its lowest point is within this of the surface (m).
_ON_TABLE_TOL = 0.01
#: Below this (world z, m) an object has fallen off the table.
_FALL_Z = M.TABLE_TOP_Z - 0.05


def action_names() -> list[str]:
    """Names of the action dimensions (e.g. for ``/sernf/action_chunk`` joint names)."""
    return ["ee_dx", "ee_dy", "ee_dz", "ee_qw", "ee_qx", "ee_qy", "ee_qz"] + [
        s.name for s in M.FINGER_JOINTS
    ]


def clip_action(actions: np.ndarray, max_pos: float, max_rot: float) -> np.ndarray:
    """The executed form of raw actions ``[..., A]`` (see the module docstring)."""
    a = np.array(actions, dtype=np.float64)
    dp = a[..., POS]
    n = np.linalg.norm(dp, axis=-1, keepdims=True)
    a[..., POS] = dp * np.minimum(1.0, max_pos / np.maximum(n, 1e-12))
    q = R.normalize(a[..., QUAT])
    q = np.where(q[..., :1] < 0, -q, q)  # same rotation, canonical sign
    rv = R.to_rotvec(q)
    ang = np.linalg.norm(rv, axis=-1, keepdims=True)
    rv = rv * np.minimum(1.0, max_rot / np.maximum(ang, 1e-12))
    a[..., QUAT] = R.from_rotvec(rv)
    a[..., HAND] = np.clip(a[..., HAND], JOINT_LOW, JOINT_HIGH)
    return a


_PHYSICS_POOLS: dict[int, ThreadPoolExecutor] = {}
_PHYSICS_POOLS_LOCK = threading.Lock()


def _physics_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` physics workers, shared by every env that asks for
    that many (envs have no ``close``; idle workers cost nothing and end with the process)."""
    with _PHYSICS_POOLS_LOCK:
        pool = _PHYSICS_POOLS.get(threads)
        if pool is None:
            pool = _PHYSICS_POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="hand-physics")
        return pool


def _object_half_extents() -> list[tuple[float, float]]:
    """(half height along the object axis, half width across it) per object, for the lowest
    point: box uses its xy half-diagonal (conservative for tilted boxes)."""
    bx, by, bz = M.BOX_HALF
    return [(bz, float(np.hypot(bx, by))), (M.CYL_HALF_HEIGHT, M.CYL_RADIUS)]


class HandPickPlace:
    """Vectorized hand pick-and-place (see the module docstring).

    ``HandPickPlace(config)`` or ``HandPickPlace(num_envs=4, render_images=True, ...)`` (keyword
    overrides of :class:`HandPickPlaceConfig`).
    """

    def __init__(self, config: HandPickPlaceConfig | None = None, **overrides: Any) -> None:
        config = config if config is not None else HandPickPlaceConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.num_envs = config.num_envs
        self.model = M.load_model(config.physics_dt)
        self.idx = M.SceneIndex.from_model(self.model)
        self._apply_domain_shift(config.domain_shift)
        self._data = [mujoco.MjData(self.model) for _ in range(self.num_envs)]
        self._rng = np.random.default_rng(config.seed)
        n = self.num_envs
        self._steps = np.zeros(n, dtype=np.int64)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._grasped = np.zeros(n, dtype=bool)
        self._placed = np.zeros(n, dtype=bool)
        self._joints_past_range = np.zeros(n, dtype=bool)
        self._grasped_object = np.full(n, -1, dtype=np.int64)
        self._unstable = np.zeros(n, dtype=bool)
        self._reason = np.array([""] * n, dtype=object)
        self._target_xy = np.zeros((n, 2))
        self._cmd = np.tile(np.r_[M.HAND_HOME_POS, M.HAND_HOME_QUAT], (n, 1))  # commanded EE poses
        self._latency: list[deque[np.ndarray]] = [deque() for _ in range(n)]
        self._pending_s = np.zeros(n)  # physics time drive() still owes each env
        self._was_reset = False
        self.episode_configs: list[HandEpisodeConfig] = []
        """Layout of each env's current episode (set by :meth:`reset`)."""
        self._renderer: mujoco.Renderer | None = None
        self._extra_renderers: dict[int, mujoco.Renderer] = {}
        if config.render_images:
            self._renderer = self._make_renderer(config.image_size)
        self._extents = _object_half_extents()

    # -- interface (docs/architecture.md) ------------------------------------------------------

    @property
    def observation_spec(self) -> dict[str, ObsKeySpec]:
        s = self.config.image_size
        spec: dict[str, ObsKeySpec] = {}
        if self.config.render_images:
            spec["wrist_rgb"] = ObsKeySpec(shape=(s, s, 3), kind="rgb")
            spec["front_rgb"] = ObsKeySpec(shape=(s, s, 3), kind="rgb")
        spec["hand_joints"] = ObsKeySpec(shape=(NUM_HAND,), kind="lowdim")
        spec["ee_pose"] = ObsKeySpec(shape=(7,), kind="lowdim")
        if self.config.object_state:
            spec["object_state"] = ObsKeySpec(shape=(OBJECT_STATE_DIM,), kind="lowdim")
        return spec

    @property
    def action_dim(self) -> int:
        return ACTION_DIM

    @property
    def control_hz(self) -> float:
        return self.config.control_hz

    @property
    def time_limit(self) -> int:
        return self.config.max_steps

    def hold_action(self, obs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """``[n, A]``: zero translation, identity rotation, the current finger targets.

        The finger targets come from the env (the last commanded ones), not from the measured
        joints in ``obs``: holding the *measured* positions would loosen a grasp, because a
        squeezing finger sits short of its target.
        """
        del obs
        out = np.zeros((self.num_envs, ACTION_DIM), dtype=np.float32)
        out[:, 3] = 1.0
        for i, d in enumerate(self._data):
            out[i, HAND] = d.ctrl
        return out

    def executed_form(self, actions: np.ndarray) -> np.ndarray:
        """What the task's static limits make of commands ``[..., A]`` (float32, as recorded in
        ``info["executed_action"]``): rollouts queue chunks in this form, so the prefix a policy
        acts on is the one the replay stores."""
        cfg = self.config
        return clip_action(actions, cfg.max_pos_delta, cfg.max_rot_delta).astype(np.float32)

    @staticmethod
    def test_configs() -> list[HandEpisodeConfig]:
        """The 10 fixed evaluation layouts (see :func:`config.test_configs`)."""
        return test_configs()

    def sample_configs(self, n: int) -> list[HandEpisodeConfig]:
        """Draw ``n`` random layouts (rejection sampling inside the config's boxes)."""
        cfg, rng = self.config, self._rng
        out = []
        for _ in range(n):
            for _attempt in range(1000):
                oxy = rng.uniform(cfg.object_low, cfg.object_high, size=(NUM_OBJECTS, 2))
                txy = rng.uniform(cfg.target_low, cfg.target_high)
                if np.linalg.norm(oxy[0] - oxy[1]) < cfg.min_object_separation:
                    continue
                # Objects must start clearly outside the target square (a free "place").
                if np.any(np.max(np.abs(oxy - txy), axis=-1) < M.TARGET_HALF + 0.04):
                    continue
                break
            else:
                raise RuntimeError("could not sample a valid layout; check the config boxes")
            yaw = rng.uniform(-np.pi, np.pi, size=NUM_OBJECTS)
            out.append(
                HandEpisodeConfig(
                    object_xy=tuple(map(tuple, oxy)), object_yaw=tuple(yaw), target_xy=tuple(txy)
                )
            )
        return out

    def reset(
        self,
        seed: int | None = None,
        configs: Sequence[HandEpisodeConfig | Mapping[str, Any] | None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Start a new episode in every env.

        Args:
            seed: re-seeds layout sampling and observation noise first.
            configs: ``num_envs`` layouts (``HandEpisodeConfig``, its dict form, or ``None`` =
                random); ``None`` = all random.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        n = self.num_envs
        # Always draw the random layouts so fixed entries do not shift the others' stream.
        chosen = self.sample_configs(n)
        if configs is not None:
            if len(configs) != n:
                raise ValueError(f"reset: expected {n} configs (one per env), got {len(configs)}")
            for i, c in enumerate(configs):
                if c is None:
                    continue
                if isinstance(c, HandEpisodeConfig):
                    chosen[i] = c
                elif isinstance(c, Mapping):
                    chosen[i] = HandEpisodeConfig.from_dict(c)
                else:
                    raise TypeError(f"reset: config {i} has unsupported type {type(c).__name__}")
        self.episode_configs = list(chosen)
        m, ix = self.model, self.idx
        for i, (d, c) in enumerate(zip(self._data, chosen, strict=True)):
            mujoco.mj_resetData(m, d)
            d.qpos[ix.hand_qpos : ix.hand_qpos + 3] = M.HAND_HOME_POS
            d.qpos[ix.hand_qpos + 3 : ix.hand_qpos + 7] = M.HAND_HOME_QUAT
            d.mocap_pos[ix.ee_mocap] = M.HAND_HOME_POS
            d.mocap_quat[ix.ee_mocap] = M.HAND_HOME_QUAT
            d.qpos[ix.finger_qpos] = HOME_JOINTS
            d.ctrl[:] = HOME_JOINTS
            d.act[:] = HOME_JOINTS  # the actuators' filtered targets
            for k in range(NUM_OBJECTS):
                a = ix.object_qpos[k]
                # A hair above the surface so the first contact is gentle.
                d.qpos[a : a + 3] = (*c.object_xy[k], M.TABLE_TOP_Z + M.OBJECT_HALF_HEIGHT + 5e-4)
                d.qpos[a + 3 : a + 7] = R.from_yaw(np.array(c.object_yaw[k]))
            d.mocap_pos[ix.target_mocap] = (*c.target_xy, M.TABLE_TOP_Z)
            self._target_xy[i] = c.target_xy
            mujoco.mj_forward(m, d)
            mujoco.mj_step(m, d, 10)  # let the objects settle onto the table
            self._latency[i] = deque()
            self._pending_s[i] = 0.0
        self._cmd[:] = np.r_[M.HAND_HOME_POS, M.HAND_HOME_QUAT]
        self._steps[:] = 0
        self._terminated[:] = False
        self._truncated[:] = False
        self._grasped[:] = False
        self._placed[:] = False
        self._joints_past_range[:] = False
        self._grasped_object[:] = -1
        self._unstable[:] = False
        self._reason[:] = ""
        hold = self.hold_action().astype(np.float64)
        for i in range(n):
            for _ in range(self.config.domain_shift.action_latency_steps):
                self._latency[i].append(hold[i].copy())
        self._was_reset = True
        return self._obs()

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every env by one control step (``1 / control_hz`` seconds).

        Returns ``(obs, reward [n] float32, terminated [n], truncated [n], info)``; ``info``:
        ``executed_action`` ``[n, A]`` float32, ``success`` bool[n], ``subtask_success``
        ``{"grasp", "place"}`` bool[n] (achieved so far this episode), ``failure`` bool[n],
        ``termination_reason`` (str per env: "", "success", "dropped", "fell_off_table",
        "unstable", "time_limit"), ``grasped_object`` int[n] (-1 = none yet), ``steps`` int[n],
        ``joints_past_range`` bool[n] (a hand joint reading of this episode so far lay more than
        :data:`JOINT_RANGE_MARGIN_RAD` outside its range: the policy node would have held the
        robot there; the episode goes on here). ``terminated``/``truncated`` stay set for envs
        whose episode already ended.
        """
        if not self._was_reset:
            raise RuntimeError("HandPickPlace.step called before reset()")
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, ACTION_DIM):
            raise ValueError(
                f"actions must be [{self.num_envs}, {ACTION_DIM}], got {actions.shape}"
            )
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions contain NaN or inf")
        cfg = self.config
        active = ~(self._terminated | self._truncated)
        executed = clip_action(actions, cfg.max_pos_delta, cfg.max_rot_delta)
        executed = np.where(active[:, None], executed, self.hold_action().astype(np.float64))

        applied = executed
        if cfg.domain_shift.action_latency_steps > 0:
            applied = executed.copy()
            for i in np.flatnonzero(active):
                self._latency[i].append(executed[i].copy())
                applied[i] = self._latency[i].popleft()

        self._simulate(applied, active)
        self._steps += active
        reward = self._update_episode(active)
        obs = self._obs()
        # The readings the drivers would publish (sensor noise included), against the policy
        # node's bounds. The joints' stops hold under contact (model.py), so mostly sensor
        # noise (DomainShift.obs_noise_std) crosses them.
        joints = obs["hand_joints"]
        past = (joints < JOINT_LOW - JOINT_RANGE_MARGIN_RAD) | (joints > JOINT_HIGH + JOINT_RANGE_MARGIN_RAD)
        self._joints_past_range |= active & past.any(axis=1)
        info = {
            "executed_action": executed.astype(np.float32),
            "success": self._placed.copy(),
            "subtask_success": {"grasp": self._grasped.copy(), "place": self._placed.copy()},
            "failure": self._terminated & ~self._placed,
            "termination_reason": self._reason.copy(),
            "grasped_object": self._grasped_object.copy(),
            "steps": self._steps.copy(),
            "joints_past_range": self._joints_past_range.copy(),
        }
        return obs, reward, self._terminated.copy(), self._truncated.copy(), info

    # -- continuous time (the simulated world behind the drivers, sernf_sim.sim_world_node) -----

    def drive(
        self,
        i: int,
        ee_target: Sequence[float],
        finger_targets: Sequence[float] | None,
        duration_s: float,
    ) -> int:
        """Advance env ``i`` by ``duration_s`` of physics with the weld target (the arm's
        impedance equilibrium, world frame, position + w-x-y-z quaternion) at ``ee_target`` and
        the finger actuators' targets at ``finger_targets`` (clipped to the joint ranges; None
        keeps the current targets).

        Unlike :meth:`step`, no command is interpreted (the drivers did that) and the episode is
        not evaluated: call :meth:`finish_control_step` once per control period. Physics time
        that does not fill a whole step is carried to the next call. Returns the number of
        physics steps taken. A diverged simulation is remembered and ends the episode as
        "unstable" at the next evaluation.
        """
        if not self._was_reset:
            raise RuntimeError("HandPickPlace.drive called before reset()")
        target = np.asarray(ee_target, dtype=np.float64)
        if target.shape != (7,) or not np.all(np.isfinite(target)):
            raise ValueError(f"drive: ee_target must be 7 finite numbers, got {ee_target!r}")
        d, ix = self._data[i], self.idx
        d.mocap_pos[ix.ee_mocap] = target[:3]
        d.mocap_quat[ix.ee_mocap] = R.normalize(target[3:])
        self._cmd[i] = np.r_[target[:3], d.mocap_quat[ix.ee_mocap]]
        if finger_targets is not None:
            f = np.asarray(finger_targets, dtype=np.float64)
            if f.shape != (NUM_HAND,) or not np.all(np.isfinite(f)):
                raise ValueError(f"drive: finger_targets must be {NUM_HAND} finite numbers")
            d.ctrl[:] = np.clip(f, JOINT_LOW, JOINT_HIGH)
        self._pending_s[i] += max(float(duration_s), 0.0)
        steps = int(self._pending_s[i] / self.model.opt.timestep + 1e-9)
        if steps:
            bad = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                   mujoco.mjtWarning.mjWARN_BADQACC)
            before = sum(d.warning[w].number for w in bad)
            mujoco.mj_step(self.model, d, steps)
            self._pending_s[i] -= steps * self.model.opt.timestep
            self._unstable[i] |= sum(d.warning[w].number for w in bad) > before
        return steps

    def finger_state(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Finger joint positions (rad), velocities (rad/s) and actuator torques (N·m) of env
        ``i``, in :data:`model.FINGER_JOINTS` order."""
        d, ix = self._data[i], self.idx
        return d.qpos[ix.finger_qpos].copy(), d.qvel[ix.finger_qvel].copy(), d.actuator_force.copy()

    def finish_control_step(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Count one control period of every running episode and evaluate the reward and
        termination rules exactly as :meth:`step` does after its physics.

        Returns ``(reward [n], terminated [n], truncated [n], info)`` with ``info`` as in
        :meth:`step` minus ``executed_action`` (the drivers report what they executed) and
        ``joints_past_range`` (behind the drivers the policy node applies the hold itself).
        """
        if not self._was_reset:
            raise RuntimeError("HandPickPlace.finish_control_step called before reset()")
        active = ~(self._terminated | self._truncated)
        self._steps += active
        reward = self._update_episode(active)
        info = {
            "success": self._placed.copy(),
            "subtask_success": {"grasp": self._grasped.copy(), "place": self._placed.copy()},
            "failure": self._terminated & ~self._placed,
            "termination_reason": self._reason.copy(),
            "grasped_object": self._grasped_object.copy(),
            "steps": self._steps.copy(),
        }
        return reward, self._terminated.copy(), self._truncated.copy(), info

    # -- privileged state (scripted expert, tests, tools) ---------------------------------------

    def ee_pose(self) -> np.ndarray:
        """True EE poses ``[n, 7]`` (position, w-x-y-z quaternion), world frame."""
        a = self.idx.hand_qpos
        return np.stack([d.qpos[a : a + 7] for d in self._data]).copy()

    def finger_targets(self) -> np.ndarray:
        """Current hand-joint position targets ``[n, 17]``."""
        return np.stack([d.ctrl for d in self._data]).copy()

    def object_poses(self) -> np.ndarray:
        """True object poses ``[n, num_objects, 7]`` (position, quaternion), world frame."""
        return np.stack(
            [np.stack([d.qpos[a : a + 7] for a in self.idx.object_qpos]) for d in self._data]
        ).copy()

    @property
    def target_xy(self) -> np.ndarray:
        """Target-square centres ``[n, 2]``."""
        return self._target_xy.copy()

    @property
    def episode_steps(self) -> np.ndarray:
        """Steps taken in each env's current episode."""
        return self._steps.copy()

    @property
    def done(self) -> np.ndarray:
        """Envs whose episode has ended."""
        return self._terminated | self._truncated

    def object_contacts(self) -> dict[str, np.ndarray]:
        """Per env and object (``[n, num_objects]`` bool): touching ``table``, ``thumb``,
        ``finger`` (a non-thumb finger) and ``held`` (thumb and finger)."""
        st = self._status(np.ones(self.num_envs, dtype=bool))
        return {k: st[k] for k in ("table", "thumb", "finger", "held")}

    def data(self, i: int) -> mujoco.MjData:
        """The MjData of env ``i`` (for tests and tools; writing to it bypasses the task)."""
        return self._data[i]

    def set_object_pose(self, i: int, k: int, pos: Sequence[float], quat: Sequence[float]) -> None:
        """Teleport object ``k`` of env ``i`` (velocity zeroed) and recompute derived state."""
        d = self._data[i]
        a, v = self.idx.object_qpos[k], self.idx.object_qvel[k]
        d.qpos[a : a + 3] = pos
        d.qpos[a + 3 : a + 7] = R.normalize(np.asarray(quat, dtype=np.float64))
        d.qvel[v : v + 6] = 0.0
        mujoco.mj_forward(self.model, d)

    def set_hand(
        self,
        i: int,
        pos: Sequence[float],
        quat: Sequence[float],
        joints: Sequence[float] | None = None,
        targets: Sequence[float] | None = None,
    ) -> None:
        """Teleport the hand (and its commanded pose) of env ``i``; optionally set the finger
        joints and their targets (default: the joints themselves)."""
        d, ix = self._data[i], self.idx
        q = R.normalize(np.asarray(quat, dtype=np.float64))
        d.qpos[ix.hand_qpos : ix.hand_qpos + 3] = pos
        d.qpos[ix.hand_qpos + 3 : ix.hand_qpos + 7] = q
        d.qvel[ix.hand_qvel : ix.hand_qvel + 6] = 0.0
        d.mocap_pos[ix.ee_mocap] = pos
        d.mocap_quat[ix.ee_mocap] = q
        self._cmd[i, :3] = pos
        self._cmd[i, 3:] = q
        if joints is not None:
            d.qpos[ix.finger_qpos] = joints
            d.qvel[ix.finger_qvel] = 0.0
        if joints is not None or targets is not None:
            t = joints if targets is None else targets
            d.ctrl[:] = np.clip(t, JOINT_LOW, JOINT_HIGH)
            d.act[:] = d.ctrl
        mujoco.mj_forward(self.model, d)

    def render_camera(self, i: int, camera: str, size: int | None = None) -> np.ndarray:
        """One RGB frame of env ``i`` from ``camera`` ("wrist" or "front"), e.g. for GIFs."""
        size = self.config.image_size if size is None else int(size)
        if size == self.config.image_size and self._renderer is not None:
            r = self._renderer
        else:
            # One extra renderer per size, kept: GL contexts are expensive to create.
            if size not in self._extra_renderers:
                self._extra_renderers[size] = self._make_renderer(size)
            r = self._extra_renderers[size]
        r.update_scene(self._data[i], camera)
        return r.render().copy()

    # -- internals -------------------------------------------------------------------------------

    def _apply_domain_shift(self, shift: DomainShift) -> None:
        m, ix = self.model, self.idx
        for g, b in zip(ix.object_geom, ix.object_body, strict=True):
            m.geom_friction[g, 0] *= shift.object_friction_scale
            m.body_mass[b] *= shift.object_mass_scale
            m.body_inertia[b] *= shift.object_mass_scale
        # Position actuator: force = kp * ctrl - kp * q - kv * qdot → gainprm[0] = kp,
        # biasprm[1] = -kp.
        m.actuator_gainprm[:, 0] *= shift.finger_kp_scale
        m.actuator_biasprm[:, 1] *= shift.finger_kp_scale
        # Weld stiffness ∝ 1 / timeconst²; MuJoCo needs timeconst >= 2 * timestep.
        tc = m.eq_solref[ix.weld_eq, 0] / np.sqrt(shift.arm_stiffness_scale)
        m.eq_solref[ix.weld_eq, 0] = max(tc, 2.0 * m.opt.timestep)
        # Recompute the compile-time constants that depend on masses (e.g. the inverse weights
        # that scale constraint softness); stale ones made heavier objects occasionally blow up.
        mujoco.mj_setConst(m, mujoco.MjData(m))

    def _make_renderer(self, size: int) -> mujoco.Renderer:
        try:
            r = mujoco.Renderer(self.model, size, size)
        except Exception as e:  # GL backends fail in many ways (no display, missing libs)
            raise RuntimeError(
                "HandPickPlace: cannot create an offscreen MuJoCo renderer "
                f"(MUJOCO_GL={os.environ.get('MUJOCO_GL', '<unset>')}): {e}. Set MUJOCO_GL=egl "
                "(Debian packages libegl1 libgl1-mesa-dri) or MUJOCO_GL=osmesa (libosmesa6) "
                "before importing mujoco, or use render_images=False."
            ) from e
        # Shadows cost ~20x at 84x84 (docs/design.md §3) and add nothing a policy needs.
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return r

    def _simulate(self, applied: np.ndarray, active: np.ndarray) -> None:
        """Turn relative commands into weld-target/finger-target ramps and step physics."""
        m, ix, cfg = self.model, self.idx, self.config
        target_p, target_q = self._command_targets(applied)
        chunks = cfg.substeps // _CHUNK
        rest = cfg.substeps - chunks * _CHUNK
        move = max(1, int(round(_MOVE_FRACTION * chunks)))
        # Interpolation points of the commanded pose, all envs at once: [move, n, ...].
        s = (np.arange(move) + 1.0) / move
        path_p = self._cmd[None, :, :3] + s[:, None, None] * (target_p - self._cmd[:, :3])[None]
        path_q = R.slerp(
            np.broadcast_to(self._cmd[:, 3:], (move, self.num_envs, 4)),
            np.broadcast_to(target_q, (move, self.num_envs, 4)),
            np.broadcast_to(s[:, None], (move, self.num_envs)),
        )
        bad = (
            mujoco.mjtWarning.mjWARN_BADQPOS,
            mujoco.mjtWarning.mjWARN_BADQVEL,
            mujoco.mjtWarning.mjWARN_BADQACC,
        )

        def step_env(i: int) -> None:
            d = self._data[i]
            warnings_before = sum(d.warning[w].number for w in bad)
            c0 = d.ctrl.copy()
            c1 = applied[i, HAND]
            for c in range(chunks):
                if c < move:
                    d.mocap_pos[ix.ee_mocap] = path_p[c, i]
                    d.mocap_quat[ix.ee_mocap] = path_q[c, i]
                    d.ctrl[:] = c0 + s[c] * (c1 - c0)
                mujoco.mj_step(m, d, _CHUNK)
            if rest:
                mujoco.mj_step(m, d, rest)
            # MuJoCo resets the state when the simulation diverges; never pass that off as
            # physics: the episode ends as a failure.
            self._unstable[i] = sum(d.warning[w].number for w in bad) > warnings_before
            self._cmd[i, :3] = target_p[i]
            self._cmd[i, 3:] = target_q[i]

        envs = np.flatnonzero(active)
        if cfg.physics_threads > 1 and len(envs) > 1:
            # Each env touches only its own MjData and row i of the arrays above; mj_step
            # releases the GIL, so the physics of several envs runs on several cores.
            for _ in _physics_pool(cfg.physics_threads).map(step_env, envs):
                pass  # consume the iterator: a worker's exception is raised here
        else:
            for i in envs:
                step_env(i)

    def _command_targets(self, applied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New commanded EE poses ``base ∘ delta``, positions clipped to the workspace.

        ``base`` is the previous *commanded* pose (the impedance equilibrium, as a Franka bridge
        keeps it) while the measured EE is within ``reanchor_*`` of it, so consecutive commands
        chain smoothly; when contact holds the hand further away, ``base`` is re-anchored to the
        measured pose so commands do not wind up against an obstacle.
        """
        cfg = self.config
        ee = self.ee_pose()
        dev_p = np.linalg.norm(ee[:, :3] - self._cmd[:, :3], axis=1)
        dev_r = R.angle(R.mul(R.conj(self._cmd[:, 3:]), ee[:, 3:]))
        far = (dev_p > cfg.reanchor_distance) | (dev_r > cfg.reanchor_angle)
        base = np.where(far[:, None], ee, self._cmd)
        p, q = base[:, :3], base[:, 3:]
        target_p = np.clip(p + R.rotate(q, applied[:, POS]), cfg.workspace_low, cfg.workspace_high)
        target_q = R.normalize(R.mul(q, applied[:, QUAT]))
        return target_p, target_q

    def _status(self, active: np.ndarray) -> dict[str, np.ndarray]:
        """Per env and object geometric/contact facts (``[n, num_objects]`` arrays)."""
        n, ix, cfg = self.num_envs, self.idx, self.config
        shape = (n, NUM_OBJECTS)
        st = {
            k: np.zeros(shape, dtype=bool)
            for k in ("table", "thumb", "finger", "held", "upright", "in_region", "fell")
        }
        st["bottom"] = np.zeros(shape)
        st["speed"] = np.zeros(shape)
        thumb, finger = ix.thumb_geoms, ix.finger_geoms
        for i in np.flatnonzero(active):
            d = self._data[i]
            g1 = d.contact.geom1[: d.ncon]
            g2 = d.contact.geom2[: d.ncon]
            for k in range(NUM_OBJECTS):
                og = ix.object_geom[k]
                other = np.concatenate([g2[g1 == og], g1[g2 == og]])
                st["table"][i, k] = np.any(other == ix.table_geom)
                st["thumb"][i, k] = np.any(np.isin(other, thumb))
                st["finger"][i, k] = np.any(np.isin(other, finger))
                a, v = ix.object_qpos[k], ix.object_qvel[k]
                pos = d.qpos[a : a + 3]
                axis_z = R.to_matrix(d.qpos[a + 3 : a + 7])[2, 2]  # world z of the object axis
                half_h, half_w = self._extents[k]
                tilt = np.sqrt(max(0.0, 1.0 - axis_z * axis_z))
                st["bottom"][i, k] = pos[2] - (abs(axis_z) * half_h + tilt * half_w)
                st["upright"][i, k] = axis_z >= cfg.upright_cos
                st["speed"][i, k] = np.linalg.norm(d.qvel[v : v + 3])
                st["in_region"][i, k] = np.all(
                    np.abs(pos[:2] - self._target_xy[i]) <= M.TARGET_HALF
                )
                st["fell"][i, k] = pos[2] < _FALL_Z
        st["held"] = st["thumb"] & st["finger"]
        return st

    def _update_episode(self, active: np.ndarray) -> np.ndarray:
        """Apply the reward/termination rules of the module docstring; returns rewards."""
        cfg = self.config
        st = self._status(active)
        top = M.TABLE_TOP_Z
        lifted = (st["bottom"] > top + cfg.lift_height) & st["held"] & ~st["table"]
        reward = np.zeros(self.num_envs, dtype=np.float32)

        new_grasp = active & ~self._grasped & lifted.any(axis=1)
        self._grasped_object = np.where(new_grasp, np.argmax(lifted, axis=1), self._grasped_object)
        self._grasped |= new_grasp
        reward += new_grasp

        g = np.clip(self._grasped_object, 0, None)
        rows = np.arange(self.num_envs)

        def of_grasped(key: str) -> np.ndarray:
            return st[key][rows, g]

        settled = (
            self._grasped
            & of_grasped("table")
            & (of_grasped("bottom") < top + _ON_TABLE_TOL)
            & (of_grasped("speed") < cfg.place_max_speed)
            & ~of_grasped("held")
        )
        placed = active & settled & of_grasped("in_region") & of_grasped("upright")
        dropped = active & settled & ~placed
        fell = active & st["fell"].any(axis=1)
        unstable = active & self._unstable
        placed &= ~unstable
        self._placed |= placed
        reward += placed

        failed = (dropped | fell | unstable) & ~placed
        terminated_now = placed | failed
        self._terminated |= terminated_now
        truncated_now = active & ~terminated_now & (self._steps >= cfg.max_steps)
        self._truncated |= truncated_now
        self._reason = np.where(placed, "success", self._reason)
        self._reason = np.where(dropped & ~placed, "dropped", self._reason)
        self._reason = np.where(fell & ~placed, "fell_off_table", self._reason)
        self._reason = np.where(unstable, "unstable", self._reason)
        self._reason = np.where(truncated_now, "time_limit", self._reason)
        return reward

    def _obs(self) -> dict[str, np.ndarray]:
        cfg, ix = self.config, self.idx
        n = self.num_envs
        shift = cfg.domain_shift
        ee = self.ee_pose()
        joints = np.stack([d.qpos[ix.finger_qpos] for d in self._data])
        obs: dict[str, np.ndarray] = {}
        if self._renderer is not None:
            s = cfg.image_size
            for key, cam in (("wrist_rgb", "wrist"), ("front_rgb", "front")):
                imgs = np.empty((n, s, s, 3), dtype=np.uint8)
                for i, d in enumerate(self._data):
                    self._renderer.update_scene(d, cam)
                    self._renderer.render(out=imgs[i])
                if shift.image_noise_std > 0:
                    noisy = imgs + self._rng.normal(0.0, shift.image_noise_std, imgs.shape)
                    imgs = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
                obs[key] = imgs
        sigma = shift.obs_noise_std
        if sigma > 0:
            joints = joints + self._rng.normal(0.0, sigma, joints.shape)
            ee = ee + self._rng.normal(0.0, sigma, ee.shape)
            ee[:, 3:] = R.normalize(ee[:, 3:])
        obs["hand_joints"] = joints.astype(np.float32)
        obs["ee_pose"] = ee.astype(np.float32)
        if cfg.object_state:
            objs = self.object_poses()  # true poses; noise (if any) is added below
            target = np.concatenate([self._target_xy, np.full((n, 1), M.TABLE_TOP_Z)], axis=1)
            rel_ee = objs[:, :, :3] - self.ee_pose()[:, None, :3]
            rel_target = objs[:, :, :3] - target[:, None]
            state = np.concatenate([rel_ee, rel_target, objs[:, :, 3:]], axis=2).reshape(n, -1)
            if sigma > 0:
                state = state + self._rng.normal(0.0, sigma, state.shape)
            obs["object_state"] = state.astype(np.float32)
        return obs


def make_env(variant: str = "nominal", **overrides: Any) -> HandPickPlace:
    """Build the task: ``"nominal"`` simulation or the ``"shifted"`` "real robot" stand-in
    (:meth:`DomainShift.shifted`). ``overrides`` are :class:`HandPickPlaceConfig` fields."""
    if variant == "nominal":
        shift = DomainShift()
    elif variant == "shifted":
        shift = DomainShift.shifted()
    else:
        raise ValueError(f"make_env: variant must be 'nominal' or 'shifted', got {variant!r}")
    if "domain_shift" in overrides:
        raise ValueError("make_env: pass the variant, not domain_shift (or build the env directly)")
    return HandPickPlace(HandPickPlaceConfig(domain_shift=shift, **overrides))
