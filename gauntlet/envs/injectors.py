"""Error injectors: the things that go wrong mid-task, applied to a live env.

Each injector is parameterised by a magnitude (a physical quantity, unit recorded) and fires in one
of the expert's phases. `apply` changes the simulator (or the env's disturbance state, for effects
that last several steps, which `sim_state` captures with the rest) and returns the parameters it
actually used, so a scene records exactly what was done to it.

| error_type          | category     | what it does                                                      |
|---------------------|--------------|-------------------------------------------------------------------|
| drop                | natural      | the gripper opens by itself for a few steps mid-carry             |
| grasp_slip          | pose_perturb | the held object slides down/rotates inside the grasp              |
| missed_grasp        | natural      | the object shifts sideways as the gripper closes; it closes on air |
| object_push         | impulse      | a horizontal velocity impulse on the object                       |
| object_pose_perturb | pose_perturb | the object is displaced and turned before the grasp               |
| target_shift        | pose_perturb | the target (stack: the base cube) moves while the object is carried |
| robot_joint_push    | impulse      | a random joint-velocity impulse on the arm                        |
| gripper_stall       | augmented    | the gripper ignores its commands for a while                      |
| collision_nudge     | impulse      | the end effector is knocked sideways (Cartesian velocity impulse)  |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.envs.errors import UnknownTaskError
from gauntlet.envs.rotations import quat_mul_wxyz, yaw_quat_wxyz

if TYPE_CHECKING:
    from gauntlet.envs.env import GauntletEnv

CATEGORIES = ("impulse", "pose_perturb", "augmented", "natural")


@dataclass(frozen=True)
class InjectorSpec:
    """What an error type is and when it can happen."""

    name: str  # the error_type column value
    category: str  # one of CATEGORIES
    phases: tuple[str, ...]  # expert phases in which it may fire
    magnitude_range: tuple[float, float]  # physical magnitude sampled uniformly in this range
    magnitude_unit: str  # unit of the magnitude
    settle_steps: int  # hold steps after the injection before the scene is captured
    tasks: tuple[str, ...] | None = None  # tasks it applies to; None = all
    description: str = ""

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


SPECS: dict[str, InjectorSpec] = {
    s.name: s
    for s in [
        InjectorSpec("drop", "natural", ("lift", "transport"), (6, 12), "steps", 12,
                     description="gripper opens by itself mid-carry"),
        InjectorSpec("grasp_slip", "pose_perturb", ("lift", "transport"), (0.01, 0.025), "m", 3,
                     description="held object slides down and turns inside the grasp"),
        InjectorSpec("missed_grasp", "natural", ("grasp",), (0.03, 0.06), "m", 10,
                     description="object shifts sideways as the gripper closes"),
        InjectorSpec("object_push", "impulse", ("approach", "descend"), (0.3, 0.8), "m/s", 10,
                     description="horizontal velocity impulse on the object"),
        InjectorSpec("object_pose_perturb", "pose_perturb", ("approach", "descend"), (0.03, 0.08), "m", 2,
                     description="object displaced and turned before the grasp"),
        InjectorSpec("target_shift", "pose_perturb", ("lift", "transport"), (0.04, 0.08), "m", 2,
                     tasks=("stack",), description="the base cube moves while the object is carried"),
        InjectorSpec("robot_joint_push", "impulse", ("approach", "lift", "transport"), (0.5, 1.5), "rad/s", 6,
                     description="random joint-velocity impulse on the arm"),
        InjectorSpec("gripper_stall", "augmented", ("descend", "grasp", "lift"), (10, 30), "steps", 4,
                     description="gripper ignores its commands for a while"),
        InjectorSpec("collision_nudge", "impulse", ("approach", "transport"), (0.3, 0.6), "m/s", 6,
                     description="end effector knocked sideways"),
    ]
}
ERROR_TYPES = tuple(SPECS)


def get_spec(error_type: str) -> InjectorSpec:
    try:
        return SPECS[error_type]
    except KeyError:
        raise UnknownTaskError("error type", error_type, list(SPECS)) from None


def _unit_horizontal(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(angle), np.sin(angle), 0.0])


def _forward(env: GauntletEnv) -> None:
    import mujoco

    mujoco.mj_forward(env.sim.model._model, env.sim.data._data)


def _move_object(env: GauntletEnv, body: str, offset: np.ndarray, yaw: float) -> None:
    qadr, vadr = env._object_joint_adr[body]
    qpos = env.sim.data.qpos
    qpos[qadr : qadr + 3] += offset
    qpos[qadr + 3 : qadr + 7] = quat_mul_wxyz(yaw_quat_wxyz(yaw), np.array(qpos[qadr + 3 : qadr + 7]))
    env.sim.data.qvel[vadr : vadr + 6] = 0.0


def _stall_gripper(env: GauntletEnv, steps: int, command: float) -> None:
    env.disturbances.gripper_stall_steps = int(steps)
    env.disturbances.gripper_stall_command = float(command)


def current_gripper_command(env: GauntletEnv) -> float:
    """The gripper command the robot is currently executing (+1 closed, -1 open)."""
    gripper = env.raw.robots[0].gripper["right"]
    return float(np.sign(gripper.current_action[-1]) or -1.0)


def apply_injection(env: GauntletEnv, error_type: str, rng: np.random.Generator,
                    magnitude: float | None = None) -> dict[str, Any]:
    """Applies one error to `env` now; returns the parameters used (JSON-serialisable)."""
    spec = get_spec(error_type)
    if not spec.applies_to(env.spec.name):
        raise UnknownTaskError(f"task for error type {error_type}", env.spec.name, list(spec.tasks or ()))
    lo, hi = spec.magnitude_range
    mag = float(rng.uniform(lo, hi) if magnitude is None else magnitude)
    body = env.spec.manipulated
    params: dict[str, Any] = {"magnitude": mag, "magnitude_unit": spec.magnitude_unit}
    if error_type == "drop":
        _stall_gripper(env, int(round(mag)), -1.0)
    elif error_type == "grasp_slip":
        yaw = float(rng.uniform(-0.26, 0.26))  # up to 15 degrees
        _move_object(env, body, np.array([0.0, 0.0, -mag]), yaw)
        params["yaw_rad"] = yaw
    elif error_type == "missed_grasp":
        direction = _unit_horizontal(rng)
        _move_object(env, body, direction * mag, 0.0)
        _stall_gripper(env, 8, 1.0)  # the close goes ahead regardless
        params["direction"] = direction.tolist()
    elif error_type == "object_push":
        direction = _unit_horizontal(rng)
        _, vadr = env._object_joint_adr[body]
        env.sim.data.qvel[vadr : vadr + 3] += direction * mag
        params["direction"] = direction.tolist()
    elif error_type == "object_pose_perturb":
        direction = _unit_horizontal(rng)
        yaw = float(rng.uniform(-np.pi / 4, np.pi / 4))
        _move_object(env, body, direction * mag, yaw)
        params.update(direction=direction.tolist(), yaw_rad=yaw)
    elif error_type == "target_shift":
        direction = _unit_horizontal(rng)
        _move_object(env, "cubeB_main", direction * mag, 0.0)
        params["direction"] = direction.tolist()
    elif error_type == "robot_joint_push":
        idx = env._arm_qvel_idx
        direction = rng.normal(size=len(idx))
        direction /= np.linalg.norm(direction)
        env.sim.data.qvel[idx] += direction * mag
        params["direction"] = direction.tolist()
    elif error_type == "gripper_stall":
        command = current_gripper_command(env)
        _stall_gripper(env, int(round(mag)), command)
        params["held_command"] = command
    elif error_type == "collision_nudge":
        import mujoco

        direction = _unit_horizontal(rng)
        m, d = env.sim.model._model, env.sim.data._data
        jacp = np.zeros((3, m.nv))
        mujoco.mj_jacSite(m, d, jacp, None, env._eef_site)
        idx = env._arm_qvel_idx
        jac = jacp[:, idx]  # (3, n_arm)
        dq = np.linalg.pinv(jac) @ (direction * mag)
        env.sim.data.qvel[idx] += dq
        params["direction"] = direction.tolist()
    else:  # pragma: no cover - SPECS and this switch are kept in step by tests
        raise AssertionError(error_type)
    _forward(env)
    return params


def hold_action(env: GauntletEnv) -> np.ndarray:
    """Zero motion, gripper keeps its current command: lets an injected error play out."""
    action = np.zeros(7)
    action[6] = current_gripper_command(env)
    return action
