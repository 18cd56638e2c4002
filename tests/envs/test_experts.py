"""The scripted experts solve every task, replay bit for bit, and recover from mid-task errors."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from gauntlet.envs.env import GauntletEnv, make_env
from gauntlet.envs.experts import PHASES, grasp_point, make_expert, rollout_expert
from gauntlet.envs.tasks.scene import is_grasped

HORIZON = 400  # the benchmark's horizon; the slowest task (square) needs ~150-200 steps

_ENVS: dict[tuple[str, str], GauntletEnv] = {}


def _env(task: str, variant: str) -> GauntletEnv:
    # Building a robosuite env costs ~0.2-2 s; every test of a (task, variant) shares one.
    if (task, variant) not in _ENVS:
        _ENVS[(task, variant)] = make_env(task, variant, image_size=16)
    return _ENVS[(task, variant)]


def _run_to_phase(env: GauntletEnv, seed: int, phase: str, extra_steps: int = 0, limit: int = 300):
    env.reset(seed)
    expert = make_expert(env, seed=seed)
    for _ in range(limit):
        env.step(expert.act())
        if expert.phase == phase:
            break
    else:
        raise AssertionError(f"expert never reached {phase!r}")
    for _ in range(extra_steps):
        env.step(expert.act())
    return expert


def _teleport(env: GauntletEnv, body: str, pos: np.ndarray) -> None:
    """Puts `body` at `pos` at rest, keeping its orientation (a drop/push done instantly)."""
    qadr, vadr = env._object_joint_adr[body]
    env.sim.data.qpos[qadr : qadr + 3] = pos
    env.sim.data.qvel[vadr : vadr + 6] = 0.0
    mujoco.mj_forward(env.sim.model._model, env.sim.data._data)


@pytest.mark.parametrize("variant", ["D0", "D1"])
@pytest.mark.parametrize("task", ["lift", "stack", "square", "pick_place_can"])
def test_expert_solves_task(task: str, variant: str) -> None:
    env = _env(task, variant)
    for seed in (3, 11):
        result = rollout_expert(env, seed, HORIZON)
        assert result.success, f"{task}/{variant} seed {seed}: phases {sorted(set(result.phases))}"
        assert result.steps == len(result.phases) <= HORIZON
        assert set(result.phases) <= set(PHASES)
        assert result.phases[0] == "approach"
        if task != "lift":
            # A full pick-and-place passes through every stage of the script, in order.
            order = [PHASES.index(p) for p in dict.fromkeys(result.phases)]
            assert order == sorted(order) and {"grasp", "transport", "release"} <= set(result.phases)


def test_actions_are_bounded_and_deterministic() -> None:
    env = _env("stack", "D1")

    def actions(expert_seed: int) -> np.ndarray:
        env.reset(5)
        expert = make_expert(env, seed=expert_seed, noise_std=0.1)
        out = []
        for _ in range(60):
            a = expert.act()
            env.step(a)
            out.append(a)
        return np.array(out)

    first, again, other = actions(0), actions(0), actions(1)
    assert first.shape == (60, 7) and first.dtype == np.float64
    assert np.all(np.abs(first) <= 1.0)
    assert np.array_equal(first, again)  # bit for bit
    assert not np.array_equal(first, other)  # the expert seed drives the noise


def test_rollout_replays_exactly_and_reset_restarts_expert() -> None:
    env = _env("lift", "D1")
    expert = make_expert(env, seed=7, noise_std=0.05)
    a = rollout_expert(env, 7, HORIZON, expert=expert)
    b = rollout_expert(env, 7, HORIZON, expert=expert)
    assert a == b and a.success


def test_noise_std_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match="noise_std"):
        make_expert(_env("lift", "D0"), noise_std=-0.1)


@pytest.mark.parametrize("task", ["stack", "square", "pick_place_can"])
def test_recovers_when_carried_object_is_put_back_on_table(task: str) -> None:
    """Mid-transport the object vanishes from the gripper and lies on the table again."""
    env = _env(task, "D0")
    expert = _run_to_phase(env, 4, "transport", extra_steps=3)
    body = env.spec.manipulated
    assert is_grasped(env)
    start = {"stack": (0.0, 0.08), "square": (-0.11, 0.12), "pick_place_can": (0.06, -0.22)}[task]
    z = env.object_pose(body)[0][2]
    rest_z = {"stack": 0.83, "square": 0.83, "pick_place_can": 0.86}[task]
    assert z > rest_z + 0.05  # it really was carried
    _teleport(env, body, np.array([start[0], start[1], rest_z]))
    assert not is_grasped(env)
    result = rollout_expert(env, 4, HORIZON, expert=expert, reset=False)
    assert result.success, sorted(set(result.phases))
    # It noticed the loss and went back for the object rather than carrying on empty-handed.
    assert result.phases[0] in ("approach", "grasp")
    assert "descend" in result.phases


def test_fresh_expert_takes_over_mid_task_and_after_a_shove() -> None:
    """No hidden memory is needed: a new expert finishes a half-done episode, even after the arm
    is knocked sideways and the gripper is stuck open for a while."""
    env = _env("pick_place_can", "D1")
    _run_to_phase(env, 9, "lift", extra_steps=2)
    env.sim.data.qvel[env._arm_qvel_idx] += 1.0  # a hard joint-velocity shove
    env.disturbances.gripper_stall_steps = 10  # and the gripper stalls open: the can drops
    env.disturbances.gripper_stall_command = -1.0
    mujoco.mj_forward(env.sim.model._model, env.sim.data._data)
    result = rollout_expert(env, 9, HORIZON, expert=make_expert(env, seed=9), reset=False)
    assert result.success, sorted(set(result.phases))


def test_grasp_point_is_on_the_nut_handle() -> None:
    env = _env("square", "D0")
    env.reset(2)
    nut, _ = env.object_pose("SquareNut_main")
    handle = env.sim.data.site_xpos[env.sim.model.site_name2id("SquareNut_handle_site")]
    assert np.allclose(grasp_point(env), handle, atol=1e-6)
    assert np.isclose(np.linalg.norm((grasp_point(env) - nut)[:2]), 0.054, atol=1e-6)
