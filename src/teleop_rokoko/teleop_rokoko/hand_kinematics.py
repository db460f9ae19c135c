"""An ORCA-like forward-kinematic hand model for retargeting, and the hand's joint table.

Joint names and ranges come from the hand driver's model file when one is given (so the driver
stays the single source of truth), else from the ORCA v1 right hand's published facts (17
joints, ranges in degrees). The *geometry* below is ours: an approximation of the ORCA hand's
dimensions (palm ~9 cm wrist→MCP, phalanges of 2-4 cm), good enough for key-vector retargeting,
not for collision checking.

Palm frame (shared with the human hand in ``retargeting``): origin at the wrist, +x from the
wrist to the middle finger's base, +y towards the thumb side, +z = x × y (the back of a right
hand). Sign conventions: a positive flexion (``*_mcp``, ``*_pip``, ``thumb_pip``, ``thumb_dip``)
curls towards the palm; a positive finger abduction moves the finger towards the thumb side;
a positive ``thumb_mcp`` swings the thumb under the palm (opposition); a positive ``thumb_abd``
moves it away from the palm plane. The ``wrist`` joint is not retargeted (the arm follows the
glove's wrist); it is commanded at a fixed value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from teleop_rokoko.frames import axis_angle_matrix

__all__ = [
    "FINGER_ORDER",
    "ORCA_V1_RIGHT_RANGES_DEG",
    "HandJoints",
    "HandKinematics",
    "load_hand_joints",
]

ORCA_V1_RIGHT_RANGES_DEG: dict[str, tuple[float, float]] = {
    "thumb_mcp": (-50, 50), "thumb_abd": (-20, 42), "thumb_pip": (-12, 108), "thumb_dip": (-20, 112),
    "index_abd": (-37, 37), "index_mcp": (-20, 95), "index_pip": (-20, 108),
    "middle_abd": (-37, 37), "middle_mcp": (-20, 91), "middle_pip": (-20, 107),
    "ring_abd": (-37, 37), "ring_mcp": (-20, 91), "ring_pip": (-20, 107),
    "pinky_abd": (-37, 37), "pinky_mcp": (-20, 98), "pinky_pip": (-20, 108),
    "wrist": (-50, 30),
}
"""ORCA v1 right hand: joint names in motor order and ranges of motion (degrees)."""

FINGER_ORDER = ("thumb", "index", "middle", "ring", "pinky")
"""Order of the five chains (and of the per-finger points of ``HandKinematics.points``)."""

_MODEL_JOINTS = (
    "thumb_mcp", "thumb_abd", "thumb_pip", "thumb_dip",
    "index_abd", "index_mcp", "index_pip", "middle_abd", "middle_mcp", "middle_pip",
    "ring_abd", "ring_mcp", "ring_pip", "pinky_abd", "pinky_mcp", "pinky_pip",
)
"""The 16 finger joints the kinematic model moves (every hand joint but the wrist)."""


@dataclass(frozen=True)
class HandJoints:
    """The hand's joints: names in command order and their limits (rad)."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate joint names: {self.names}")
        if self.lower.shape != (len(self.names),) or self.upper.shape != (len(self.names),):
            raise ValueError("lower/upper must have one entry per joint")
        if not (np.all(np.isfinite(self.lower)) and np.all(np.isfinite(self.upper))
                and np.all(self.lower < self.upper)):
            raise ValueError("joint limits must be finite with lower < upper")
        missing = [n for n in _MODEL_JOINTS if n not in self.names]
        if missing:
            raise ValueError(f"the hand model lacks joints the retargeting drives: {missing}")

    def index(self, name: str) -> int:
        return self.names.index(name)

    def clamp(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q, self.lower, self.upper)


def _ranges_from_table(table: Mapping[str, object], names: list[str], unit_deg: bool) -> HandJoints:
    lower, upper = [], []
    for name in names:
        lo_hi = table[name]
        if not (isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2):
            raise ValueError(f"range of {name!r} must be [lower, upper], got {lo_hi!r}")
        lo, hi = (float(v) for v in lo_hi)
        scale = math.pi / 180.0 if unit_deg else 1.0
        lower.append(lo * scale)
        upper.append(hi * scale)
    return HandJoints(tuple(names), np.array(lower), np.array(upper))


