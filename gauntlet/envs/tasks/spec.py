"""What a task declares: its robosuite env, placement ranges, success predicate and expert waypoints.

Each task module of this package builds one `TaskSpec` named `TASK`. Its hooks read the live
simulation through `TaskScene`, a protocol that `GauntletEnv` satisfies, so tasks never import the
env: the env imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gauntlet.envs.rotations import object_yaw


class TaskScene(Protocol):
    """The view of a live env that task hooks read (`GauntletEnv` provides it)."""

    spec: TaskSpec  # the task being run
    raw: Any  # the robosuite environment

    @property
    def sim(self) -> Any: ...  # robosuite's MjSim

    @property
    def eef_pos(self) -> np.ndarray: ...  # (3,) end-effector site position, m

    @property
    def target_pos(self) -> np.ndarray: ...  # (3,) where the manipulated object should end up, m

    def object_pose(self, body: str) -> tuple[np.ndarray, np.ndarray]: ...  # (pos, quat wxyz)


@dataclass(frozen=True)
class PlacementRange:
    """Where one placement sampler may put its objects (metres, relative to its reference)."""

    sampler: str | None  # name inside a SequentialCompositeSampler; None for a plain sampler
    x_range: tuple[float, float]  # (low, high) along the table's x axis
    y_range: tuple[float, float]  # (low, high) along the table's y axis
    rotation: tuple[float, float] | None = None  # yaw range in radians; None = uniform in [0, 2pi)
    # PickPlaceCan samples all four objects and then removes all but the can: letting the unused
    # ones overlap is what makes a narrow can range possible at all.
    ensure_valid_placement: bool = True


def object_heading(scene: TaskScene, current_yaw: float, period: float) -> tuple[float, float]:
    """Default grasp heading: the manipulated object's yaw, under the task's yaw symmetry."""
    return object_yaw(scene.object_pose(scene.spec.manipulated)[1]), period


def manipulated_position(scene: TaskScene) -> np.ndarray:
    """Default grasp point: the manipulated object's centre."""
    return scene.object_pose(scene.spec.manipulated)[0]


def no_obstacle(scene: TaskScene) -> np.ndarray | None:
    return None


def keep_yaw(scene: TaskScene, yaw: float, target: np.ndarray) -> float:
    return yaw


def never(scene: TaskScene) -> bool:
    return False


def above_table(height_m: float) -> Callable[[TaskScene], float]:
    """A height hook: `height_m` above the table top."""

    def height(scene: TaskScene) -> float:
        return float(scene.raw.table_offset[2]) + height_m

    return height


@dataclass(frozen=True, kw_only=True)
class Waypoints:
    """Where a task's scripted expert grasps, carries and places (metres; object-centre heights
    unless said otherwise). `experts.ScriptedExpert` runs the same script on every task's waypoints."""

    yaw_period: float  # gripper yaw symmetry of the grasp: pi/2 cube, pi nut handle, 0 = any (can)
    grasp_dz: float  # eef height relative to the grasp point when the fingers close
    carry_clearance: float  # object-centre height above the place target while transporting
    release_dz: float  # object-centre height above its resting target at which it is let go
    place_xy_tol: float  # object xy error under which the final descent may start
    release_xy_tol: float  # object xy error under which it may be released
    place_target: Callable[[TaskScene], np.ndarray]  # where the object's centre rests when solved
    placed: Callable[[TaskScene], bool]  # the object already sits there, released or not
    rest_z: Callable[[TaskScene], float]  # object-centre height when it stands on its support
    travel_z: Callable[[TaskScene], float]  # lowest eef height for moving between places
    grasp_point: Callable[[TaskScene], np.ndarray] = manipulated_position  # fingertips' centre at grasp
    # (scene, current gripper yaw, yaw_period) -> (heading the fingers close across, its period)
    grasp_heading: Callable[[TaskScene, float, float], tuple[float, float]] = object_heading
    grasp_obstacle: Callable[[TaskScene], np.ndarray | None] = no_obstacle  # a body fingers avoid
    carry_yaw: Callable[[TaskScene, float, np.ndarray], float] = keep_yaw  # (yaw, target) -> yaw held
    held_askew: Callable[[TaskScene], bool] = never  # held so it cannot be placed: set it down
    # Lift is solved while the object is held up at the target: the expert never lets go.
    holds_at_target: bool = False


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One manipulation task and what the rest of Gauntlet needs to know about it."""

    name: str  # Gauntlet's name for the task (CLI, scene rows)
    robosuite_env: str  # robosuite environment class
    instruction: str  # the language prompt sent to VLA policies
    objects: tuple[str, ...]  # robosuite body names whose poses form `observation/object_state`
    manipulated: str  # the body the gripper must grasp
    variants: dict[str, tuple[PlacementRange, ...]]  # variant (D0, D1) -> placement ranges
    success: Callable[[TaskScene], bool]  # the task predicate (agrees with robosuite's _check_success)
    grasp_geoms: Callable[[Any], list[str]]  # robosuite env -> collision geoms of the manipulated object
    reset_target: Callable[[TaskScene], np.ndarray]  # target fixed when an episode starts (in the state)
    waypoints: Waypoints  # the scripted expert's task-specific places
    live_target: Callable[[TaskScene], np.ndarray] | None = None  # a target that moves (stack: cube B)
    env_kwargs: tuple[tuple[str, object], ...] = ()  # extra robosuite constructor arguments

    @property
    def object_state_dim(self) -> int:
        # position (3) + quaternion xyzw (4) per object, plus the task target position (3).
        return 7 * len(self.objects) + 3
