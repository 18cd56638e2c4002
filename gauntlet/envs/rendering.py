"""OpenGL backend selection for MuJoCo, done before `mujoco` is first imported.

Headless machines render through EGL (Mesa on a CPU, the NVIDIA driver on a GPU). On a GPU machine
the EGL device must be one of the CUDA devices this process may use, otherwise every Ray worker
renders on GPU 0; so the EGL device id is derived from `CUDA_VISIBLE_DEVICES`.
"""

from __future__ import annotations

import logging
import os


def configure_gl() -> None:
    """Sets MUJOCO_GL/PYOPENGL_PLATFORM/MUJOCO_EGL_DEVICE_ID unless the user already chose."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        first = visible.split(",")[0].strip() if visible else ""
        if first.isdigit() and "MUJOCO_EGL_DEVICE_ID" not in os.environ:
            os.environ["MUJOCO_EGL_DEVICE_ID"] = first
    # robosuite prints setup hints at import time that are irrelevant here.
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)


def egl_device_id() -> int:
    """The render device robosuite should use (-1: let EGL pick, e.g. Mesa on a CPU)."""
    value = os.environ.get("MUJOCO_EGL_DEVICE_ID", "")
    return int(value) if value.isdigit() else -1


def render_on_gpus(gpu_ids: list) -> None:
    """Renders on the first of the GPUs Ray assigned to this process (`ray.get_gpu_ids()`), so that
    rollout actors given a share of a GPU each (`gauntlet eval --actor-gpus`) spread their EGL
    contexts over the machine's GPUs instead of all rendering on GPU 0. No GPUs: unchanged."""
    if gpu_ids and os.environ.get("MUJOCO_GL", "egl") == "egl":
        os.environ["MUJOCO_EGL_DEVICE_ID"] = str(gpu_ids[0])
