"""The task registry: every module of this package that defines `TASK` is a task.

Adding a task is adding one module here (its robosuite env, D0/D1 placement ranges, success
predicate and expert waypoints; see `spec.TaskSpec`) plus its tests; nothing else names tasks.

MimicGen defines D0 as the source-demo distribution (robosuite's default object placement) and
D1 as a wider one. MimicGen itself needs robosuite 1.4, so the variants are re-implemented on
robosuite 1.5 by widening the placement samplers; the D1 ranges are chosen in each task module, in
MimicGen's spirit (wider x/y ranges, free yaw) and kept reachable for the Panda arm.
"""

from __future__ import annotations

import importlib
import pkgutil

from gauntlet.envs.errors import UnknownTaskError
from gauntlet.envs.tasks.spec import PlacementRange, TaskScene, TaskSpec, Waypoints

__all__ = ["TASKS", "VARIANTS", "PlacementRange", "TaskScene", "TaskSpec", "Waypoints", "check_variant",
           "get_task"]

VARIANTS = ("D0", "D1")


def _discover() -> dict[str, TaskSpec]:
    """{name: spec} of the task modules in this package, in module-name order (deterministic)."""
    found: dict[str, TaskSpec] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        task = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TASK", None)
        if isinstance(task, TaskSpec):  # spec.py and scene.py are helpers, not tasks
            if task.name in found:
                raise RuntimeError(f"task {task.name!r} is declared twice ({info.name}.py)")
            found[task.name] = task
    return found


TASKS: dict[str, TaskSpec] = _discover()


def get_task(name: str) -> TaskSpec:
    """The spec for `name`, or an `UnknownTaskError` that lists the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError("task", name, sorted(TASKS)) from None


def check_variant(variant: str) -> str:
    """`variant` itself when it is a known placement variant, else an `UnknownTaskError`."""
    if variant not in VARIANTS:
        raise UnknownTaskError("variant", variant, list(VARIANTS))
    return variant
