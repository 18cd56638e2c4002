"""Each injector does what its documentation says, on a real env."""

from __future__ import annotations

import numpy as np
import pytest

from gauntlet.envs.env import GauntletEnv, make_env
from gauntlet.envs.experts import make_expert
from gauntlet.envs.injectors import SPECS, apply_injection, hold_action
from gauntlet.envs.tasks import TASKS
from gauntlet.envs.tasks.scene import is_grasped
from gauntlet.runtime.registry import UnknownNameError


@pytest.fixture(scope="module")
def lift() -> GauntletEnv:
    return make_env("lift", "D0", image_size=16)


def _run_until(env: GauntletEnv, seed: int, phase: str, limit: int = 300) -> None:
    env.reset(seed)
    expert = make_expert(env, seed=seed)
    for _ in range(limit):
        if expert.phase == phase:
            return
        env.step(expert.act())
    raise AssertionError(f"expert never reached {phase}")


def _hold(env: GauntletEnv, steps: int) -> None:
    for _ in range(steps):
        env.step(hold_action(env))


def test_every_error_type_is_documented_and_categorised() -> None:
    assert len(SPECS) >= 9
    for spec in SPECS.values():
        assert spec.category in ("impulse", "pose_perturb", "augmented", "natural")
        assert spec.phases and spec.magnitude_range[0] < spec.magnitude_range[1] and spec.description
        assert callable(spec.apply) and (spec.tasks is None or set(spec.tasks) <= set(TASKS))


def test_object_pose_perturb_moves_object_by_magnitude(lift: GauntletEnv) -> None:
    lift.reset(1)
    before = lift.object_pose("cube_main")[0]
    params = apply_injection(lift, "object_pose_perturb", np.random.default_rng(0), magnitude=0.05)
    after = lift.object_pose("cube_main")[0]
    assert np.isclose(np.linalg.norm((after - before)[:2]), 0.05)
    assert np.allclose((after - before)[:2] / 0.05, params["direction"][:2])


def test_object_push_sets_object_moving_and_it_slides(lift: GauntletEnv) -> None:
    lift.reset(2)
    before = lift.object_pose("cube_main")[0]
    apply_injection(lift, "object_push", np.random.default_rng(0), magnitude=0.6)
    _, vadr = lift._object_joint_adr["cube_main"]
    assert np.isclose(np.linalg.norm(lift.sim.data.qvel[vadr : vadr + 2]), 0.6)
    _hold(lift, 10)
    assert np.linalg.norm((lift.object_pose("cube_main")[0] - before)[:2]) > 0.01


def test_robot_joint_push_and_collision_nudge_move_the_arm(lift: GauntletEnv) -> None:
    lift.reset(3)
    q0 = lift.sim.data.qvel[lift._arm_qvel_idx].copy()
    apply_injection(lift, "robot_joint_push", np.random.default_rng(0), magnitude=1.0)
    assert np.isclose(np.linalg.norm(lift.sim.data.qvel[lift._arm_qvel_idx] - q0), 1.0)
    lift.reset(3)
    eef0 = lift.eef_pos
    params = apply_injection(lift, "collision_nudge", np.random.default_rng(1), magnitude=0.5)
    lift.step(hold_action(lift))
    moved = lift.eef_pos - eef0
    # The end effector moves along the nudge direction, mostly horizontally.
    assert np.dot(moved[:2], np.array(params["direction"][:2])) > 0.005


def test_gripper_stall_ignores_commands(lift: GauntletEnv) -> None:
    lift.reset(4)
    for _ in range(10):  # open fully
        lift.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    params = apply_injection(lift, "gripper_stall", np.random.default_rng(0), magnitude=12)
    assert params["held_command"] == -1.0
    gap0 = lift.gripper_qpos[0] - lift.gripper_qpos[1]
    for _ in range(10):  # asks to close; the stalled gripper stays open
        lift.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert abs((lift.gripper_qpos[0] - lift.gripper_qpos[1]) - gap0) < 2e-3
    for _ in range(12):  # stall over: now it closes
        lift.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert (lift.gripper_qpos[0] - lift.gripper_qpos[1]) < gap0 - 0.02


def test_drop_releases_the_held_object(lift: GauntletEnv) -> None:
    _run_until(lift, 5, "lift")
    _hold(lift, 8)  # finish lifting a little
    assert is_grasped(lift)
    z0 = lift.object_pose("cube_main")[0][2]
    apply_injection(lift, "drop", np.random.default_rng(0), magnitude=10)
    for _ in range(10):  # the policy keeps asking to hold on; the gripper opens anyway
        lift.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert not is_grasped(lift)
    assert lift.object_pose("cube_main")[0][2] < z0 - 0.005


def test_grasp_slip_lowers_object_in_the_hand(lift: GauntletEnv) -> None:
    import mujoco

    _run_until(lift, 6, "lift")
    mujoco.mj_forward(lift.sim.model._model, lift.sim.data._data)  # site positions lag qpos after a step
    rel0 = lift.object_pose("cube_main")[0] - lift.eef_pos
    apply_injection(lift, "grasp_slip", np.random.default_rng(0), magnitude=0.015)
    rel1 = lift.object_pose("cube_main")[0] - lift.eef_pos
    assert np.isclose(rel0[2] - rel1[2], 0.015, atol=1e-6)


def test_missed_grasp_closes_on_air(lift: GauntletEnv) -> None:
    _run_until(lift, 7, "grasp")
    apply_injection(lift, "missed_grasp", np.random.default_rng(0), magnitude=0.05)
    for _ in range(12):
        lift.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))  # even a policy asking to open is overridden at first
    assert not is_grasped(lift)
    assert np.linalg.norm(lift.object_pose("cube_main")[0][:2] - lift.eef_pos[:2]) > 0.03


def test_target_shift_moves_the_base_cube_and_only_applies_to_stack(lift: GauntletEnv) -> None:
    stack = make_env("stack", "D0", image_size=16)
    stack.reset(1)
    before = stack.object_pose("cubeB_main")[0]
    apply_injection(stack, "target_shift", np.random.default_rng(0), magnitude=0.06)
    assert np.isclose(np.linalg.norm((stack.object_pose("cubeB_main")[0] - before)[:2]), 0.06)
    with pytest.raises(UnknownNameError):
        apply_injection(lift, "target_shift", np.random.default_rng(0))
    with pytest.raises(UnknownNameError, match="error type"):
        apply_injection(lift, "meteor_strike", np.random.default_rng(0))
