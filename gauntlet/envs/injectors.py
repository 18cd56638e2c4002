"""Error injectors: the things that go wrong mid-task, applied to a live env; one spec per error type.

Each injector is one `InjectorSpec`: its magnitude (a physical quantity, unit recorded), category,
the expert phases it fires in, the tasks it applies to, and its apply function, declared together
with `@injector(...)` on that function. Adding an error type is adding one decorated function here
(plus its test). `apply` changes the simulator (or the env's disturbance state, for effects that last
several steps, which `sim_state` captures with the rest) and returns the parameters it actually used
beyond the magnitude, so a scene records exactly what was done to it.

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.envs.rotations import quat_mul_wxyz, yaw_quat_wxyz
from gauntlet.keys import ACTION_DIM, GRIPPER_INDEX
from gauntlet.runtime.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from gauntlet.envs.env import GauntletEnv

CATEGORIES = ("impulse", "pose_perturb", "augmented", "natural")
# A nominal scene is the task's start state with nothing injected: the baseline a policy's recovery
# success is compared with. It is not an error type (no spec, never in ERROR_TYPES), so `all` keeps
# meaning every injected error; "none" is also what the error classifiers say when they see no error.
NOMINAL = "none"  # the error_type column of a nominal scene
NOMINAL_CATEGORY = "nominal"  # its category column

# (env, magnitude, rng) -> the parameters used beyond the magnitude (JSON-serialisable)
ApplyFn = Callable[["GauntletEnv", float, np.random.Generator], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class InjectorSpec:
    """What an error type is, when it can happen, and how it is done."""

    name: str  # the error_type column value
    category: str  # one of CATEGORIES
    phases: tuple[str, ...]  # expert phases in which it may fire
    magnitude_range: tuple[float, float]  # physical magnitude sampled uniformly in this range
    magnitude_unit: str  # unit of the magnitude
    settle_steps: int  # hold steps after the injection before the scene is captured
    apply: ApplyFn  # changes the env now (see the module docstring)
    tasks: tuple[str, ...] | None = None  # tasks it applies to; None = all
    description: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"injector {self.name!r}: category {self.category!r} is not one of {CATEGORIES}")

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


SPECS: Registry[InjectorSpec] = Registry("error type")  # in declaration order


def injector(name: str, category: str, phases: tuple[str, ...], magnitude_range: tuple[float, float],
             magnitude_unit: str, settle_steps: int, description: str,
             tasks: tuple[str, ...] | None = None) -> Callable[[ApplyFn], ApplyFn]:
    """Registers the decorated apply function as error type `name` (see `InjectorSpec`)."""

    def register(apply: ApplyFn) -> ApplyFn:
        SPECS.register(name, InjectorSpec(name=name, category=category, phases=phases,
                                          magnitude_range=magnitude_range, magnitude_unit=magnitude_unit,
                                          settle_steps=settle_steps, apply=apply, tasks=tasks,
                                          description=description))
        return apply

    return register


# ------------------------------------------------------------------------ shared env effects
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


# -------------------------------------------------------------------------------- injectors
@injector("drop", "natural", ("lift", "transport"), (6, 12), "steps", 12,
          description="gripper opens by itself mid-carry")
def _drop(env: GauntletEnv, mag: float, rng: np.random.Generator) -> dict[str, Any]:
    _stall_gripper(env, int(round(mag)), -1.0)
    return {}


@injector("grasp_slip", "pose_perturb", ("lift", "transport"), (0.01, 0.025), "m", 3,
          description="held object slides down and turns inside the grasp")
def _grasp_slip(env: GauntletEnv, mag: float, rng: np.random.Generator) -> dict[str, Any]:
    yaw = float(rng.uniform(-0.26, 0.26))  # up to 15 degrees
    _move_object(env, env.spec.manipulated, np.array([0.0, 0.0, -mag]), yaw)
    return {"yaw_rad": yaw}


@injector("missed_grasp", "natural", ("grasp",), (0.03, 0.06), "m", 10,
          description="object shifts sideways as the gripper closes")
def _missed_grasp(env: GauntletEnv, mag: float, rng: np.random.Generator) -> dict[str, Any]:
    direction = _unit_horizontal(rng)
    _move_object(env, env.spec.manipulated, direction * mag, 0.0)
    _stall_gripper(env, 8, 1.0)  # the close goes ahead regardless
    return {"direction": direction.tolist()}


@injector("object_push", "impulse", ("approach", "descend"), (0.3, 0.8), "m/s", 10,
          description="horizontal velocity impulse on the object")
def _object_push(env: GauntletEnv, mag: float, rng: np.random.Generator) -> dict[str, Any]:
    direction = _unit_horizontal(rng)
    _, vadr = env._object_joint_adr[env.spec.manipulated]
    env.sim.data.qvel[vadr : vadr + 3] += direction * mag
    return {"direction": direction.tolist()}


@injector("object_pose_perturb", "pose_perturb", ("approach", "descend"), (0.03, 0.08), "m", 2,
          description="object displaced and turned before the grasp")
def _object_pose_perturb(env: GauntletEnv, mag: float, rng: np.random.Generator) -> dict[str, Any]:
    direction = _unit_horizontal(rng)
    yaw = float(rng.uniform(-np.pi / 4, np.pi / 4))
    _move_object(env, env.spec.manipulated, direction * mag, yaw)
    return {"direction": direction.tolist(), "yaw_rad": yaw}


@injector("target_shift", "pose_perturb", ("lift", "transport"), (0.04, 0.08), "m", 2, tasks=("stack",),
          description="the base cube moves while the object is carried")
def _target_shift(env: GauntletEnv, mag: float, rng: np.random.Generator) -> dict[str, Any]:
    direction = _unit_horizontal(rng)
    _move_object(env, "cubeB_main", direction * mag, 0.0)
    return {"direction": direction.tolist()}


@injector("robot_joint_push", "impulse", ("approach", "lift", "transport"), (0.5, 1.5), "rad/s", 6,
          description="random joint-velocity impulse on the arm")
def _robot_joint_push(env: GauntletEnv, mag: float, rng: np.random.Generator) -> dict[str, Any]:
    idx = env._arm_qvel_idx
    direction = rng.normal(size=len(idx))
    direction /= np.linalg.norm(direction)
    env.sim.data.qvel[idx] += direction * mag
    return {"direction": direction.tolist()}


@injector("gripper_stall", "augmented", ("descend", "grasp", "lift"), (10, 30), "steps", 4,
          description="gripper ignores its commands for a while")
def _gripper_stall(env: GauntletEnv, mag: float, rng: np.random.Generator) -> dict[str, Any]:
    command = current_gripper_command(env)
    _stall_gripper(env, int(round(mag)), command)
    return {"held_command": command}


@injector("collision_nudge", "impulse", ("approach", "transport"), (0.3, 0.6), "m/s", 6,
          description="end effector knocked sideways")
def _collision_nudge(env: GauntletEnv, mag: float, rng: np.random.Generator) -> dict[str, Any]:
    import mujoco

    direction = _unit_horizontal(rng)
    m, d = env.sim.model._model, env.sim.data._data
    jacp = np.zeros((3, m.nv))
    mujoco.mj_jacSite(m, d, jacp, None, env._eef_site)
    idx = env._arm_qvel_idx
    jac = jacp[:, idx]  # (3, n_arm)
    dq = np.linalg.pinv(jac) @ (direction * mag)
    env.sim.data.qvel[idx] += dq
    return {"direction": direction.tolist()}


ERROR_TYPES = tuple(SPECS)


# ------------------------------------------------------------------------------------- use
def get_spec(error_type: str) -> InjectorSpec:
    """The spec of `error_type`, or an `UnknownNameError` that lists the known error types."""
    return SPECS.lookup(error_type)


def apply_injection(env: GauntletEnv, error_type: str, rng: np.random.Generator,
                    magnitude: float | None = None) -> dict[str, Any]:
    """Applies one error to `env` now; returns the parameters used (JSON-serialisable)."""
    spec = get_spec(error_type)
    if not spec.applies_to(env.spec.name):
        raise UnknownNameError(f"task for error type {error_type}", env.spec.name, spec.tasks or ())
    lo, hi = spec.magnitude_range
    mag = float(rng.uniform(lo, hi) if magnitude is None else magnitude)
    params: dict[str, Any] = {"magnitude": mag, "magnitude_unit": spec.magnitude_unit}
    params.update(spec.apply(env, mag, rng))
    _forward(env)
    return params


def hold_action(env: GauntletEnv) -> np.ndarray:
    """Zero motion, gripper keeps its current command: lets an injected error play out."""
    action = np.zeros(ACTION_DIM)
    action[GRIPPER_INDEX] = current_gripper_command(env)
    return action
