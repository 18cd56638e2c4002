"""Lift: pick the red cube up off the table (robosuite `Lift`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gauntlet.envs.tasks.spec import PlacementRange, TaskScene, TaskSpec, Waypoints, above_table, never

LIFT_HEIGHT_M = 0.04  # robosuite Lift: cube bottom 4 cm above the table


def lift_success(cube_pos: np.ndarray, table_z: float) -> bool:
    return bool(cube_pos[2] > table_z + LIFT_HEIGHT_M)


def _success(scene: TaskScene) -> bool:
    return lift_success(scene.object_pose("cube_main")[0], scene.raw.table_offset[2])


def _grasp_geoms(raw: Any) -> list[str]:
    return list(raw.cube.contact_geoms)


def _reset_target(scene: TaskScene) -> np.ndarray:
    # 10 cm above the table over where the cube starts.
    pos = scene.object_pose("cube_main")[0]
    return np.array([pos[0], pos[1], scene.raw.table_offset[2] + 0.1])


def _place_target(scene: TaskScene) -> np.ndarray:
    pos = scene.object_pose("cube_main")[0]
    return np.array([pos[0], pos[1], scene.target_pos[2]])


TASK = TaskSpec(
    name="lift",
    robosuite_env="Lift",
    instruction="pick up the red cube",
    objects=("cube_main",),
    manipulated="cube_main",
    variants={
        "D0": (PlacementRange(None, (-0.03, 0.03), (-0.03, 0.03)),),
        "D1": (PlacementRange(None, (-0.15, 0.15), (-0.15, 0.15)),),
    },
    success=_success,
    grasp_geoms=_grasp_geoms,
    reset_target=_reset_target,
    # Cubes are symmetric under 90 deg yaw; grasped at their centre. Never "placed": lift is solved
    # by holding the cube up.
    waypoints=Waypoints(
        yaw_period=np.pi / 2, grasp_dz=0.0, carry_clearance=0.10, release_dz=0.0, place_xy_tol=0.02,
        release_xy_tol=0.02, place_target=_place_target, placed=never, rest_z=above_table(0.02),
        travel_z=above_table(0.12), holds_at_target=True,
    ),
)
