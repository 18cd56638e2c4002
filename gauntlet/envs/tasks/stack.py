"""Stack: put the red cube (A) on the green cube (B) and let go (robosuite `Stack`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gauntlet.envs.tasks.spec import PlacementRange, TaskScene, TaskSpec, Waypoints, above_table

CUBE_ON_CUBE_DZ_M = 0.045  # cube A's centre above cube B's when resting on it (both half sizes)


def stack_success(cube_a: np.ndarray, cube_b: np.ndarray, a_grasped: bool, a_touches_b: bool) -> bool:
    # robosuite: A lifted off the table, resting on B, and released.
    return bool(a_touches_b and not a_grasped and cube_a[2] > cube_b[2] + 0.02)


def _success(scene: TaskScene) -> bool:
    raw = scene.raw
    a = scene.object_pose("cubeA_main")[0]
    b = scene.object_pose("cubeB_main")[0]
    grasped = raw._check_grasp(gripper=raw.robots[0].gripper, object_geoms=raw.cubeA)
    touching = raw.check_contact(raw.cubeA, raw.cubeB)
    return stack_success(a, b, grasped, touching)


def _grasp_geoms(raw: Any) -> list[str]:
    return list(raw.cubeA.contact_geoms)


def _reset_target(scene: TaskScene) -> np.ndarray:
    return np.zeros(3)  # the target moves with cube B (`_live_target`); nothing fixed to remember


def _live_target(scene: TaskScene) -> np.ndarray:
    return scene.object_pose("cubeB_main")[0] + np.array([0.0, 0.0, CUBE_ON_CUBE_DZ_M])


def _cube_b(scene: TaskScene) -> np.ndarray:
    # Stack's cubes may start side by side: the fingers must not close towards cube B.
    return scene.object_pose("cubeB_main")[0]


def _placed(scene: TaskScene) -> bool:
    pos = scene.object_pose(scene.spec.manipulated)[0]
    b = scene.object_pose("cubeB_main")[0]
    return bool(np.linalg.norm(pos[:2] - b[:2]) < 0.02 and 0.035 < pos[2] - b[2] < 0.06)


TASK = TaskSpec(
    name="stack",
    robosuite_env="Stack",
    instruction="stack the red cube on the green cube",
    objects=("cubeA_main", "cubeB_main"),
    manipulated="cubeA_main",
    variants={
        "D0": (PlacementRange(None, (-0.08, 0.08), (-0.08, 0.08)),),
        "D1": (PlacementRange(None, (-0.16, 0.16), (-0.16, 0.16)),),
    },
    success=_success,
    grasp_geoms=_grasp_geoms,
    reset_target=_reset_target,
    live_target=_live_target,
    waypoints=Waypoints(
        yaw_period=np.pi / 2, grasp_dz=0.0, carry_clearance=0.06, release_dz=0.008, place_xy_tol=0.006,
        release_xy_tol=0.012, place_target=_live_target, placed=_placed, rest_z=above_table(0.02),
        travel_z=above_table(0.12), grasp_obstacle=_cube_b,
    ),
)
