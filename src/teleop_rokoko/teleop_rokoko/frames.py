"""Rotations and the change from Studio Live's world frame to a right-handed Z-up frame.

Rokoko Studio Live streams Unity-convention coordinates: metres, Y up, **left-handed** (the
actor faces +Z, +X is to the actor's right). Rokoko's own Blender plug-in maps a Studio point
(x, y, z) to Blender's right-handed Z-up frame as (-x, -z, y), a reflection (determinant -1),
which is what gives the handedness away. We map Studio into a right-handed, Z-up "glove world"
frame (REP-103 style: +x forward = the actor's facing direction, +y left, +z up):

    p_world = M · p_studio,   M = [[0, 0, 1], [-1, 0, 0], [0, 1, 0]]   (det M = -1)

A Studio rotation matrix R_s (rotating bone axes into Studio axes) becomes M · R_s · Mᵀ, a proper
rotation again. Quaternions here are (x, y, z, w) like Studio's JSON unless a name says wxyz.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "STUDIO_TO_WORLD",
    "axis_angle_matrix",
    "clamp_rotation_angle",
    "matrix_to_quat_wxyz",
    "quat_xyzw_to_matrix",
    "rotation_angle",
    "rotvec",
    "studio_position_to_world",
    "studio_rotation_to_world",
    "world_position_to_studio",
    "world_rotation_to_studio",
    "yaw_matrix",
]

STUDIO_TO_WORLD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
"""Studio (left-handed, Y-up) → glove world (right-handed, Z-up); a reflection."""


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) → 3×3 rotation matrix (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat_wxyz(m: np.ndarray) -> np.ndarray:
    """3×3 rotation matrix → unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = np.asarray(m, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = np.array([(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s])
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = np.array([(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = np.array([(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s])
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by ``angle`` (rad) about ``axis`` (normalised here), Rodrigues' formula."""
    axis = np.asarray(axis, dtype=np.float64)
    x, y, z = axis / np.linalg.norm(axis)
    c, s = np.cos(angle), np.sin(angle)
    t = 1.0 - c
    return np.array([
        [c + x * x * t, x * y * t - z * s, x * z * t + y * s],
        [y * x * t + z * s, c + y * y * t, y * z * t - x * s],
        [z * x * t - y * s, z * y * t + x * s, c + z * z * t],
    ])


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about +z by ``yaw`` (rad)."""
    return axis_angle_matrix(np.array([0.0, 0.0, 1.0]), yaw)


def rotation_angle(m: np.ndarray) -> float:
    """Angle (rad, in [0, π]) of a rotation matrix."""
    return float(np.arccos(np.clip((np.trace(m) - 1.0) / 2.0, -1.0, 1.0)))


def rotvec(m: np.ndarray) -> np.ndarray:
    """Rotation matrix → rotation vector (axis · angle)."""
    angle = rotation_angle(m)
    if angle < 1e-9:
        return np.zeros(3)
    if np.pi - angle < 1e-6:
        # Near π the antisymmetric part vanishes; the axis is the eigenvector of eigenvalue 1.
        w, v = np.linalg.eigh((m + m.T) / 2.0)
        return v[:, int(np.argmax(w))] * angle
    axis = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / (2.0 * np.sin(angle))
    return axis * angle


def clamp_rotation_angle(m: np.ndarray, max_angle: float) -> np.ndarray:
    """The same rotation axis with the angle limited to ``max_angle`` (rad)."""
    v = rotvec(m)
    angle = float(np.linalg.norm(v))
    if angle <= max_angle:
        return m
    return axis_angle_matrix(v / angle, max_angle)


def studio_position_to_world(p: np.ndarray) -> np.ndarray:
    return STUDIO_TO_WORLD @ np.asarray(p, dtype=np.float64)


def studio_rotation_to_world(r_studio: np.ndarray) -> np.ndarray:
    return STUDIO_TO_WORLD @ r_studio @ STUDIO_TO_WORLD.T


def world_position_to_studio(p: np.ndarray) -> np.ndarray:
    return STUDIO_TO_WORLD.T @ np.asarray(p, dtype=np.float64)


def world_rotation_to_studio(r_world: np.ndarray) -> np.ndarray:
    return STUDIO_TO_WORLD.T @ r_world @ STUDIO_TO_WORLD