def load_hand_joints(path: str | Path | None = None) -> HandJoints:
    """Joint names and limits from a hand model YAML file (None / '': ORCA v1 right facts).

    Accepted layouts: the hand driver's (``joints: [{name, range_deg: [lo, hi], ...}]``),
    orca_core's (``joint_ids: [...]`` + ``joint_roms: {name: [lo, hi]}``, degrees), or
    ``joints: [{name, min_deg, max_deg}]`` / ``[{name, lower, upper}]`` (rad).
    """
    if not path:
        names = list(ORCA_V1_RIGHT_RANGES_DEG)
        return _ranges_from_table(ORCA_V1_RIGHT_RANGES_DEG, names, unit_deg=True)
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    if "joint_ids" in data and "joint_roms" in data:
        return _ranges_from_table(data["joint_roms"], list(data["joint_ids"]), unit_deg=True)
    joints = data.get("joints")
    if isinstance(joints, list) and joints and all(isinstance(j, dict) for j in joints):
        names = [str(j["name"]) for j in joints]
        if all("range_deg" in j for j in joints):  # the orca_hand_driver hand model files
            return _ranges_from_table({str(j["name"]): j["range_deg"] for j in joints}, names, unit_deg=True)
        if all("min_deg" in j and "max_deg" in j for j in joints):
            table = {str(j["name"]): [j["min_deg"], j["max_deg"]] for j in joints}
            return _ranges_from_table(table, names, unit_deg=True)
        if all("lower" in j and "upper" in j for j in joints):
            table = {str(j["name"]): [j["lower"], j["upper"]] for j in joints}
            return _ranges_from_table(table, names, unit_deg=False)
    raise ValueError(f"{path}: no joint table found (expected joints: [{{name, range_deg}}], "
                     "joint_ids + joint_roms, or joints: [{name, min_deg, max_deg}] / [{name, lower, upper}])")


# --- geometry (metres) --------------------------------------------------------------------------
# Finger bases (the abduction joints) in the palm frame, then link lengths: abduction → MCP axis,
# proximal phalanx (MCP → PIP), fingertip assembly (PIP → tip). Close to the ORCA hand's size.
_FINGER_GEOMETRY = {
    "index": ((0.078, 0.026, 0.0), (0.019, 0.038, 0.036)),
    "middle": ((0.083, 0.0, 0.0), (0.020, 0.040, 0.038)),
    "ring": ((0.077, -0.021, 0.0), (0.020, 0.040, 0.036)),
    "pinky": ((0.068, -0.040, 0.0), (0.018, 0.031, 0.032)),
}
_THUMB_BASE = (0.022, 0.024, -0.012)
_THUMB_LINKS = (0.042, 0.033, 0.030)  # CMC → MCP, MCP → IP, IP → tip
# Thumb rest direction: 45° out from the fingers in the palm plane, rolled so that its
# flexion curls towards the index finger and the palm (as a human thumb does).
_THUMB_REST = axis_angle_matrix((0.0, 0.0, 1.0), math.radians(45.0)) @ axis_angle_matrix(
    (1.0, 0.0, 0.0), math.radians(-60.0))

_X, _Y, _Z = np.eye(3)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a × b along the last axis (np.cross is several times slower on these tiny arrays)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


