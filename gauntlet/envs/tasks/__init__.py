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

from gauntlet.envs.tasks.spec import PlacementRange, TaskScene, TaskSpec, Waypoints
from gauntlet.runtime.registry import Registry, UnknownNameError

__all__ = ["TASKS", "VARIANTS", "PlacementRange", "TaskScene", "TaskSpec", "Waypoints", "check_variant",
           "get_task"]

VARIANTS = ("D0", "D1")
# Every task, registered in module-name order (deterministic) as this package is imported.
TASKS: Registry[TaskSpec] = Registry("task")


def _register_task_modules() -> None:
    """Registers the `TASK` of every module of this package (a name declared twice is an error)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        task = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TASK", None)
        if isinstance(task, TaskSpec):  # spec.py and scene.py are helpers, not tasks
            TASKS.register(task.name, task)


_register_task_modules()


def get_task(name: str) -> TaskSpec:
    """The spec for `name`, or an `UnknownNameError` that lists the known tasks."""
    return TASKS.lookup(name)


def check_variant(variant: str) -> str:
    """`variant` itself when it is a known placement variant, else an `UnknownNameError`."""
    if variant not in VARIANTS:
        raise UnknownNameError("variant", variant, VARIANTS)
    return variant
