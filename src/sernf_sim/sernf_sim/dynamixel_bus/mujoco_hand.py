"""The MuJoCo hand's finger joints behind the simulated Dynamixel bus.

With these joint models the servos of :class:`SimulatedDynamixelBus` are the simulated hand's
position actuators: a goal position written by the ORCA driver becomes the actuator's target,
MuJoCo integrates the fingers (contacts, joint limits as hard stops), and the present position,
velocity and current the driver reads back are the simulated joint's. The driver cannot tell it
from a hand on a USB adapter (docs/design.md §8).

Servos are mapped to simulated joints **by name** (:class:`ServoJointMap`): the servo driving
the hand model's joint ``index_mcp`` is the simulated joint ``index_mcp``. A servo whose joint
the simulated hand lacks is a plain first-order servo between its joint's range limits; a
simulated joint no servo drives keeps its current target. With an ORCA-shaped simulated hand
(the ORCA joint names) every servo maps.

Two joint models share the servo side (:class:`HandJoints`):

* :class:`MujocoHandJoints` steps its own ``MjData`` (the hand welded in place) as far as the
  bus's clock advanced: a hand on a bench, for driver tests;
* :class:`WorldHandJoints` steps nothing: it exchanges goals and the latest joint state with the
  simulated world (``sernf_sim.sim_world``) through a :class:`SharedFingerState`, so the bus
  thread never waits for physics and the fingers are the world's (objects, arm, episodes).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import mujoco
import numpy as np

from sernf_sim.hand_pick_place import model as hand_model

__all__ = ["HandJoints", "MujocoHandJoints", "ServoJointMap", "SharedFingerState", "WorldHandJoints"]

#: Actuator torque (N·m) per raw current unit of the XC330 (≈1.34 mA per unit; the stall torque
#: of 0.52 N·m at 1.8 A gives ~4e-4 N·m per unit; the hand's tendons add a reduction).
NEWTON_METRES_PER_RAW = 2e-4


class ServoJointMap:
    """Servo ``k`` (named ``servo_names[k]``) ↔ simulated joint of the same name.

    ``sim_index[k]`` is the simulated joint's index in ``sim_joint_names``, -1 where the
    simulated hand has no joint of that name.
    """

    def __init__(self, servo_names: Sequence[str], sim_joint_names: Sequence[str]) -> None:
        if len(set(servo_names)) != len(servo_names):
            raise ValueError(f"servo names must be unique, got {list(servo_names)}")
        sim = list(sim_joint_names)
        self.servo_names = list(servo_names)
        self.sim_joint_names = sim
        self.sim_index = np.array([sim.index(n) if n in sim else -1 for n in servo_names], dtype=np.int64)
        self.mapped = self.sim_index >= 0

    @property
    def free_servos(self) -> list[str]:
        """Servos without a simulated joint (first-order servos)."""
        return [n for n, m in zip(self.servo_names, self.mapped, strict=True) if not m]

    @property
    def undriven_joints(self) -> list[str]:
        """Simulated joints no servo drives (they keep their targets)."""
        return [n for n in self.sim_joint_names if n not in self.servo_names]


class HandJoints:
    """A :class:`~sernf_sim.dynamixel_bus.servo.JointModel`: the servo side of a simulated hand.

    Arrays passed to :meth:`advance_joints` are indexed like the servos. Mapped servos set the
    simulated joints' actuator targets (torque off: the target follows the joint, so the
    actuator exerts no force, a limp servo); the others follow their goal with a first-order lag
    between ``free_lower`` and ``free_upper`` (rad, their joints' hard stops). Subclasses say
    how targets reach the simulation and the state comes back (:meth:`_exchange`).
    """

    def __init__(self, mapping: ServoJointMap, free_lower: Sequence[float], free_upper: Sequence[float],
                 free_initial: Sequence[float], newton_metres_per_raw: float = NEWTON_METRES_PER_RAW,
                 free_time_constant_s: float = 0.03) -> None:
        n = len(mapping.servo_names)
        if not (len(free_lower) == len(free_upper) == len(free_initial) == n):
            raise ValueError(f"free_lower/free_upper/free_initial need one value per servo ({n})")
        if not (newton_metres_per_raw > 0 and free_time_constant_s > 0):
            raise ValueError("newton_metres_per_raw and free_time_constant_s must be positive")
        self.mapping = mapping
        self.newton_metres_per_raw = float(newton_metres_per_raw)
        self.free_time_constant_s = float(free_time_constant_s)
        self._free_lower = np.asarray(free_lower, dtype=float)
        self._free_upper = np.asarray(free_upper, dtype=float)
        self._free_q = np.clip(np.asarray(free_initial, dtype=float), self._free_lower, self._free_upper)
        self._free_dq = np.zeros(n)

    # -- what subclasses provide ---------------------------------------------------------------
    def _sim_positions(self) -> np.ndarray:
        """Current positions of all simulated joints (rad)."""
        raise NotImplementedError

    def _exchange(self, dt: float, joints: np.ndarray, targets: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Set the targets of simulated joints ``joints`` (indices), let ``dt`` pass; return all
        simulated joints' positions, velocities and actuator torques."""
        raise NotImplementedError

    # -- JointModel -----------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        """Simulated joint angle (rad) of each servo's joint (NaN where the servo is free)."""
        q = self._sim_positions()
        return np.where(self.mapping.mapped, q[np.maximum(self.mapping.sim_index, 0)], np.nan)

    def advance_joints(self, dt: float, goal_q: np.ndarray, torque_on: np.ndarray,
                       current_limit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        goal_q = np.asarray(goal_q, dtype=float)
        torque_on = np.asarray(torque_on, dtype=bool)
        mapped, joints = self.mapping.mapped, self.mapping.sim_index[self.mapping.mapped]
        q_now = self._sim_positions()[joints]
        targets = np.where(torque_on[mapped], goal_q[mapped], q_now)
        q_sim, dq_sim, torque_sim = self._exchange(max(float(dt), 0.0), joints, targets)
        if dt > 0:
            alpha = 1.0 - math.exp(-dt / self.free_time_constant_s)
            free = ~mapped & torque_on
            new_q = np.where(free, self._free_q + alpha * (goal_q - self._free_q), self._free_q)
            new_q = np.clip(new_q, self._free_lower, self._free_upper)
            self._free_dq = (new_q - self._free_q) / dt
            self._free_q = new_q
        q = self._free_q.copy()
        dq = self._free_dq.copy()
        current = np.zeros(len(mapped))
        q[mapped] = q_sim[joints]
        dq[mapped] = dq_sim[joints]
        # The actuator's torque expressed as motor current (raw units), saturated at the limit.
        limit = np.asarray(current_limit, dtype=float)[mapped]
        current[mapped] = np.where(torque_on[mapped],
                                   np.clip(torque_sim[joints] / self.newton_metres_per_raw, -limit, limit), 0.0)
        return q, dq, current


class MujocoHandJoints(HandJoints):
    """The simulated hand on a bench: its own ``MjData`` (hand welded at its home pose), stepped
    at the model's physics time step as far as the bus's clock advanced.

    ``servo_names[k]`` is the joint of the bus's k-th servo; ``free_ranges`` (lower, upper per
    servo, rad) bound the servos without a simulated joint (default ±π).
    """

    def __init__(self, servo_names: Sequence[str], free_ranges: tuple[Sequence[float], Sequence[float]] | None = None,
                 newton_metres_per_raw: float = NEWTON_METRES_PER_RAW, free_time_constant_s: float = 0.03) -> None:
        self.model = hand_model.load_model()
        self.data = mujoco.MjData(self.model)
        specs = hand_model.FINGER_JOINTS
        mapping = ServoJointMap(servo_names, [s.name for s in specs])
        n = len(mapping.servo_names)
        lower, upper = free_ranges if free_ranges is not None else ([-math.pi] * n, [math.pi] * n)
        super().__init__(mapping, lower, upper, np.clip(np.zeros(n), lower, upper),
                         newton_metres_per_raw, free_time_constant_s)
        m = self.model
        self._actuator = np.array([m.actuator(s.name).id for s in specs])
        self._qpos = np.array([m.jnt_qposadr[m.joint(s.name).id] for s in specs])
        self._qvel = np.array([m.jnt_dofadr[m.joint(s.name).id] for s in specs])
        # Home pose: fingers at their open posture.
        self.data.ctrl[self._actuator] = [s.home for s in specs]
        self.data.qpos[self._qpos] = [s.home for s in specs]
        mujoco.mj_forward(m, self.data)
        self._pending_s = 0.0

    def _sim_positions(self) -> np.ndarray:
        return self.data.qpos[self._qpos].copy()

    def _exchange(self, dt, joints, targets):
        m, d = self.model, self.data
        act = self._actuator[joints]
        d.ctrl[act] = np.clip(targets, m.actuator_ctrlrange[act, 0], m.actuator_ctrlrange[act, 1])
        self._pending_s += dt
        steps = int(self._pending_s / m.opt.timestep)
        if steps:
            mujoco.mj_step(m, d, steps)
            self._pending_s -= steps * m.opt.timestep
        return (d.qpos[self._qpos].copy(), d.qvel[self._qvel].copy(), d.actuator_force[self._actuator].copy())


class SharedFingerState:
    """What the bus thread and the world's physics exchange, under one short lock.

    The servos write actuator targets (:meth:`set_targets`); physics takes them
    (:meth:`targets`) and, after each increment, publishes the joints' state
    (:meth:`publish_state`) that the servos read back (:meth:`state`). Neither side ever waits
    for the other's work, only for this lock.
    """

    def __init__(self, targets: Sequence[float], positions: Sequence[float]) -> None:
        self._lock = threading.Lock()
        self._targets = np.array(targets, dtype=float)
        n = len(self._targets)
        self._q = np.array(positions, dtype=float)
        self._dq = np.zeros(n)
        self._torque = np.zeros(n)

    def set_targets(self, joints: np.ndarray, values: np.ndarray) -> None:
        with self._lock:
            self._targets[joints] = values

    def reset_targets(self, targets: Sequence[float]) -> None:
        """All targets at once (the world's reset of joints no servo drives)."""
        with self._lock:
            self._targets[:] = targets

    def targets(self) -> np.ndarray:
        with self._lock:
            return self._targets.copy()

    def publish_state(self, q: np.ndarray, dq: np.ndarray, torque: np.ndarray) -> None:
        with self._lock:
            self._q[:], self._dq[:], self._torque[:] = q, dq, torque

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._lock:
            return self._q.copy(), self._dq.copy(), self._torque.copy()


class WorldHandJoints(HandJoints):
    """The servos as the simulated world's finger actuators (see the module docstring): goals go
    into ``shared``, the joint state comes from it; the world's physics does the rest."""

    def __init__(self, mapping: ServoJointMap, shared: SharedFingerState, free_lower: Sequence[float],
                 free_upper: Sequence[float], free_initial: Sequence[float],
                 newton_metres_per_raw: float = NEWTON_METRES_PER_RAW, free_time_constant_s: float = 0.03) -> None:
        super().__init__(mapping, free_lower, free_upper, free_initial, newton_metres_per_raw, free_time_constant_s)
        self.shared = shared

    def _sim_positions(self) -> np.ndarray:
        return self.shared.state()[0]

    def _exchange(self, dt, joints, targets):
        del dt  # the world's clock moves the joints, not the bus's
        if len(joints):
            self.shared.set_targets(joints, targets)
        return self.shared.state()
