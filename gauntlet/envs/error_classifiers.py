"""Three independent rule-based error classifiers.

Each reads a different slice of the recorded trajectory (see trajectory.SIGNALS), the way three
annotators with different instruments would, and names the error it thinks happened (an error type,
or "none"). Evaluation reports measure how much they agree (Fleiss' / Cohen's kappa); they are not
meant to be perfect, and none of them is given the true label. A new error type needs no rule here:
until one is written, the classifiers label its scenes with what they resemble, or "none".

- motion:  positions only (end effector, object, target, fingers): what a tracker on video sees.
- grasp:   grasp contacts, finger opening and the object's pose in the hand and its velocity.
- command: what the controller was told versus what it executed, and joint/object velocities.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gauntlet.envs.injectors import NOMINAL
from gauntlet.runtime.registry import Registry

Signals = dict[str, np.ndarray]  # signal name (trajectory.SIGNALS) -> (T, ...) frames


def _halves(traj: dict[str, np.ndarray]) -> tuple[Signals, Signals]:
    """Each recorded signal split into its frames before and from the injection on."""
    i = int(traj["traj/inject_index"])
    signals = {k[len("traj/"):]: np.asarray(v) for k, v in traj.items()
               if k.startswith("traj/") and k != "traj/inject_index"}
    return {k: v[:i] for k, v in signals.items()}, {k: v[i:] for k, v in signals.items()}


def classify_motion(traj: dict[str, np.ndarray]) -> str:
    pre, post = _halves(traj)
    eef_pre, eef_post = pre["eef_pos"], post["eef_pos"]
    obj_pre, obj_post = pre["obj_pos"], post["obj_pos"]
    if len(obj_pre) == 0 or len(obj_post) == 0:
        return NOMINAL
    if np.linalg.norm(post["target_pos"][0] - pre["target_pos"][-1]) > 0.02:
        return "target_shift"
    jump = obj_post[0] - obj_pre[-1]  # no time passes between these two frames
    in_hand = np.linalg.norm(obj_pre[-1] - eef_pre[-1]) < 0.05
    if np.linalg.norm(jump) > 0.005:
        if jump[2] < -0.005 and np.linalg.norm(jump[:2]) < 0.005 and in_hand:
            return "grasp_slip"
        opening_pre = pre["gripper_qpos"][-1, 0] - pre["gripper_qpos"][-1, 1]
        opening_end = post["gripper_qpos"][-1, 0] - post["gripper_qpos"][-1, 1]
        return "missed_grasp" if opening_end < opening_pre - 0.005 else "object_pose_perturb"
    if in_hand and obj_post[-1, 2] < obj_pre[-1, 2] - 0.02 and eef_post[-1, 2] > eef_pre[-1, 2] - 0.02:
        return "drop"
    eef_move = eef_post[min(3, len(eef_post) - 1)] - eef_post[0]
    obj_move = obj_post[-1] - obj_post[0]
    if not in_hand and np.linalg.norm(obj_move[:2]) > 0.02:
        return "object_push"
    if np.linalg.norm(eef_move) > 0.03:
        horizontal = np.linalg.norm(eef_move[:2]) / (np.linalg.norm(eef_move) + 1e-9)
        return "collision_nudge" if horizontal > 0.9 else "robot_joint_push"
    return NOMINAL


def classify_grasp(traj: dict[str, np.ndarray]) -> str:
    pre, post = _halves(traj)
    g_pre, g_post = pre["grasped"], post["grasped"]
    if len(g_pre) == 0 or len(g_post) == 0:
        return NOMINAL
    held_before = bool(g_pre[-1])
    held_after = bool(g_post[-1])
    opening = post["gripper_qpos"][:, 0] - post["gripper_qpos"][:, 1]  # (T_post,) finger gap
    rel_pre = pre["obj_pos"][-1] - pre["eef_pos"][-1]
    rel_post = post["obj_pos"][0] - post["eef_pos"][0]
    if held_before and rel_post[2] < rel_pre[2] - 0.008:
        return "grasp_slip"
    if held_before and not held_after and opening[-1] > opening[0] + 0.005:
        return "drop"
    if np.linalg.norm(post["target_pos"][-1] - pre["target_pos"][-1]) > 0.02:
        return "target_shift"
    if not held_before and not held_after and opening[-1] < 0.012 and opening[-1] < opening[0]:
        return "missed_grasp"
    vel_pre, vel_post = pre["obj_vel"], post["obj_vel"]
    if not held_before and np.abs(vel_post[0, :2]).max() > 0.2 and np.abs(vel_pre[-1, :2]).max() < 0.1:
        return "object_push"
    if np.linalg.norm(rel_post - rel_pre) > 0.01 and not held_before:
        return "object_pose_perturb"
    if np.ptp(opening) < 1e-3 and held_before == held_after and np.ptp(pre["gripper_qpos"][:, 0]) > 2e-3:
        return "gripper_stall"
    if np.linalg.norm(post["eef_pos"][-1] - post["eef_pos"][0]) > 0.03:
        return "robot_joint_push"
    return NOMINAL


def classify_command(traj: dict[str, np.ndarray]) -> str:
    pre, post = _halves(traj)
    cmd_post, app_post = post["gripper_cmd"], post["gripper_applied"]
    vel_pre, vel_post = pre["obj_vel"], post["obj_vel"]
    if len(cmd_post) == 0 or len(pre["gripper_cmd"]) == 0:
        return NOMINAL
    overridden = cmd_post != app_post  # (T_post,) the controller did not do what it was told
    if overridden.any():
        forced = app_post[overridden]
        told = cmd_post[overridden]
        if np.all(forced < 0) and np.all(told > 0):
            return "drop"
        if np.all(forced > 0) and overridden.sum() >= 6 and np.abs(vel_post[0] - vel_pre[-1]).max() < 0.05:
            return "gripper_stall"
        if np.all(forced > 0):
            return "missed_grasp"
        return "gripper_stall"
    dq = np.linalg.norm(post["arm_qvel"][0] - pre["arm_qvel"][-1])
    if dq > 0.25:
        return "robot_joint_push"
    dv = np.linalg.norm(vel_post[0, :2] - vel_pre[-1, :2])
    if dv > 0.2:
        return "object_push"
    return NOMINAL


# label column -> classifier, in the order the scene table's label columns are written
CLASSIFIERS: Registry[Callable[[dict[str, np.ndarray]], str]] = Registry("error classifier")
CLASSIFIERS.register("motion", classify_motion)
CLASSIFIERS.register("grasp", classify_grasp)
CLASSIFIERS.register("command", classify_command)
