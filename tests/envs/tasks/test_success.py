"""Gauntlet's success predicates agree with robosuite's own `_check_success` along real rollouts."""

from __future__ import annotations

import numpy as np
import pytest

from gauntlet.envs.env import make_env
from gauntlet.envs.experts import make_expert
from gauntlet.envs.tasks.lift import lift_success
from gauntlet.envs.tasks.pick_place_can import can_success
from gauntlet.envs.tasks.stack import stack_success


@pytest.mark.parametrize("task", ["lift", "stack", "square", "pick_place_can"])
def test_predicate_matches_robosuite_along_an_expert_rollout(task: str) -> None:
    env = make_env(task, "D0", image_size=16)
    env.reset(0)
    expert = make_expert(env, seed=0)
    ours, theirs = [], []
    for _ in range(400):
        ours.append(env.step(expert.act()))
        theirs.append(bool(env.raw._check_success()))
        if ours[-1] and theirs[-1]:
            break
    ours_a, theirs_a = np.array(ours), np.array(theirs)
    assert theirs_a.any(), "the expert should solve D0 seed 0"
    assert ours_a[-1] and theirs_a[-1]
    assert (ours_a == theirs_a).mean() >= 0.98


def test_predicates_on_hand_made_states() -> None:
    assert lift_success(np.array([0, 0, 0.85]), table_z=0.8)
    assert not lift_success(np.array([0, 0, 0.83]), table_z=0.8)
    a, b = np.array([0, 0, 0.87]), np.array([0, 0, 0.825])
    assert stack_success(a, b, a_grasped=False, a_touches_b=True)
    assert not stack_success(a, b, a_grasped=True, a_touches_b=True)
    assert not stack_success(a, b, a_grasped=False, a_touches_b=False)
    bin2, size = np.array([0.1, 0.28, 0.8]), np.array([0.39, 0.49, 0.82])
    far = np.array([0.1, 0.28, 1.2])
    assert can_success(np.array([0.1, 0.3, 0.85]), bin2, size, eef_pos=far)
    assert not can_success(np.array([0.1, -0.25, 0.85]), bin2, size, eef_pos=far)
