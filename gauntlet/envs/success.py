"""Task-success predicates on the simulator state.

They follow robosuite's own `_check_success` definitions (tests check the two agree) but read only
object/eef/gripper state, so they also run on recorded trajectories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gauntlet.envs.env import GauntletEnv

LIFT_HEIGHT_M = 0.04  # robosuite Lift: cube bottom 4 cm above the table


def lift_success(cube_pos: np.ndarray, table_z: float) -> bool:
    return bool(cube_pos[2] > table_z + LIFT_HEIGHT_M)


def stack_success(cube_a: np.ndarray, cube_b: np.ndarray, a_grasped: bool, a_touches_b: bool) -> bool:
    # robosuite: A lifted off the table, resting on B, and released.
    return bool(a_touches_b and not a_grasped and cube_a[2] > cube_b[2] + 0.02)


def square_success(nut_pos: np.ndarray, peg_pos: np.ndarray, table_z: float, eef_pos: np.ndarray) -> bool:
    on_peg = abs(nut_pos[0] - peg_pos[0]) < 0.03 and abs(nut_pos[1] - peg_pos[1]) < 0.03
    low = nut_pos[2] < table_z + 0.05
    released = 1 - np.tanh(10.0 * np.linalg.norm(eef_pos - nut_pos)) < 0.6
    return bool(on_peg and low and released)


def can_success(can_pos: np.ndarray, bin2_pos: np.ndarray, bin_size: np.ndarray, eef_pos: np.ndarray) -> bool:
    # robosuite PickPlace: inside bin 2's footprint, below its rim, gripper moved away.
    in_x = bin2_pos[0] - bin_size[0] / 2 < can_pos[0] < bin2_pos[0] + bin_size[0] / 2
    in_y = bin2_pos[1] - bin_size[1] / 2 < can_pos[1] < bin2_pos[1] + bin_size[1] / 2
    low = can_pos[2] < bin2_pos[2] + 0.1
    released = 1 - np.tanh(10.0 * np.linalg.norm(eef_pos - can_pos)) < 0.6
    return bool(in_x and in_y and low and released)


def task_success(env: GauntletEnv) -> bool:
    raw = env.raw
    name = env.spec.name
    if name == "lift":
        return lift_success(env.object_pose("cube_main")[0], raw.table_offset[2])
    if name == "stack":
        a = env.object_pose("cubeA_main")[0]
        b = env.object_pose("cubeB_main")[0]
        grasped = raw._check_grasp(gripper=raw.robots[0].gripper, object_geoms=raw.cubeA)
        touching = raw.check_contact(raw.cubeA, raw.cubeB)
        return stack_success(a, b, grasped, touching)
    if name == "square":
        return square_success(
            env.object_pose("SquareNut_main")[0],
            np.array(env.sim.data.body_xpos[raw.peg1_body_id]),
            raw.table_offset[2],
            env.eef_pos,
        )
    if name == "pick_place_can":
        return can_success(env.object_pose("Can_main")[0], raw.bin2_pos, raw.bin_size, env.eef_pos)
    raise AssertionError(name)


def is_grasped(env: GauntletEnv) -> bool:
    """Both fingers touch the manipulated object (robosuite's grasp check)."""
    raw = env.raw
    objs = {"lift": "cube", "stack": "cubeA", "square": None, "pick_place_can": None}
    name = env.spec.name
    if name == "square":
        geoms = [g for g in raw.nuts[0].contact_geoms]
    elif name == "pick_place_can":
        geoms = raw.objects[raw.object_to_id["can"]].contact_geoms
    else:
        geoms = getattr(raw, objs[name])
    return bool(raw._check_grasp(gripper=raw.robots[0].gripper, object_geoms=geoms))
