"""The task registry: robosuite tasks with MimicGen-style D0/D1 placement variants.

MimicGen defines D0 as the source-demo distribution (robosuite's default object placement) and
D1 as a wider one. MimicGen itself needs robosuite 1.4, so the variants are re-implemented on
robosuite 1.5 by widening the placement samplers; the D1 ranges are chosen here, in MimicGen's
spirit (wider x/y ranges, free yaw) and kept reachable for the Panda arm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gauntlet.envs.errors import UnknownTaskError

VARIANTS = ("D0", "D1")


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


@dataclass(frozen=True)
class TaskSpec:
    """One manipulation task and what the rest of Gauntlet needs to know about it."""

    name: str  # Gauntlet's name for the task (CLI, scene rows)
    robosuite_env: str  # robosuite environment class
    instruction: str  # the language prompt sent to VLA policies
    objects: tuple[str, ...]  # robosuite body names whose poses form `observation/object_state`
    manipulated: str  # the body the gripper must grasp
    variants: dict[str, tuple[PlacementRange, ...]] = field(default_factory=dict)  # variant -> ranges
    env_kwargs: tuple[tuple[str, object], ...] = ()  # extra robosuite constructor arguments

    @property
    def object_state_dim(self) -> int:
        # position (3) + quaternion xyzw (4) per object, plus the task target position (3).
        return 7 * len(self.objects) + 3


TASKS: dict[str, TaskSpec] = {
    "lift": TaskSpec(
        name="lift",
        robosuite_env="Lift",
        instruction="pick up the red cube",
        objects=("cube_main",),
        manipulated="cube_main",
        variants={
            "D0": (PlacementRange(None, (-0.03, 0.03), (-0.03, 0.03)),),
            "D1": (PlacementRange(None, (-0.15, 0.15), (-0.15, 0.15)),),
        },
    ),
    "stack": TaskSpec(
        name="stack",
        robosuite_env="Stack",
        instruction="stack the red cube on the green cube",
        objects=("cubeA_main", "cubeB_main"),
        manipulated="cubeA_main",
        variants={
            "D0": (PlacementRange(None, (-0.08, 0.08), (-0.08, 0.08)),),
            "D1": (PlacementRange(None, (-0.16, 0.16), (-0.16, 0.16)),),
        },
    ),
    "square": TaskSpec(
        name="square",
        robosuite_env="NutAssemblySquare",
        instruction="put the square nut on the square peg",
        objects=("SquareNut_main",),
        manipulated="SquareNut_main",
        variants={
            "D0": (PlacementRange("SquareNutSampler", (-0.115, -0.11), (0.11, 0.225)),),
            "D1": (PlacementRange("SquareNutSampler", (-0.2, -0.02), (0.0, 0.26)),),
        },
    ),
    "pick_place_can": TaskSpec(
        name="pick_place_can",
        robosuite_env="PickPlaceCan",
        instruction="put the can in its bin",
        objects=("Can_main",),
        manipulated="Can_main",
        variants={
            "D0": (PlacementRange("CollisionObjectSampler", (-0.06, 0.06), (-0.08, 0.08), None, False),),
            "D1": (PlacementRange("CollisionObjectSampler", (-0.145, 0.145), (-0.195, 0.195), None, False),),
        },
    ),
}


def get_task(name: str) -> TaskSpec:
    """The spec for `name`, or an `UnknownTaskError` that lists the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError("task", name, sorted(TASKS)) from None


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise UnknownTaskError("variant", variant, list(VARIANTS))
    return variant
