"""Per-step signals around an injection: what the error classifiers read.

Kept separate from the scene's simulator state: the state is for replay, the trajectory is
evidence of what happened, recorded as the expert ran into the error and as it played out.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from gauntlet.envs.tasks.scene import is_grasped

if TYPE_CHECKING:
    from gauntlet.envs.env import GauntletEnv

SIGNALS = (
    "eef_pos",  # (T, 3) end-effector position, m
    "obj_pos",  # (T, 3) manipulated object position, m
    "obj_quat",  # (T, 4) manipulated object quaternion (w, x, y, z)
    "obj_vel",  # (T, 3) manipulated object linear velocity, m/s
    "target_pos",  # (T, 3) task target position, m
    "gripper_qpos",  # (T, 2) finger joint positions, m
    "gripper_cmd",  # (T,) gripper command the policy sent
    "gripper_applied",  # (T,) gripper command actually executed (differs while stalled)
    "arm_qvel",  # (T, 7) arm joint velocities, rad/s
    "grasped",  # (T,) both fingers touch the object
)


class TrajectoryRecorder:
    """Ring buffer of the last `window` frames, then an unbounded tail after `mark_injection`."""

    def __init__(self, window: int = 10):
        self.pre: deque[dict[str, np.ndarray]] = deque(maxlen=window)
        self.post: list[dict[str, np.ndarray]] = []
        self.injected = False

    def record(self, env: GauntletEnv, gripper_cmd: float) -> None:
        (self.post if self.injected else self.pre).append(signal_frame(env, gripper_cmd))

    def mark_injection(self) -> None:
        self.injected = True

    def arrays(self) -> dict[str, np.ndarray]:
        """{"traj/<signal>": (T, ...) array} plus "traj/inject_index" (first post-injection frame)."""
        frames = list(self.pre) + self.post
        out = {f"traj/{k}": np.stack([f[k] for f in frames]) for k in SIGNALS}
        out["traj/inject_index"] = np.array(len(self.pre))
        return out


def signal_frame(env: GauntletEnv, gripper_cmd: float) -> dict[str, np.ndarray]:
    """The env's SIGNALS now, with the gripper command the policy sent for this step."""
    _, vadr = env._object_joint_adr[env.spec.manipulated]
    applied = env.disturbances.gripper_stall_command if env.disturbances.gripper_stall_steps > 0 else gripper_cmd
    return {
        "eef_pos": env.eef_pos,
        "obj_pos": env.object_pose(env.spec.manipulated)[0],
        "obj_quat": env.object_pose(env.spec.manipulated)[1],
        "obj_vel": np.array(env.sim.data.qvel[vadr : vadr + 3]),
        "target_pos": env.target_pos,
        "gripper_qpos": env.gripper_qpos,
        "gripper_cmd": np.array(float(gripper_cmd)),
        "gripper_applied": np.array(float(applied)),
        "arm_qvel": np.array(env.sim.data.qvel[env._arm_qvel_idx]),
        "grasped": np.array(is_grasped(env)),
    }
