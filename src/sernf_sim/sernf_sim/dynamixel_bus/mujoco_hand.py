"""The MuJoCo hand's finger joints behind the simulated Dynamixel bus.

With this joint model the servos of :class:`SimulatedDynamixelBus` are the simulated hand's
position actuators: a goal position written by the ORCA driver becomes the actuator's target,
MuJoCo integrates the fingers (contacts, joint limits as hard stops), and the present position,
velocity and current the driver reads back are the simulated joint's. The driver cannot tell it
from a hand on a USB adapter (docs/design.md §8).

The simulated hand of ``hand_pick_place`` is not ORCA-shaped yet (three fingers and a thumb,
16 joints, against ORCA's four fingers, thumb and wrist, 17 servos), so servos are mapped to
simulated joints by name (``ORCA_V1_TO_PICK_PLACE_HAND``); a servo without a simulated joint
(pinky, wrist) is a plain first-order servo.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import mujoco
import numpy as np

from sernf_sim.hand_pick_place import model as hand_model

__all__ = ["ORCA_V1_TO_PICK_PLACE_HAND", "MujocoHandJoints"]

ORCA_V1_TO_PICK_PLACE_HAND: Mapping[str, str] = {
    "thumb_abd": "thumb_opp", "thumb_mcp": "thumb_cmc", "thumb_pip": "thumb_mcp", "thumb_dip": "thumb_ip",
    "index_abd": "index_abd", "index_mcp": "index_mcp", "index_pip": "index_pip",
    "middle_abd": "middle_abd", "middle_mcp": "middle_mcp", "middle_pip": "middle_pip",
    "ring_abd": "ring_abd", "ring_mcp": "ring_mcp", "ring_pip": "ring_pip",
}
"""ORCA v1 joint → joint of the simulated pick-and-place hand with the same function (the
thumb's abduction is the simulated opposition roll). ORCA has no distal finger joints; the
simulated ones hold their home angle."""


class MujocoHandJoints:
    """A :class:`~sernf_sim.dynamixel_bus.servo.JointModel` over the MuJoCo hand.

    ``joint_names[i]`` is the simulated joint of the bus's i-th servo, or None for a servo with
    no simulated counterpart. The model steps its own ``MjData`` (the hand welded at its home
    pose), at the model's physics time step, as far as the bus's clock advanced.
    """

    def __init__(self, joint_names: Sequence[str | None], newton_metres_per_raw: float = 2e-4,
                 free_time_constant_s: float = 0.03) -> None:
        self.model = hand_model.load_model()
        self.data = mujoco.MjData(self.model)
        names = [self.model.actuator(i).name for i in range(self.model.nu)]
        unknown = [n for n in joint_names if n is not None and n not in names]
        if unknown:
            raise ValueError(f"no simulated hand joint {unknown}; the hand has {names}")
        self.joint_names = list(joint_names)
        self._actuator = np.array([names.index(n) if n is not None else -1 for n in joint_names])
        self._qpos = np.array([self.model.jnt_qposadr[self.model.joint(n).id] if n is not None else -1
                               for n in joint_names])
        self._qvel = np.array([self.model.jnt_dofadr[self.model.joint(n).id] if n is not None else -1
                               for n in joint_names])
        self._mapped = self._actuator >= 0
        self.newton_metres_per_raw = float(newton_metres_per_raw)
        self.free_time_constant_s = float(free_time_constant_s)
        # Home pose: fingers at their open posture, the hand where the task starts it.
        self.data.ctrl[:] = [spec.home for spec in hand_model.FINGER_JOINTS]
        for spec in hand_model.FINGER_JOINTS:
            self.data.qpos[self.model.jnt_qposadr[self.model.joint(spec.name).id]] = spec.home
        mujoco.mj_forward(self.model, self.data)
        # Servos without a simulated joint follow their goal with a first-order lag.
        self._free_q = np.zeros(len(joint_names))
        self._free_dq = np.zeros(len(joint_names))
        self._pending_s = 0.0

    def joint_positions(self) -> np.ndarray:
        """Simulated joint angle (rad) of each mapped servo (NaN where unmapped)."""
        return np.where(self._mapped, self.data.qpos[np.maximum(self._qpos, 0)], np.nan)

    def advance_joints(self, dt: float, goal_q: np.ndarray, torque_on: np.ndarray,
                       current_limit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        goal_q = np.asarray(goal_q, dtype=float)
        torque_on = np.asarray(torque_on, dtype=bool)
        m, d = self.model, self.data
        act = self._actuator[self._mapped]
        q_now = d.qpos[self._qpos[self._mapped]]
        # Torque off: the actuator tracks the joint, so it exerts no force (a limp servo).
        lo, hi = m.actuator_ctrlrange[act, 0], m.actuator_ctrlrange[act, 1]
        d.ctrl[act] = np.where(torque_on[self._mapped], np.clip(goal_q[self._mapped], lo, hi), q_now)
        self._pending_s += max(float(dt), 0.0)
        steps = int(self._pending_s / m.opt.timestep)
        if steps:
            mujoco.mj_step(m, d, steps)
            self._pending_s -= steps * m.opt.timestep
        if dt > 0:
            alpha = 1.0 - math.exp(-dt / self.free_time_constant_s)
            free = ~self._mapped & torque_on
            new_q = np.where(free, self._free_q + alpha * (goal_q - self._free_q), self._free_q)
            self._free_dq = (new_q - self._free_q) / dt
            self._free_q = new_q
        q = self._free_q.copy()
        dq = self._free_dq.copy()
        current = np.zeros(len(self.joint_names))
        q[self._mapped] = d.qpos[self._qpos[self._mapped]]
        dq[self._mapped] = d.qvel[self._qvel[self._mapped]]
        # The actuator's torque expressed as motor current (raw units), saturated at the limit.
        torque = d.actuator_force[act]
        limit = np.asarray(current_limit, dtype=float)[self._mapped]
        current[self._mapped] = np.where(torque_on[self._mapped],
                                         np.clip(torque / self.newton_metres_per_raw, -limit, limit), 0.0)
        return q, dq, current
