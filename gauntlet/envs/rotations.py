"""Rotation conversions (quaternions, matrices, axis-angle, headings) that never modify their inputs.

robosuite's `quat2axisangle` clips `quat[3]` in place, which silently corrupts a caller's array
(e.g. an observation buffer that is later logged); these functions copy first.
"""

from __future__ import annotations

import numpy as np


def quat_xyzw_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion in (x, y, z, w) order -> (..., 3) axis-angle. Input is left untouched."""
    q = np.array(quat, dtype=np.float64, copy=True)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    q = q / np.where(norm > 0, norm, 1.0)
    # Pick the hemisphere with w >= 0 so the angle lies in [0, pi].
    q = np.where(q[..., 3:4] < 0, -q, q)
    w = np.clip(q[..., 3], -1.0, 1.0)
    angle = 2.0 * np.arccos(w)  # (...,)
    sin_half = np.sqrt(np.maximum(1.0 - w * w, 0.0))
    safe = sin_half > 1e-8
    axis = np.where(safe[..., None], q[..., :3] / np.where(safe, sin_half, 1.0)[..., None], 0.0)
    return axis * angle[..., None]


def quat_wxyz_to_xyzw(quat: np.ndarray) -> np.ndarray:
    """MuJoCo stores (w, x, y, z); robosuite and our observations use (x, y, z, w)."""
    q = np.asarray(quat)
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def yaw_quat_wxyz(yaw: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of a rotation by `yaw` radians about +z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quat_mul_wxyz(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a*b for (w, x, y, z) quaternions."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def quat_wxyz_to_mat(q: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix of a (w, x, y, z) quaternion (normalised first)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def mat_to_axis_angle(r: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix; robust near 0 and pi (where the OSC error lives)."""
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    if angle < 1e-6:
        return np.zeros(3)
    if angle > np.pi - 1e-3:
        # sin(angle) ~ 0: read the axis from the symmetric part instead.
        axis = np.sqrt(np.maximum((np.diag(r) + 1.0) / 2.0, 0.0))
        k = int(np.argmax(axis))
        signs = np.sign(r[k] + r[:, k])
        signs[k] = 1.0
        axis = axis * signs
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2.0 * np.sin(angle))
    return axis * angle


def wrap_angle(a: float, period: float = 2 * np.pi) -> float:
    """`a` mapped into [-period/2, period/2): the smallest rotation equivalent under the symmetry."""
    return float((a + period / 2) % period - period / 2)


def object_yaw(quat_wxyz: np.ndarray) -> float:
    """Heading of an object's local x axis (valid while it rests flat)."""
    r = quat_wxyz_to_mat(quat_wxyz)
    return float(np.arctan2(r[1, 0], r[0, 0]))


def object_tilt(quat_wxyz: np.ndarray) -> float:
    """Angle (rad) between an object's local z axis and world up."""
    return float(np.arccos(np.clip(quat_wxyz_to_mat(quat_wxyz)[2, 2], -1.0, 1.0)))
