"""A simulated Cartesian-impedance-controlled arm: the far side of the Franka device boundary.

It does what matters to the franka_bridge about the real arm under franka's Cartesian impedance
example controller: the end effector is pulled toward an *equilibrium pose* by a spring-damper
(translational and rotational stiffness, critically damped by default), the commanded
equilibrium is first low-pass filtered (franka's example controller blends 0.5 % of the new
target per 1 kHz tick, a 0.2 s time constant), the target quaternion is flipped into the
hemisphere of the previous one, and a *reflex* stops the motion and ignores every equilibrium
until error recovery clears it; after recovery the controller restarts from the current pose.

Where the pose lives is separate from the law that moves it: :class:`ImpedanceArm` computes the
wrench and hands it to an :class:`EndEffectorBody`. :class:`FreeBody` integrates a rigid body
(point mass + isotropic inertia) itself; a MuJoCo-backed body (the hand task's end effector)
can implement the same three methods.

Quaternions are (w, x, y, z), positions metres, the base frame is the world frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sernf_sim.hand_pick_place import rotations as R

__all__ = ["EndEffectorBody", "FreeBody", "ImpedanceArm", "ImpedanceArmConfig"]


@dataclass
class ImpedanceArmConfig:
    """Spring-damper parameters of the simulated arm."""

    translational_stiffness: float = 200.0
    """N/m (franka's example controller: 200, range 0-400)."""
    rotational_stiffness: float = 20.0
    """Nm/rad (franka's example controller: 20, range 0-100)."""
    damping_ratio: float = 1.0
    """Damping as a fraction of critical (franka uses 2·sqrt(stiffness), critical for unit mass)."""
    mass: float = 1.0
    """Effective end-effector mass (kg)."""
    inertia: float = 0.05
    """Effective isotropic rotational inertia (kg m^2)."""
    target_filter_time_constant_s: float = 0.2
    """First-order low-pass of the equilibrium (0 = none); franka: 0.005 per 1 ms = 0.2 s."""
    max_substep_s: float = 0.002
    """Integration step; longer steps are split."""

    def __post_init__(self) -> None:
        for name in ("translational_stiffness", "rotational_stiffness", "mass", "inertia", "max_substep_s"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ("damping_ratio", "target_filter_time_constant_s"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")


class EndEffectorBody(Protocol):
    """Where the end-effector pose lives (a free rigid body here, a MuJoCo body later)."""

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Position [3] and orientation [4] (w, x, y, z), base frame."""
        ...

    def twist(self) -> tuple[np.ndarray, np.ndarray]:
        """Linear [3] and angular [3] velocity, base frame."""
        ...

    def apply(self, force: np.ndarray, torque: np.ndarray, dt: float) -> None:
        """Advance by dt under this wrench (base frame)."""
        ...

    def stop(self) -> None:
        """Zero the velocity (a reflex brakes the arm)."""
        ...


class FreeBody:
    """A rigid body without gravity (the controller compensates it): semi-implicit Euler."""

    def __init__(self, position: np.ndarray, orientation: np.ndarray, mass: float, inertia: float) -> None:
        self._p = np.array(position, dtype=np.float64)
        self._q = R.normalize(np.array(orientation, dtype=np.float64))
        self._v = np.zeros(3)
        self._w = np.zeros(3)
        self._mass = mass
        self._inertia = inertia

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self._p.copy(), self._q.copy()

    def twist(self) -> tuple[np.ndarray, np.ndarray]:
        return self._v.copy(), self._w.copy()

    def apply(self, force: np.ndarray, torque: np.ndarray, dt: float) -> None:
        self._v = self._v + force / self._mass * dt
        self._w = self._w + torque / self._inertia * dt
        self._p = self._p + self._v * dt
        self._q = R.normalize(R.mul(R.from_rotvec(self._w * dt), self._q))  # ω in the base frame

    def stop(self) -> None:
        self._v[:] = 0.0
        self._w[:] = 0.0


class ImpedanceArm:
    """Equilibrium in, motion out; reflexes and recovery (see the module docstring)."""

    def __init__(self, config: ImpedanceArmConfig, body: EndEffectorBody) -> None:
        self.cfg = config
        self.body = body
        p, q = body.pose()
        self._target_p, self._target_q = p, q      # last commanded equilibrium
        self._desired_p, self._desired_q = p.copy(), q.copy()  # filtered equilibrium
        self.error = False
        self.equilibria_received = 0
        self.equilibria_ignored = 0
        self.reflexes = 0
        self.recoveries = 0
        self.recoveries_without_error = 0

    # -- inputs ---------------------------------------------------------------------------------
    def set_equilibrium(self, position: np.ndarray, orientation: np.ndarray) -> bool:
        """A new equilibrium pose; ignored (False) during a reflex, as the stopped controller
        does."""
        self.equilibria_received += 1
        if self.error:
            self.equilibria_ignored += 1
            return False
        q = R.normalize(np.asarray(orientation, dtype=np.float64))
        if float(np.dot(q, self._target_q)) < 0.0:  # franka flips into the last hemisphere
            q = -q
        self._target_p = np.asarray(position, dtype=np.float64).copy()
        self._target_q = q
        return True

    def inject_reflex(self) -> None:
        """The robot stops (e.g. a collision reflex) and reports an error until recovered."""
        if not self.error:
            self.reflexes += 1
        self.error = True
        self.body.stop()

    def recover(self) -> None:
        """Error recovery: clears the error; the controller restarts from the current pose.
        A recovery without an error is counted (on the real robot it can swallow the next
        reflex, so the bridge must never send one)."""
        self.recoveries += 1
        if not self.error:
            self.recoveries_without_error += 1
            return
        self.error = False
        p, q = self.body.pose()
        self._target_p, self._target_q = p, q
        self._desired_p, self._desired_q = p.copy(), q.copy()

    # -- physics --------------------------------------------------------------------------------
    def step(self, dt: float) -> None:
        """Advance the arm by dt seconds (split into substeps)."""
        n = max(1, math.ceil(dt / self.cfg.max_substep_s - 1e-9))
        h = dt / n
        for _ in range(n):
            self._substep(h)

    def _substep(self, h: float) -> None:
        if self.error:
            self.body.stop()
            return
        tau = self.cfg.target_filter_time_constant_s
        alpha = 1.0 if tau == 0 else 1.0 - math.exp(-h / tau)
        self._desired_p = self._desired_p + alpha * (self._target_p - self._desired_p)
        self._desired_q = R.slerp(self._desired_q, self._target_q, alpha)
        force, torque = self.wrench()
        self.body.apply(force, torque, h)

    def wrench(self) -> tuple[np.ndarray, np.ndarray]:
        """Spring-damper force and torque toward the filtered equilibrium (base frame)."""
        cfg = self.cfg
        p, q = self.body.pose()
        v, w = self.body.twist()
        kt, kr = cfg.translational_stiffness, cfg.rotational_stiffness
        dt_ = 2.0 * cfg.damping_ratio * math.sqrt(kt * cfg.mass)
        dr = 2.0 * cfg.damping_ratio * math.sqrt(kr * cfg.inertia)
        # Orientation error as a base-frame rotation vector taking the current orientation to
        # the desired one (the short way round).
        err_q = R.mul(self._desired_q, R.conj(q))
        if err_q[0] < 0:
            err_q = -err_q
        force = kt * (self._desired_p - p) - dt_ * v
        torque = kr * R.to_rotvec(err_q) - dr * w
        return force, torque

    @property
    def equilibrium(self) -> tuple[np.ndarray, np.ndarray]:
        """The last accepted (unfiltered) equilibrium."""
        return self._target_p.copy(), self._target_q.copy()
