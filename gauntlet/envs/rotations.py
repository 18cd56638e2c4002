"""Rotation conversions that never modify their inputs.

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


def yaw_of_quat_wxyz(quat: np.ndarray) -> float:
    """Heading (rotation about +z) of a (w, x, y, z) quaternion."""
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
