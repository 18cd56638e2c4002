"""Every registered task declares all it needs in its one module, and the registry finds them all."""

from __future__ import annotations

import numpy as np
import pytest

from gauntlet.envs.tasks import TASKS, VARIANTS, check_variant, get_task
from gauntlet.envs.tasks.spec import PlacementRange, TaskSpec, Waypoints
from gauntlet.runtime.registry import UnknownNameError

WAYPOINT_HOOKS = ("place_target", "placed", "rest_z", "travel_z", "grasp_point", "grasp_heading",
                  "grasp_obstacle", "carry_yaw", "held_askew")


def test_the_four_benchmark_tasks_are_registered() -> None:
    assert {"lift", "stack", "square", "pick_place_can"} <= set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_registry_entry_is_complete(name: str) -> None:
    spec = TASKS[name]
    assert isinstance(spec, TaskSpec) and spec.name == name and get_task(name) is spec
    # robosuite env, prompt, the objects observed and the one grasped
    assert spec.robosuite_env and spec.instruction and spec.objects and spec.manipulated in spec.objects
    assert spec.object_state_dim == 7 * len(spec.objects) + 3
    # placement ranges for every variant
    assert set(spec.variants) == set(VARIANTS)
    for ranges in spec.variants.values():
        assert ranges and all(isinstance(r, PlacementRange) for r in ranges)
        for r in ranges:
            assert r.x_range[0] <= r.x_range[1] and r.y_range[0] <= r.y_range[1]
    # success predicate, grasp geoms and target
    assert callable(spec.success) and callable(spec.grasp_geoms) and callable(spec.reset_target)
    assert spec.live_target is None or callable(spec.live_target)
    # expert waypoints
    assert isinstance(spec.waypoints, Waypoints)
    assert all(callable(getattr(spec.waypoints, hook)) for hook in WAYPOINT_HOOKS)
    assert 0.0 <= spec.waypoints.yaw_period <= np.pi and spec.waypoints.carry_clearance > 0


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="known: .*lift"):
        get_task("juggle")
    with pytest.raises(UnknownNameError, match="known: D0, D1"):
        check_variant("D7")
    assert check_variant("D1") == "D1"
