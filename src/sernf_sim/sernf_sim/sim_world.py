"""The simulated world behind the device boundaries (the core of ``sim_world_node``; no ROS).

One MuJoCo hand pick-and-place world runs in (scaled) real time and stands in for the physical
world at every device boundary (docs/design.md §8), so the real drivers run unchanged:

* **ORCA hand.** A :class:`~sernf_sim.dynamixel_bus.SimulatedDynamixelBus` on a pty serves one
  XC330 per joint of the driver's hand model file (ids, wiring signs, ranges). Its servos are
  the world's finger actuators, mapped by joint name
  (:class:`~sernf_sim.dynamixel_bus.mujoco_hand.ServoJointMap`): a goal position becomes the
  actuator's target, the present position/velocity/current are the simulated joint's. Ticks
  relate to joint angles as the driver's calibration says (:class:`ServoCalibration`: the
  joint's range spans the servo's calibrated ticks ``[motor_lower_ticks, motor_upper_ticks]``),
  so :meth:`SimWorld.write_calibration` writes the file the driver needs for this hand.
* **Franka arm.** The equilibrium pose the bridge publishes (robot base frame) becomes the
  target of the hand's weld (world frame) through the fixed base↔world transform
  :class:`BaseFrame`; the measured flange pose is the hand body's pose, back in the base
  frame. The weld *is* the Cartesian impedance: MuJoCo's soft weld constraint pulls the hand
  toward its target like a stiff spring-damper, and contacts push back. The equilibrium is
  low-pass filtered first, as franka's example controller does (:class:`WeldArm`). A reflex
  freezes the target where the hand is (the arm holds) and ignores equilibria until recovery.
* **Cameras.** Rendered views of named MuJoCo cameras; :func:`camera_intrinsics` gives the
  pinhole model of a camera's ``fovy`` at the image size.
* **The task.** Episodes (layouts as sim_robot_node chooses them), evaluated once per control
  period of simulated time with ``env.finish_control_step()``; START/END/reward events come
  back from :meth:`SimWorld.advance` for the node to publish.

A reset re-lays the objects and the target around the robot; the robot itself (arm pose, finger
joints and targets) is not teleported, because the drivers hold their last commands and would
pull it straight back (bringing the hand home is the policy's or operator's job, as on the
robot).

Threads: the node's executor calls :meth:`SimWorld.advance`, the cameras and the hooks; the bus
thread only exchanges servo goals and joint states with :class:`SharedFingerState` under its
short lock, so it never waits for physics or rendering.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sernf_sim.arm_interface import FrankaControllerConfig
from sernf_sim.dynamixel_bus import JointSpaceBackend, SimulatedDynamixelBus
from sernf_sim.dynamixel_bus.mujoco_hand import ServoJointMap, SharedFingerState, WorldHandJoints
from sernf_sim.episodes import EpisodeBook, end_reason, layout
from sernf_sim.hand_pick_place import env as hand_env
from sernf_sim.hand_pick_place import model as hand_model
from sernf_sim.hand_pick_place import rotations as R
from sernf_sim.hand_pick_place.config import test_configs

__all__ = ["BaseFrame", "CameraModel", "ServoCalibration", "SimWorld", "SimWorldConfig", "WeldArm",
           "WorldEvent", "camera_intrinsics"]


@dataclass
class SimWorldConfig(FrankaControllerConfig):
    """Parameters of sim_world (declared as ROS parameters with these defaults): the Franka
    controller interface's (topics, frame, recovery) and the world's."""

    variant: str = "nominal"
    """'nominal' simulation or the 'shifted' stand-in for the real robot (domain shift)."""
    seed: int = 0
    """Seed of random layouts."""
    speed: float = 1.0
    """Simulated seconds per wall-clock second."""
    physics_period_s: float = 0.01
    """Wall-clock period of the physics timer; each tick advances the world by the elapsed time
    × speed (at most max_physics_step_s)."""
    max_physics_step_s: float = 0.05
    """Largest simulated time one physics tick advances: a stalled process slows simulated time
    down instead of taking one huge step (raise it with speed: physics_period_s × speed must
    stay below it)."""
    control_rate_hz: float = 10.0
    """Task evaluation rate (rewards, termination) in simulated time: the policy's rate."""
    max_steps: int = 300
    """Episode time limit in control periods."""
    reset_config: int = -1
    """Layout of the next episode: -1 random, 0..9 one of the fixed test configurations."""
    auto_reset: bool = True
    """Start the next episode reset_delay_s after one ends."""
    first_episode_after_s: float = 1.0
    """Start the first episode this long (simulated s) after start-up; negative: wait for
    ~/reset."""
    reset_delay_s: float = 1.0
    """Pause (simulated s) between an episode's end and the automatic reset."""
    bus_link: str = "/tmp/sernf_sim/orca_hand"
    """Symlink to the simulated Dynamixel bus's pty (the driver's port); created at start,
    removed at exit; an existing file that is not a symlink is never replaced."""
    hand_model_file: str = ""
    """The ORCA driver's hand model file (servo ids, signs, ranges); empty: orca_v1_right.yaml
    of the installed orca_hand_driver."""
    motor_lower_ticks: int = 1000
    """Calibrated lower hard stop of every servo (ticks): where each joint's range begins."""
    motor_upper_ticks: int = 3000
    """Calibrated upper hard stop of every servo (ticks): where each joint's range ends."""
    calibration_file: str = ""
    """Write this simulated hand's calibration here at start (what the driver's calibration
    routine would measure), for the driver's calibration_file; empty: write none."""
    base_in_world: tuple[float, ...] = (-0.5, 0.0, -0.18, 1.0, 0.0, 0.0, 0.0)
    """Pose of the robot base in the world (x, y, z, qw, qx, qy, qz): the default puts the
    hand's home pose at (0.5, 0, 0.4) in the base frame, pointing down, like a Franka's."""
    target_filter_time_constant_s: float = 0.05
    """Low-pass time constant of the equilibrium before it reaches the weld (franka's example
    controller: 0.2 s)."""
    cameras: tuple[str, ...] = ("front", "under", "left")
    """Published camera names: <camera_topic_prefix>/<name>/image_raw and camera_info."""
    camera_sources: tuple[str, ...] = ("front", "under", "wrist")
    """MuJoCo camera rendered for each of cameras (same order)."""
    camera_topic_prefix: str = "/cameras"
    """Camera topics' prefix."""
    camera_rate_hz: float = 10.0
    """Frame rate of every camera (simulated time)."""
    image_size: int = 224
    """Square image side (pixels)."""
    diagnostics_period_s: float = 1.0
    """Period of the /diagnostics status (wall clock)."""
    camera_stream_hook: str = ""
    """Camera that ~/set_camera_stream stops and restarts (settable at run time); empty: every
    camera."""
    overload_servo_id: int = 15
    """Servo that ~/inject_servo_overload overloads (settable at run time; 15: index_mcp of
    ORCA v1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in ("nominal", "shifted"):
            raise ValueError(f"variant must be 'nominal' or 'shifted', got {self.variant!r}")
        for name in ("speed", "physics_period_s", "max_physics_step_s", "control_rate_hz", "camera_rate_hz",
                     "diagnostics_period_s"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ("reset_delay_s", "target_filter_time_constant_s"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not (-1 <= self.reset_config < len(test_configs())):
            raise ValueError(f"reset_config must be -1 or 0..{len(test_configs()) - 1}, got {self.reset_config}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not (8 <= self.image_size <= hand_model.MAX_IMAGE_SIZE):
            raise ValueError(f"image_size must be in 8..{hand_model.MAX_IMAGE_SIZE}, got {self.image_size}")
        if not self.bus_link:
            raise ValueError("bus_link must be a path")
        if not (0 <= self.motor_lower_ticks < self.motor_upper_ticks <= 1_048_575
                and self.motor_upper_ticks - self.motor_lower_ticks >= 20):
            raise ValueError(f"motor ticks [{self.motor_lower_ticks}, {self.motor_upper_ticks}] must be an "
                             "increasing pair in 0..1048575, at least 20 apart")
        BaseFrame.from_tuple(self.base_in_world)  # validates
        if len(self.cameras) != len(self.camera_sources):
            raise ValueError(f"cameras {list(self.cameras)} and camera_sources {list(self.camera_sources)} "
                             "need the same length")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"camera names must be unique, got {list(self.cameras)}")


# -- frames ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaseFrame:
    """The fixed pose of the robot base in the world: p_world = p + R(q) · p_base."""

    position: np.ndarray
    orientation: np.ndarray
    """(w, x, y, z), unit."""

    @classmethod
    def from_tuple(cls, pose: tuple[float, ...] | list[float]) -> BaseFrame:
        values = np.asarray(pose, dtype=np.float64)
        if values.shape != (7,) or not np.all(np.isfinite(values)):
            raise ValueError(f"base_in_world must be 7 finite numbers (x, y, z, qw, qx, qy, qz), got {pose!r}")
        if abs(float(np.linalg.norm(values[3:])) - 1.0) > 1e-3:
            raise ValueError(f"base_in_world's quaternion must be unit, got {values[3:].tolist()}")
        return cls(values[:3], R.normalize(values[3:]))

    def to_world(self, position: np.ndarray, orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A base-frame pose in world coordinates."""
        p = self.position + R.rotate(self.orientation, np.asarray(position, dtype=np.float64))
        return p, R.normalize(R.mul(self.orientation, np.asarray(orientation, dtype=np.float64)))

    def to_base(self, position: np.ndarray, orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A world pose in base-frame coordinates."""
        inverse = R.conj(self.orientation)
        p = R.rotate(inverse, np.asarray(position, dtype=np.float64) - self.position)
        return p, R.normalize(R.mul(inverse, np.asarray(orientation, dtype=np.float64)))


# -- the arm ----------------------------------------------------------------------------------------

class WeldArm:
    """The Franka controller over the world's hand weld (a ``ControlledArm``).

    Equilibria arrive in the base frame; the weld target is world-frame. ``advance`` low-pass
    filters the equilibrium (franka's example controller filters it the same way) and returns
    the weld target for this physics increment; the weld's spring-damper does the rest.
    """

    def __init__(self, frame: BaseFrame, measured_world: np.ndarray, filter_time_constant_s: float) -> None:
        self.frame = frame
        self.filter_time_constant_s = float(filter_time_constant_s)
        self._measured = np.asarray(measured_world, dtype=np.float64).copy()
        self._target = self._measured.copy()   # last accepted equilibrium, world frame
        self._desired = self._measured.copy()  # filtered equilibrium = weld target
        self.error = False
        self.equilibria_received = 0
        self.equilibria_ignored = 0
        self.reflexes = 0
        self.recoveries = 0
        self.recoveries_without_error = 0

    def set_equilibrium(self, position: np.ndarray, orientation: np.ndarray) -> bool:
        self.equilibria_received += 1
        if self.error:
            self.equilibria_ignored += 1
            return False
        p, q = self.frame.to_world(position, orientation)
        if float(np.dot(q, self._target[3:])) < 0.0:  # franka flips into the last hemisphere
            q = -q
        self._target = np.r_[p, q]
        return True

    def inject_reflex(self) -> None:
        """The robot stops where it is and reports an error until recovered."""
        if not self.error:
            self.reflexes += 1
        self.error = True
        self.hold_here()

    def recover(self) -> None:
        """Clears the error; the controller restarts from the current pose (a recovery without an
        error is counted: on the robot it can swallow the next reflex)."""
        self.recoveries += 1
        if not self.error:
            self.recoveries_without_error += 1
            return
        self.error = False
        self.hold_here()

    def hold_here(self) -> None:
        """Target and filter state at the measured pose (no pull anywhere)."""
        self._target = self._measured.copy()
        self._desired = self._measured.copy()

    def advance(self, dt: float, measured_world: np.ndarray) -> np.ndarray:
        """The weld target (world, [7]) for the next ``dt`` seconds, given the measured pose."""
        self._measured = np.asarray(measured_world, dtype=np.float64).copy()
        if self.error:
            return self._desired.copy()  # frozen: the arm holds still
        tau = self.filter_time_constant_s
        alpha = 1.0 if tau == 0 else 1.0 - math.exp(-max(dt, 0.0) / tau)
        self._desired[:3] += alpha * (self._target[:3] - self._desired[:3])
        self._desired[3:] = R.slerp(self._desired[3:], self._target[3:], alpha)
        return self._desired.copy()

    def measured_base(self) -> tuple[np.ndarray, np.ndarray]:
        """The measured flange pose in the base frame."""
        return self.frame.to_base(self._measured[:3], self._measured[3:])

    @property
    def equilibrium_world(self) -> np.ndarray:
        return self._target.copy()


# -- the hand's servos ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServoCalibration:
    """Ticks ↔ joint angle per servo, as the ORCA driver's calibration maps them:
    ``ticks = lower_ticks + (q − lower)·ratio`` (inverted: ``lower_ticks + (upper − q)·ratio``),
    ``ratio = (upper_ticks − lower_ticks) / (upper − lower)``; in :class:`JointSpaceBackend`'s
    form ``ticks = zero + sign · ratio · q``."""

    zero_ticks: np.ndarray
    ticks_per_rad: np.ndarray
    sign: np.ndarray

    @classmethod
    def from_ranges(cls, lower: np.ndarray, upper: np.ndarray, inverted: np.ndarray, lower_ticks: float,
                    upper_ticks: float) -> ServoCalibration:
        lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        inverted = np.asarray(inverted, dtype=bool)
        ratio = (upper_ticks - lower_ticks) / (upper - lower)
        zero = np.where(inverted, lower_ticks + upper * ratio, lower_ticks - lower * ratio)
        return cls(zero, ratio, np.where(inverted, -1.0, 1.0))

    def to_ticks(self, q: np.ndarray) -> np.ndarray:
        return self.zero_ticks + self.sign * self.ticks_per_rad * np.asarray(q, dtype=float)

    def to_joints(self, ticks: np.ndarray) -> np.ndarray:
        return (np.asarray(ticks, dtype=float) - self.zero_ticks) / (self.sign * self.ticks_per_rad)


# -- cameras --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics of a rendered view (no distortion), CameraInfo's K and P."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def k(self) -> list[float]:
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]

    @property
    def p(self) -> list[float]:
        return [self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0]


def camera_intrinsics(fovy_deg: float, width: int, height: int) -> CameraModel:
    """A MuJoCo camera's pinhole model: ``fovy`` is the full vertical field of view and pixels
    are square, so f = (height / 2) / tan(fovy / 2); the principal point is the image centre in
    the convention of CameraInfo (integer coordinates are pixel centres: (w − 1) / 2)."""
    if not (0.0 < fovy_deg < 180.0):
        raise ValueError(f"fovy must be in (0, 180) degrees, got {fovy_deg}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} must be positive")
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)
    return CameraModel(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)


# -- the world ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorldEvent:
    """Something the node announces: an episode ``start``/``end``/``abort`` (with its reason) or
    a ``reward`` (value and subtask), at simulated time ``sim_time``."""

    kind: str
    episode_id: str
    sim_time: float
    reason: str = ""
    value: float = 0.0
    subtask: str = ""


@dataclass
class WorldCounters:
    sim_time: float = 0.0
    control_steps: int = 0
    episodes_started: int = 0
    episodes_ended: int = 0
    rewards: int = 0
    servo_overloads_injected: int = 0
    end_reasons: dict[str, int] = field(default_factory=dict)


class SimWorld:
    """The world (see the module docstring). ``hand_joints``: the driver's hand model joints
    (objects with name, motor, inverted, lower, upper, neutral), in the model file's order."""

    def __init__(self, cfg: SimWorldConfig, hand_joints: list[Any]) -> None:
        self.cfg = cfg
        self.env = hand_env.make_env(cfg.variant, num_envs=1, render_images=False, max_steps=cfg.max_steps,
                                     control_hz=cfg.control_rate_hz, seed=cfg.seed)
        self.env.reset()
        self.lock = threading.RLock()
        self.frame = BaseFrame.from_tuple(cfg.base_in_world)
        self.book = EpisodeBook(seed=cfg.seed)
        self.auto_reset = cfg.auto_reset
        """Whether an ended episode is followed by the next (the node may change it at run time)."""
        self.reset_config = cfg.reset_config
        """Layout of the next automatic reset (the node may change it at run time)."""
        self.counters = WorldCounters()
        self._control_period = 1.0 / cfg.control_rate_hz
        self._control_index = 1  # the next control period ends at index × period (no float drift)
        self.book.reset_at = cfg.first_episode_after_s if cfg.first_episode_after_s >= 0 else None
        # The hand: one servo per joint of the driver's hand model, by name on the sim joints.
        self.hand_joints = list(hand_joints)
        sim_names = [s.name for s in hand_model.FINGER_JOINTS]
        self.servo_map = ServoJointMap([j.name for j in self.hand_joints], sim_names)
        q, _, _ = self.env.finger_state(0)
        self.fingers = SharedFingerState(self.env.finger_targets()[0], q)
        lower = np.array([j.lower for j in self.hand_joints])
        upper = np.array([j.upper for j in self.hand_joints])
        self.servo_calibration = ServoCalibration.from_ranges(
            lower, upper, np.array([j.inverted for j in self.hand_joints]), cfg.motor_lower_ticks, cfg.motor_upper_ticks)
        joints = WorldHandJoints(self.servo_map, self.fingers, lower, upper, [j.neutral for j in self.hand_joints])
        c = self.servo_calibration
        self.bus = SimulatedDynamixelBus(servo_ids=[j.motor for j in self.hand_joints],
                                         backend=JointSpaceBackend(joints, c.zero_ticks, c.ticks_per_rad, c.sign))
        self.arm = WeldArm(self.frame, self.env.ee_pose()[0], cfg.target_filter_time_constant_s)
        self.cameras = dict(zip(cfg.cameras, cfg.camera_sources, strict=True))
        model = self.env.model
        known = [model.camera(i).name for i in range(model.ncam)]
        missing = [s for s in cfg.camera_sources if s not in known]
        if missing:
            self.bus.close()
            raise ValueError(f"camera_sources {missing} are not cameras of the world (it has {known})")
        self.intrinsics = {name: camera_intrinsics(float(model.cam_fovy[model.camera(src).id]),
                                                   cfg.image_size, cfg.image_size)
                           for name, src in self.cameras.items()}

    def close(self) -> None:
        self.bus.close()

    # -- time -------------------------------------------------------------------------------------
    def advance(self, dt: float) -> list[WorldEvent]:
        """Advance the world by ``dt`` simulated seconds (physics with the latest servo goals and
        weld target; the task evaluated at every control period crossed); returns the events."""
        dt = min(max(float(dt), 0.0), self.cfg.max_physics_step_s)
        events: list[WorldEvent] = []
        with self.lock:
            t_end = self.counters.sim_time + dt
            # Split at control-period boundaries, so the task is evaluated on time.
            while True:
                next_control = self._control_index * self._control_period
                boundary = min(next_control, t_end)
                step = boundary - self.counters.sim_time
                if step > 0:
                    self._physics(step)
                    self.counters.sim_time = boundary
                if boundary < next_control:
                    break
                self._control_index += 1
                events += self._control_step()
        return events

    def _physics(self, dt: float) -> None:
        env = self.env
        target = self.arm.advance(dt, env.ee_pose()[0])
        env.drive(0, target, self.fingers.targets(), dt)
        q, dq, torque = env.finger_state(0)
        self.fingers.publish_state(q, dq, torque)

    def _control_step(self) -> list[WorldEvent]:
        now = self.counters.sim_time
        if not self.book.running:
            if self.book.reset_due(now + 1e-9):  # a due time on a period boundary is due
                return self._start_episode(int(self.reset_config))
            return []
        self.counters.control_steps += 1
        reward, terminated, truncated, info = self.env.finish_control_step()
        events = []
        if reward[0] > 0:
            self.counters.rewards += 1
            events.append(WorldEvent("reward", self.book.episode_id, now, value=float(reward[0]),
                                     subtask=self.book.reward_subtask()))
        if terminated[0] or truncated[0]:
            reason = end_reason(info["termination_reason"][0], bool(truncated[0]))
            self.book.end(now, self.auto_reset, self.cfg.reset_delay_s)
            self.counters.episodes_ended += 1
            self.counters.end_reasons[reason] = self.counters.end_reasons.get(reason, 0) + 1
            events.append(WorldEvent("end", self.book.episode_id, now, reason=reason))
        return events

    # -- episodes ---------------------------------------------------------------------------------
    def start_episode(self, reset_config: int) -> list[WorldEvent]:
        """Start an episode now (aborting a running one) on layout ``reset_config``."""
        with self.lock:
            return self._start_episode(reset_config)

    def _start_episode(self, reset_config: int) -> list[WorldEvent]:
        configs, reason = layout(reset_config)
        events = []
        now = self.counters.sim_time
        if self.book.running:
            events.append(WorldEvent("abort", self.book.episode_id, now, reason="reset"))
        env = self.env
        # The robot stays where it is (module docstring): only the scene is re-laid.
        pose = env.ee_pose()[0]
        q, _, _ = env.finger_state(0)
        targets = env.finger_targets()[0]
        env.reset(configs=configs)
        env.set_hand(0, pose[:3], pose[3:], joints=q, targets=targets)
        self.book.start()
        self.counters.episodes_started += 1
        events.append(WorldEvent("start", self.book.episode_id, now, reason=reason))
        return events

    # -- observation ------------------------------------------------------------------------------
    def render(self, camera: str) -> np.ndarray:
        """One RGB frame [s, s, 3] uint8 of the published camera ``camera``."""
        with self.lock:
            return self.env.render_camera(0, self.cameras[camera], self.cfg.image_size)

    def flange_pose_base(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            p, q = self.frame.to_base(*np.split(self.env.ee_pose()[0], [3]))
        return p, q

    # -- faults -----------------------------------------------------------------------------------
    def inject_servo_overload(self, servo_id: int) -> None:
        if servo_id not in self.bus.servo_ids:
            raise ValueError(f"no servo {servo_id} on the bus (ids {list(self.bus.servo_ids)})")
        self.bus.inject_hardware_error(servo_id)
        self.counters.servo_overloads_injected += 1


def write_driver_calibration(path: str | Path, model: Any, lower_ticks: int, upper_ticks: int) -> str:
    """Write the calibration file the ORCA driver needs for the simulated hand (every servo's
    hard stops at ``lower_ticks``/``upper_ticks``: what its calibration routine would measure).
    An identical file is kept; a different one is replaced, its old content kept as a backup.
    Returns what was done (for the log)."""
    from orca_hand_driver.calibration import (
        Calibration,
        CalibrationError,
        MotorLimits,
        load_calibration,
        save_calibration,
    )

    limits = {j.name: MotorLimits(j.motor, int(lower_ticks), int(upper_ticks)) for j in model.joints}
    path = Path(path)
    if path.exists():
        try:
            if load_calibration(path, model).limits == limits:
                return f"calibration {path} already matches the simulated hand"
        except CalibrationError as exc:
            reason = str(exc)
        else:
            reason = "other motor limits"
        backup = save_calibration(path, Calibration(model.name, model.fingerprint(), limits),
                                  model, overwrite=True)
        return f"calibration {path} replaced ({reason}; old one kept as {backup})"
    save_calibration(path, Calibration(model.name, model.fingerprint(), limits), model)
    return f"calibration of the simulated hand written to {path}"


def create_bus_link(link: str | Path, port: str) -> Path:
    """Point the symlink ``link`` at ``port`` (replacing an old symlink, never another file)."""
    link = Path(link)
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"bus_link {link} exists and is not a symlink: refusing to replace it")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(port)
    return link


def remove_bus_link(link: str | Path, port: str) -> bool:
    """Remove ``link`` if it is still our symlink to ``port``."""
    link = Path(link)
    if link.is_symlink() and str(link.readlink()) == str(port):
        link.unlink()
        return True
    return False
