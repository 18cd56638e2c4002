"""PickPlaceCan: put the can into its compartment of bin 2 (robosuite `PickPlaceCan`).

The can is round, so any yaw grasps it upright in the open; it is grasped at mid-height, level with
its centre of mass, so it neither tips in the grasp nor leaves the fingertips to hit the bin floor,
and carried high enough to clear the bin walls (5 cm above the floor top).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gauntlet.envs.rotations import quat_wxyz_to_mat
from gauntlet.envs.tasks.scene import robot_base_xy
from gauntlet.envs.tasks.spec import PlacementRange, TaskScene, TaskSpec, Waypoints


def can_success(can_pos: np.ndarray, bin2_pos: np.ndarray, bin_size: np.ndarray, eef_pos: np.ndarray) -> bool:
    # robosuite PickPlace: inside bin 2's footprint, below its rim, gripper moved away.
    in_x = bin2_pos[0] - bin_size[0] / 2 < can_pos[0] < bin2_pos[0] + bin_size[0] / 2
    in_y = bin2_pos[1] - bin_size[1] / 2 < can_pos[1] < bin2_pos[1] + bin_size[1] / 2
    low = can_pos[2] < bin2_pos[2] + 0.1
    released = 1 - np.tanh(10.0 * np.linalg.norm(eef_pos - can_pos)) < 0.6
    return bool(in_x and in_y and low and released)


def _success(scene: TaskScene) -> bool:
    raw = scene.raw
    return can_success(scene.object_pose("Can_main")[0], raw.bin2_pos, raw.bin_size, scene.eef_pos)


def _grasp_geoms(raw: Any) -> list[str]:
    return list(raw.objects[raw.object_to_id["can"]].contact_geoms)


def _reset_target(scene: TaskScene) -> np.ndarray:
    raw = scene.raw
    return np.array(raw.target_bin_placements[raw.object_to_id["can"]])


def _bin_wall_yaw(scene: TaskScene, pos: np.ndarray) -> float | None:
    """Closing-axis yaw parallel to the nearest wall of bin 1, if one is within 9 cm of `pos`."""
    raw = scene.raw
    rel = np.abs(pos[:2] - np.asarray(raw.bin1_pos)[:2])
    margin = np.asarray(raw.bin_size)[:2] / 2 - rel  # distance to the x walls, to the y walls
    if float(margin.min()) > 0.09:
        return None
    # Near an x wall (normal along x) close along y, and the other way round.
    return np.pi / 2 if margin[0] < margin[1] else 0.0


def _grasp_heading(scene: TaskScene, current_yaw: float, period: float) -> tuple[float, float]:
    pos, quat = scene.object_pose(scene.spec.manipulated)
    axis = quat_wxyz_to_mat(quat)[:, 2]
    wall_yaw = _bin_wall_yaw(scene, pos)
    if abs(axis[2]) < 0.7:
        # A fallen can lies on its side: close the fingers across it, not along its axis.
        return float(np.arctan2(axis[1], axis[0])) + np.pi / 2, np.pi
    if wall_yaw is not None:
        # Upright near a bin wall: the fingers (and the hand, long along the closing axis)
        # must run parallel to the wall.
        return wall_yaw, np.pi
    return current_yaw, np.pi  # upright in the open: any yaw grasps a can


def can_place_xy(scene: TaskScene) -> np.ndarray:
    """Where in its target compartment of bin 2 the can goes: the compartment's corner nearest the
    robot, inset 5 cm from its walls.

    The compartment's centre is the nominal target, but the far compartment's centre lies at the
    edge of the Panda's reach (0.86 m from the base at carry height): with the can's weight the arm
    stalls a few centimetres short of it. Success only asks for the can inside bin 2, so any point
    of the compartment will do, and the dividers (1 cm, as high as the walls) are kept clear.
    """
    raw = scene.raw
    centre = np.asarray(raw.bin2_pos, dtype=np.float64)[:2]
    half = np.asarray(raw.bin_size, dtype=np.float64)[:2] / 2
    t = scene.target_pos[:2]
    side = np.where(t >= centre, 1.0, -1.0)  # which compartment the target lies in
    lo = np.minimum(centre, centre + side * half) + 0.05
    hi = np.maximum(centre, centre + side * half) - 0.05
    return np.clip(robot_base_xy(scene), lo, hi)


def _place_target(scene: TaskScene) -> np.ndarray:
    xy = can_place_xy(scene)
    # Can centre 4 cm above the bin floor's top (floor: 2 cm slab centred on bin2_pos).
    return np.array([xy[0], xy[1], float(scene.raw.bin2_pos[2]) + 0.02 + 0.04])


def _placed(scene: TaskScene) -> bool:
    raw = scene.raw
    pos = scene.object_pose(scene.spec.manipulated)[0]
    rel = np.abs(pos[:2] - np.asarray(raw.bin2_pos)[:2])
    inside = bool(np.all(rel < np.asarray(raw.bin_size)[:2] / 2 - 0.01))
    return inside and pos[2] < raw.bin2_pos[2] + 0.1


def _rest_z(scene: TaskScene) -> float:
    return float(scene.raw.bin1_pos[2]) + 0.06  # 2 cm floor half-thickness + 4 cm half height


def _travel_z(scene: TaskScene) -> float:
    # Clears the bin walls (5 cm above the floors) with the fingers.
    return float(scene.raw.bin1_pos[2]) + 0.17


TASK = TaskSpec(
    name="pick_place_can",
    robosuite_env="PickPlaceCan",
    instruction="put the can in its bin",
    objects=("Can_main",),
    manipulated="Can_main",
    variants={
        "D0": (PlacementRange("CollisionObjectSampler", (-0.06, 0.06), (-0.08, 0.08), None, False),),
        "D1": (PlacementRange("CollisionObjectSampler", (-0.145, 0.145), (-0.195, 0.195), None, False),),
    },
    success=_success,
    grasp_geoms=_grasp_geoms,
    reset_target=_reset_target,
    waypoints=Waypoints(
        yaw_period=0.0, grasp_dz=0.0, carry_clearance=0.14, release_dz=0.03, place_xy_tol=0.03,
        release_xy_tol=0.06, place_target=_place_target, placed=_placed, rest_z=_rest_z, travel_z=_travel_z,
        grasp_heading=_grasp_heading,
    ),
)
