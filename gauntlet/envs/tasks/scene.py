"""Readers of a live scene that several tasks and the scripted expert share: grasp, wrist, robot base."""

from __future__ import annotations

import numpy as np

from gauntlet.envs.tasks.spec import TaskScene

Q7_SAFE_RAD = 2.6  # |wrist joint 7| kept under this (its limits are +-2.897 rad)


def is_grasped(scene: TaskScene) -> bool:
    """Both fingers touch the manipulated object (robosuite's grasp check)."""
    raw = scene.raw
    geoms = scene.spec.grasp_geoms(raw)
    return bool(raw._check_grasp(gripper=raw.robots[0].gripper, object_geoms=geoms))


def wrist_q7(scene: TaskScene) -> float:
    """Position of the arm's last (wrist) joint, rad."""
    return float(scene.sim.data.qpos[scene.raw.robots[0]._ref_joint_pos_indexes[6]])


def robot_base_xy(scene: TaskScene) -> np.ndarray:
    """(2,) table-plane position of the robot's base, m."""
    robot = scene.raw.robots[0]
    bid = scene.sim.model.body_name2id(robot.robot_model.root_body)
    return np.array(scene.sim.data.body_xpos[bid][:2])
