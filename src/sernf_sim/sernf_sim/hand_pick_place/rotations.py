"""Vectorized quaternion helpers (w, x, y, z; Hamilton convention, as MuJoCo uses).

All functions take arrays with any leading axes and a trailing axis of 4 (quaternions) or 3
(vectors), and return float64 arrays.
"""

from __future__ import annotations

import numpy as np

IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])


def normalize(q: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Unit quaternions; a (near-)zero quaternion becomes the identity."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    out = q / np.maximum(n, eps)
    return np.where(n > eps, out, IDENTITY)


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a ⊗ b`` (apply ``b`` first, then ``a`` when rotating vectors)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def conj(q: np.ndarray) -> np.ndarray:
    """Conjugate (= inverse for unit quaternions)."""
    q = np.asarray(q, dtype=np.float64)
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]``; columns are the rotated frame's axes in the world."""
    w, x, y, z = np.moveaxis(normalize(q), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors ``v`` by quaternions ``q``."""
    return np.einsum("...ij,...j->...i", to_matrix(q), np.asarray(v, dtype=np.float64))


def from_axis_angle(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Quaternion of a rotation by ``angle`` (rad) about ``axis`` (need not be unit)."""
    axis = np.asarray(axis, dtype=np.float64)
    angle = np.asarray(angle, dtype=np.float64)
    n = np.linalg.norm(axis, axis=-1, keepdims=True)
    u = axis / np.maximum(n, 1e-12)
    half = 0.5 * angle[..., None]
    return np.concatenate([np.cos(half), np.sin(half) * u], axis=-1)


def to_rotvec(q: np.ndarray) -> np.ndarray:
    """Rotation vector (axis × angle, angle in [0, π]) of unit quaternions."""
    q = normalize(q)
    q = np.where(q[..., :1] < 0, -q, q)  # shortest rotation
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    # angle / s → 2 as s → 0 (small-angle limit), avoiding 0/0.
    scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-12), 2.0)
    return v * scale


def from_rotvec(r: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_rotvec`."""
    r = np.asarray(r, dtype=np.float64)
    angle = np.linalg.norm(r, axis=-1)
    return from_axis_angle(np.where(angle[..., None] > 1e-12, r, [1.0, 0.0, 0.0]), angle)


def angle(q: np.ndarray) -> np.ndarray:
    """Rotation angle in [0, π] of unit quaternions."""
    return np.linalg.norm(to_rotvec(q), axis=-1)


def slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Spherical interpolation from ``q0`` (t=0) to ``q1`` (t=1) along the shorter arc."""
    q0 = normalize(q0)
    q1 = normalize(q1)
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    rel = mul(conj(q0), q1)
    t = np.asarray(t, dtype=np.float64)
    r = to_rotvec(rel) * (t[..., None] if t.ndim else t)
    return normalize(mul(q0, from_rotvec(r)))


def yaw_of_down_frame(q: np.ndarray) -> np.ndarray:
    """Heading (rad) of a frame's x axis projected on the world xy plane."""
    x_axis = to_matrix(q)[..., :, 0]
    return np.arctan2(x_axis[..., 1], x_axis[..., 0])


def from_yaw(yaw: np.ndarray) -> np.ndarray:
    """Rotation about world z by ``yaw``."""
    yaw = np.asarray(yaw, dtype=np.float64)
    return from_axis_angle(np.broadcast_to([0.0, 0.0, 1.0], (*yaw.shape, 3)), yaw)