class HandKinematics:
    """Forward kinematics and point Jacobians of the ORCA-like hand (16 finger joints).

    ``points(q)`` gives, per finger (``FINGER_ORDER``), the middle point (finger: PIP joint;
    thumb: IP joint) and the fingertip in the palm frame: ``[10, 3]`` = 5 middles then 5 tips.
    ``points_and_jacobian(q)`` adds d(points)/dq ``[10, 3, J]`` (analytic: for a revolute joint
    with world axis a at o, a downstream point p moves as a × (p − o)).

    Fingers: abduction about the palm normal at the finger base, then a link to the MCP axis,
    the proximal phalanx to the PIP axis and the fingertip assembly (both flexion axes parallel).
    Thumb: the base swing ``thumb_mcp`` about −x of the palm, a fixed rest rotation, ``thumb_abd``
    about the thumb's own z, a link to ``thumb_pip``, a phalanx to ``thumb_dip``, the tip. Closed
    form and vectorised over the four fingers: ~60 µs per evaluation, which is what lets the
    solver run a few Gauss-Newton steps per glove frame.
    """

    def __init__(self, joints: HandJoints):
        self.joints = joints
        self.num_joints = len(joints.names)
        ix = joints.index
        fingers = FINGER_ORDER[1:]
        self._abd = np.array([ix(f"{f}_abd") for f in fingers])
        self._mcp = np.array([ix(f"{f}_mcp") for f in fingers])
        self._pip = np.array([ix(f"{f}_pip") for f in fingers])
        self._base = np.array([_FINGER_GEOMETRY[f][0] for f in fingers])  # [4, 3]
        lengths = np.array([_FINGER_GEOMETRY[f][1] for f in fingers])      # [4, 3]
        self._l0, self._l1, self._l2 = lengths[:, 0:1], lengths[:, 1:2], lengths[:, 2:3]
        self._thumb = [ix(n) for n in ("thumb_mcp", "thumb_abd", "thumb_pip", "thumb_dip")]
        self._thumb_base = np.array(_THUMB_BASE)
        self.model_joint_indices = np.array([ix(n) for n in _MODEL_JOINTS])
        """Indices (into the joint table) of the joints this model moves."""

    def points_and_jacobian(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(q, dtype=np.float64)
        points = np.zeros((10, 3))
        jac = np.zeros((10, 3, self.num_joints))
        # -- fingers (vectorised over index, middle, ring, pinky) --
        a, m, p = q[self._abd], q[self._mcp], q[self._pip]
        ca, sa = np.cos(a)[:, None], np.sin(a)[:, None]
        zeros = np.zeros_like(ca)
        along0 = np.hstack([ca, sa, zeros])                                    # Rz(a)·x
        mp = m + p
        along1 = np.hstack([ca * np.cos(m)[:, None], sa * np.cos(m)[:, None], -np.sin(m)[:, None]])
        along2 = np.hstack([ca * np.cos(mp)[:, None], sa * np.cos(mp)[:, None], -np.sin(mp)[:, None]])
        flex_axis = np.hstack([-sa, ca, zeros])                                # Rz(a)·y
        p_mcp = self._base + self._l0 * along0
        p_pip = p_mcp + self._l1 * along1
        p_tip = p_pip + self._l2 * along2
        points[1:5], points[6:10] = p_pip, p_tip
        rows = np.arange(4)
        for slot, pt in ((1, p_pip), (6, p_tip)):
            rel = pt - self._base  # abduction about +z at the base: z × rel
            jac[slot + rows, 0, self._abd] = -rel[:, 1]
            jac[slot + rows, 1, self._abd] = rel[:, 0]
            jac[slot + rows, :, self._mcp] = _cross(flex_axis, pt - p_mcp)
        jac[6 + rows, :, self._pip] = _cross(flex_axis, p_tip - p_pip)
        # -- thumb --
        j_swing, j_abd, j_pip, j_dip = self._thumb
        swing = axis_angle_matrix(-_X, q[j_swing])
        frame = swing @ _THUMB_REST @ axis_angle_matrix(_Z, q[j_abd])
        x_t, y_t, z_t = frame[:, 0], frame[:, 1], frame[:, 2]
        f1, f12 = q[j_pip], q[j_pip] + q[j_dip]
        c0 = self._thumb_base
        t_mcp = c0 + _THUMB_LINKS[0] * x_t
        t_ip = t_mcp + _THUMB_LINKS[1] * (np.cos(f1) * x_t - np.sin(f1) * z_t)
        t_tip = t_ip + _THUMB_LINKS[2] * (np.cos(f12) * x_t - np.sin(f12) * z_t)
        points[0], points[5] = t_ip, t_tip
        for slot, pt in ((0, t_ip), (5, t_tip)):
            jac[slot, :, j_swing] = _cross(-_X, pt - c0)
            jac[slot, :, j_abd] = _cross(z_t, pt - c0)
            jac[slot, :, j_pip] = _cross(y_t, pt - t_mcp)
        jac[5, :, j_dip] = _cross(y_t, t_tip - t_ip)
        return points, jac

    def points(self, q: np.ndarray) -> np.ndarray:
        return self.points_and_jacobian(q)[0]
