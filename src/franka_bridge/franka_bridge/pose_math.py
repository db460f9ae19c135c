"""Pose arithmetic of the bridge: positions ``[3]`` (m) and unit quaternions ``[4]`` (w, x, y, z).

The quaternion order is the one of the messages (geometry_msgs stores x, y, z, w fields; the
project's arrays put w first everywhere). scipy's ``Rotation`` is given ``scalar_first=True``.

Action convention (the paper's, appendix E3: "relative positions of the end effector within the
current pose frame"): a delta ``(dp, dR)`` is expressed in the current end-effector frame, so
applied to a pose ``(p, R)`` it gives ``p' = p + R·dp`` and ``R' = R·dR``.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

__all__ = [
    "clip_delta",
    "clip_to_cone",
    "clip_to_workspace",
    "compose",
    "hemisphere_aligned",
    "quaternion_norm_error",
    "relative",
    "rotation_angle",
]


def _rot(q: np.ndarray) -> Rotation:
    return Rotation.from_quat(np.asarray(q, dtype=np.float64), scalar_first=True)


def _quat(r: Rotation) -> np.ndarray:
    return r.as_quat(canonical=False, scalar_first=True)


def quaternion_norm_error(q: np.ndarray) -> float:
    """``| ‖q‖ − 1 |``: how far a quaternion is from unit length."""
    return abs(float(np.linalg.norm(q)) - 1.0)


def rotation_angle(q: np.ndarray) -> float:
    """Angle (rad, in [0, π]) of the rotation a quaternion represents."""
    return float(_rot(q).magnitude())


def compose(p: np.ndarray, q: np.ndarray, dp: np.ndarray, dq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a delta given in the frame of pose ``(p, q)``: ``(p + R·dp, R·dR)``."""
    r = _rot(q)
    return np.asarray(p, dtype=np.float64) + r.apply(dp), _quat(r * _rot(dq))


def relative(p_base: np.ndarray, q_base: np.ndarray, p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The delta, in the frame of ``(p_base, q_base)``, that ``compose`` turns into ``(p, q)``."""
    r_inv = _rot(q_base).inv()
    return r_inv.apply(np.asarray(p, dtype=np.float64) - p_base), _quat(r_inv * _rot(q))


def clip_delta(dp: np.ndarray, dq: np.ndarray, max_translation: float, max_rotation: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """Scale a delta down to the per-command limits, keeping its direction and rotation axis.

    Returns ``(dp, dq, clipped)``; ``dq`` comes back normalized with ``w >= 0`` (the same
    rotation; the short way round)."""
    dp = np.asarray(dp, dtype=np.float64)
    clipped = False
    length = float(np.linalg.norm(dp))
    if length > max_translation:
        dp = dp * (max_translation / length)
        clipped = True
    rotvec = _rot(dq).as_rotvec()  # scipy takes the short way: angle in [0, π]
    angle = float(np.linalg.norm(rotvec))
    if angle > max_rotation:
        rotvec = rotvec * (max_rotation / angle)
        clipped = True
    return dp, _quat(Rotation.from_rotvec(rotvec)), clipped


def clip_to_workspace(p: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, bool]:
    """Clamp a position into the axis-aligned box ``[low, high]``; ``(p, clipped)``."""
    clamped = np.clip(p, low, high)
    return clamped, bool(np.any(clamped != p))


def clip_to_cone(q: np.ndarray, q_reference: np.ndarray, max_angle: float) -> tuple[np.ndarray, bool]:
    """Limit the orientation ``q`` to a cone of half-angle ``max_angle`` around ``q_reference``:
    beyond it, ``q`` is moved back along the shortest rotation from the reference (slerp), so
    the result lies on the cone's boundary. ``(q, clipped)``."""
    r_ref, r = _rot(q_reference), _rot(q)
    angle = float((r_ref.inv() * r).magnitude())
    if angle <= max_angle:
        return np.asarray(q, dtype=np.float64), False
    fraction = max_angle / angle
    pair = Rotation.concatenate([r_ref, r])
    return _quat(Slerp([0.0, 1.0], pair)([fraction])[0]), True


def hemisphere_aligned(q: np.ndarray, q_last: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """``q`` or ``-q`` (the same rotation), whichever has a non-negative dot product with the
    last published quaternion: a controller that interpolates or filters quaternion components
    would otherwise swing the long way round. ``(q, flipped)``."""
    q = np.asarray(q, dtype=np.float64)
    if q_last is not None and float(np.dot(q, q_last)) < 0.0:
        return -q, True
    return q, False
