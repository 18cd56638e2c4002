"""Square: put the square nut over the square peg (robosuite `NutAssemblySquare`).

The nut is held by its handle with the fingers across the handle's narrow side (its ring is wider
than the open gripper), turned so its hole lines up with the peg, and lowered over the 20 cm peg
(top 10 cm above its base), hence the large carry clearance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gauntlet.envs.rotations import object_tilt, object_yaw, quat_wxyz_to_mat, wrap_angle
from gauntlet.envs.tasks.scene import Q7_SAFE_RAD, robot_base_xy, wrist_q7
from gauntlet.envs.tasks.spec import PlacementRange, TaskScene, TaskSpec, Waypoints, above_table

HANDLE_OFFSET_M = 0.054  # handle centre along the nut's local x axis (robosuite's SquareNut handle site)
ASKEW_TILT_RAD = 0.25  # a held nut tilted more than this never slides over the peg


def square_success(nut_pos: np.ndarray, peg_pos: np.ndarray, table_z: float, eef_pos: np.ndarray) -> bool:
    on_peg = abs(nut_pos[0] - peg_pos[0]) < 0.03 and abs(nut_pos[1] - peg_pos[1]) < 0.03
    low = nut_pos[2] < table_z + 0.05
    released = 1 - np.tanh(10.0 * np.linalg.norm(eef_pos - nut_pos)) < 0.6
    return bool(on_peg and low and released)


def _peg(scene: TaskScene) -> np.ndarray:
    return np.array(scene.sim.data.body_xpos[scene.raw.peg1_body_id])


def _success(scene: TaskScene) -> bool:
    return square_success(scene.object_pose("SquareNut_main")[0], _peg(scene), scene.raw.table_offset[2],
                          scene.eef_pos)


def _grasp_geoms(raw: Any) -> list[str]:
    return list(raw.nuts[0].contact_geoms)


def _handle(scene: TaskScene) -> np.ndarray:
    pos, quat = scene.object_pose(scene.spec.manipulated)
    return pos + quat_wxyz_to_mat(quat) @ np.array([HANDLE_OFFSET_M, 0.0, 0.0])


def _across_handle(scene: TaskScene, current_yaw: float, period: float) -> tuple[float, float]:
    # Fingers across the handle, i.e. along the nut's local y axis.
    return object_yaw(scene.object_pose(scene.spec.manipulated)[1]) + np.pi / 2, period


def _place_target(scene: TaskScene) -> np.ndarray:
    peg = _peg(scene)
    # Nut resting on the table around the peg: table top + half the nut's 2 cm thickness.
    return np.array([peg[0], peg[1], float(scene.raw.table_offset[2]) + 0.01])


def _placed(scene: TaskScene) -> bool:
    pos = scene.object_pose(scene.spec.manipulated)[0]
    peg = _peg(scene)
    # Below the peg's top (peg: 10 cm half height centred on its body) and around it.
    return bool(np.linalg.norm(pos[:2] - peg[:2]) < 0.02 and pos[2] < peg[2] + 0.09)


def _travel_z(scene: TaskScene) -> float:
    # Clears the peg's top (10 cm above its base) with the hand.
    return float(scene.sim.data.body_xpos[scene.raw.peg1_body_id][2]) + 0.16


def nut_turn(scene: TaskScene, nut_yaw: float, peg_xy: np.ndarray) -> float:
    """Yaw to turn a held nut by so its square hole lines up with the axis-aligned peg.

    Four turns line it up (the hole has 90 deg symmetry); the one chosen keeps the handle, and with
    it the gripper, on the robot's side of the peg: a handle pointing away from the robot puts the
    eef 5 cm beyond the peg, past the Panda's reach. Turns that would run wrist joint 7 into its
    limits (+-2.9 rad; turning the gripper's yaw by d moves q7 by about -d) are ruled out.
    """
    q7 = wrist_q7(scene)
    base_dir = robot_base_xy(scene) - peg_xy
    base_dir = base_dir / max(float(np.linalg.norm(base_dir)), 1e-9)
    first = wrap_angle(0.0 - nut_yaw, np.pi / 2)
    best, best_cost = first, np.inf
    for k in (-2, -1, 0, 1, 2):
        d = first + k * np.pi / 2
        if abs(q7 - d) > Q7_SAFE_RAD:
            continue
        handle = nut_yaw + d
        away = -(np.cos(handle) * base_dir[0] + np.sin(handle) * base_dir[1])  # 1 = pointing away
        cost = abs(d) + 3.0 * max(away, 0.0)
        if cost < best_cost:
            best, best_cost = d, cost
    return best


def _hole_on_peg_yaw(scene: TaskScene, yaw: float, target: np.ndarray) -> float:
    nut_yaw = object_yaw(scene.object_pose("SquareNut_main")[1])
    return yaw + nut_turn(scene, nut_yaw, target[:2])


def _askew(scene: TaskScene) -> bool:
    return object_tilt(scene.object_pose("SquareNut_main")[1]) > ASKEW_TILT_RAD


TASK = TaskSpec(
    name="square",
    robosuite_env="NutAssemblySquare",
    instruction="put the square nut on the square peg",
    objects=("SquareNut_main",),
    manipulated="SquareNut_main",
    variants={
        "D0": (PlacementRange("SquareNutSampler", (-0.115, -0.11), (0.11, 0.225)),),
        "D1": (PlacementRange("SquareNutSampler", (-0.2, -0.02), (0.0, 0.26)),),
    },
    success=_success,
    grasp_geoms=_grasp_geoms,
    reset_target=_peg,
    waypoints=Waypoints(
        yaw_period=np.pi, grasp_dz=0.0, carry_clearance=0.17, release_dz=0.04, place_xy_tol=0.004,
        release_xy_tol=0.008, place_target=_place_target, placed=_placed, rest_z=above_table(0.01),
        travel_z=_travel_z, grasp_point=_handle, grasp_heading=_across_handle, carry_yaw=_hole_on_peg_yaw,
        held_askew=_askew,
    ),
)
