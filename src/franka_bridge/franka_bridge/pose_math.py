"""Pose arithmetic of the bridge: positions ``[3]`` (m) and unit quaternions ``[4]`` (w, x, y, z).

The quaternion order is the one of the project's arrays (w first; geometry_msgs stores the
same four numbers as named fields). Hamilton convention, as scipy's ``Rotation`` (the tests'
independent reference) and Eigen (franka's controllers) use. The arithmetic is written out on
numpy arrays: scipy 1.17's ``Rotation`` costs tens of microseconds per construction, which
made one command cost milliseconds.

Action convention (the paper's, appendix E3: "relative positions of the end effector within the
current pose frame"): a delta ``(dp, dR)`` is expressed in the current end-effector frame, so
applied to a pose ``(p, R)`` it gives ``p' = p + R·dp`` and ``R' = R·dR``.
"""

from __future__ import annotations

import math

import numpy as np

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


def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw])


def _conj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # written out: np.cross costs ~40 us per call on 3-vectors (axis handling)
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    u = q[1:]
    t = 2.0 * _cross(u, v)
    return v + q[0] * t + _cross(u, t)


def _normalized(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, dtype=np.float64) / math.sqrt(float(np.dot(q, q)))


def _to_rotvec(q: np.ndarray) -> np.ndarray:
    """Rotation vector (angle in [0, π]) of a unit quaternion."""
    if q[0] < 0:
        q = -q
    s = math.sqrt(float(np.dot(q[1:], q[1:])))
    if s < 1e-12:
        return 2.0 * q[1:]
    return (2.0 * math.atan2(s, float(q[0])) / s) * q[1:]


def _from_rotvec(r: np.ndarray) -> np.ndarray:
    theta = math.sqrt(float(np.dot(r, r)))
    if theta < 1e-12:
        return _normalized(np.array([1.0, 0.5 * r[0], 0.5 * r[1], 0.5 * r[2]]))
    k = math.sin(0.5 * theta) / theta
    return np.array([math.cos(0.5 * theta), k * r[0], k * r[1], k * r[2]])


def quaternion_norm_error(q: np.ndarray) -> float:
    """``| ‖q‖ − 1 |``: how far a quaternion is from unit length."""
    return abs(float(np.linalg.norm(q)) - 1.0)


def rotation_angle(q: np.ndarray) -> float:
    """Angle (rad, in [0, π]) of the rotation a quaternion represents."""
    q = _normalized(q)
    return 2.0 * math.atan2(math.sqrt(float(np.dot(q[1:], q[1:]))), abs(float(q[0])))


def compose(p: np.ndarray, q: np.ndarray, dp: np.ndarray, dq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a delta given in the frame of pose ``(p, q)``: ``(p + R·dp, R·dR)``."""
    q, dq = _normalized(q), _normalized(dq)
    return np.asarray(p, dtype=np.float64) + _rotate(q, np.asarray(dp, dtype=np.float64)), _mul(q, dq)


def relative(p_base: np.ndarray, q_base: np.ndarray, p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The delta, in the frame of ``(p_base, q_base)``, that ``compose`` turns into ``(p, q)``."""
    inv = _conj(_normalized(q_base))
    return _rotate(inv, np.asarray(p, dtype=np.float64) - p_base), _mul(inv, _normalized(q))


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
    rotvec = _to_rotvec(_normalized(dq))  # the short way: angle in [0, π]
    angle = math.sqrt(float(np.dot(rotvec, rotvec)))
    if angle > max_rotation:
        rotvec = rotvec * (max_rotation / angle)
        clipped = True
    return dp, _from_rotvec(rotvec), clipped


def clip_to_workspace(p: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, bool]:
    """Clamp a position into the axis-aligned box ``[low, high]``; ``(p, clipped)``."""
    clamped = np.clip(p, low, high)
    return clamped, bool(np.any(clamped != p))


def clip_to_cone(q: np.ndarray, q_reference: np.ndarray, max_angle: float) -> tuple[np.ndarray, bool]:
    """Limit the orientation ``q`` to a cone of half-angle ``max_angle`` around ``q_reference``:
    beyond it, ``q`` is moved back along the shortest rotation from the reference (slerp), so
    the result lies on the cone's boundary. ``(q, clipped)``."""
    q_ref = _normalized(q_reference)
    rotvec = _to_rotvec(_mul(_conj(q_ref), _normalized(q)))  # reference -> q, the short way
    angle = math.sqrt(float(np.dot(rotvec, rotvec)))
    if angle <= max_angle:
        return np.asarray(q, dtype=np.float64), False
    return _mul(q_ref, _from_rotvec(rotvec * (max_angle / angle))), True


def hemisphere_aligned(q: np.ndarray, q_last: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """``q`` or ``-q`` (the same rotation), whichever has a non-negative dot product with the
    last published quaternion: a controller that interpolates or filters quaternion components
    would otherwise swing the long way round. ``(q, flipped)``."""
    q = np.asarray(q, dtype=np.float64)
    if q_last is not None and float(np.dot(q, q_last)) < 0.0:
        return -q, True
    return q, False
