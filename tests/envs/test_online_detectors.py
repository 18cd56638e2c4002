"""The online failure detectors on synthetic signal frames, and the harvest's labelling and near-duplicate
rules on hand-made windows."""

from __future__ import annotations

import numpy as np
import pytest

from gauntlet.envs.harvest import HarvestOptions, majority_label, same_place
from gauntlet.envs.online_detectors import DETECTORS, DetectorConfig, OnlineDetectors
from gauntlet.envs.scene_db import UNLABELLED
from gauntlet.envs.trajectory import SIGNALS

CFG = DetectorConfig()
REST = np.array([0.0, 0.0, 0.82])  # the object on the table


def frame(obj=REST, eef=(0.0, 0.0, 1.0), grasped=False, opening=0.08, cmd=-1.0, obj_vel=(0.0, 0.0, 0.0),
          qvel=(0.0,) * 7, target=(0.0, 0.0, 0.9), quat=(1.0, 0.0, 0.0, 0.0)) -> dict[str, np.ndarray]:
    """One step of trajectory.SIGNALS."""
    out = {"eef_pos": np.array(eef, float), "obj_pos": np.array(obj, float), "obj_quat": np.array(quat, float),
           "obj_vel": np.array(obj_vel, float), "target_pos": np.array(target, float),
           "gripper_qpos": np.array([opening / 2, -opening / 2]), "gripper_cmd": np.array(cmd),
           "gripper_applied": np.array(cmd), "arm_qvel": np.asarray(qvel, float), "grasped": np.array(grasped)}
    assert set(out) == set(SIGNALS)
    return out


def fired(name: str, frames: list[dict[str, np.ndarray]]) -> list[int]:
    """The frame indices at which detector `name` fires."""
    detector = DETECTORS.lookup(name)(CFG)
    return [i for i, f in enumerate(frames) if detector.update(f)]


def test_drop_fires_when_a_lifted_object_leaves_the_hand_not_when_set_down() -> None:
    lifted = REST + [0, 0, 0.1]
    carried = [frame(REST, grasped=True), frame(lifted, grasped=True), frame(lifted, grasped=True)]
    assert fired("drop", [*carried, frame(lifted - [0, 0, 0.01], grasped=False)]) == [3]
    # Released at its resting height (put down, or never lifted): no drop.
    assert fired("drop", [frame(REST, grasped=True), frame(REST + [0, 0, 0.01], grasped=True), frame(REST)]) == []


def test_grasp_slip_fires_when_the_object_sinks_in_the_hand() -> None:
    eef = REST + [0, 0, 0.02]
    frames = [frame(REST, eef=eef, grasped=True), frame(REST, eef=eef, grasped=True),
              frame(REST - [0, 0, 0.004], eef=eef, grasped=True),  # 4 mm: within slip_m
              frame(REST - [0, 0, 0.012], eef=eef, grasped=True)]
    assert fired("grasp_slip", frames) == [3]
    # Hand and object rising together is no slip.
    assert fired("grasp_slip", [frame(REST + [0, 0, d], eef=eef + [0, 0, d], grasped=True) for d in (0, .05, .1)]) == []


def test_missed_grasp_fires_when_fingers_close_on_nothing_next_to_the_object() -> None:
    near = REST + [0.0, 0.0, 0.03]
    closing = [frame(eef=near, opening=0.08, cmd=1.0), frame(eef=near, opening=0.04, cmd=1.0),
               frame(eef=near, opening=0.005, cmd=1.0)]
    assert fired("missed_grasp", closing) == [2]
    # The same close far from the object, or closing on it (grasped), is no missed grasp.
    far = REST + [0.3, 0.0, 0.2]
    assert fired("missed_grasp", [frame(eef=far, opening=0.08, cmd=1.0), frame(eef=far, opening=0.005, cmd=1.0)]) == []
    assert fired("missed_grasp", [frame(eef=near, opening=0.08, cmd=1.0),
                                  frame(eef=near, opening=0.005, cmd=1.0, grasped=True)]) == []


def test_push_fires_once_when_a_free_object_is_set_moving() -> None:
    frames = [frame(), frame(obj_vel=(0.5, 0.0, 0.0)), frame(obj_vel=(0.4, 0.0, 0.0)), frame(),
              frame(obj_vel=(0.0, 0.3, 0.0))]
    assert fired("object_push", frames) == [1, 4]
    assert fired("object_push", [frame(), frame(obj_vel=(0.5, 0, 0), grasped=True)]) == []  # carried, not pushed
    assert fired("object_push", [frame(), frame(obj_vel=(0, 0, -0.5))]) == []  # falling, not pushed


def test_collision_fires_on_a_jump_of_the_arm_joint_velocities() -> None:
    calm = np.full(7, 0.3)
    assert fired("collision", [frame(qvel=calm), frame(qvel=calm + 0.5), frame(qvel=calm + [7, 0, 0, 0, 0, 0, 0])]) == [2]


def test_no_progress_fires_after_the_configured_steps_without_getting_closer() -> None:
    n = CFG.no_progress_steps
    still = [frame() for _ in range(2 * n + 1)]
    assert fired("no_progress", still) == [n, 2 * n]  # and starts counting again after firing
    # The hand approaching the object by 2 cm a step keeps resetting the count.
    approach = [frame(eef=REST + [0, 0, 1.0 - 0.02 * i]) for i in range(n + 5)]
    assert fired("no_progress", approach) == []


def test_online_detectors_cool_down_and_report_every_name_that_fires() -> None:
    det = OnlineDetectors(DetectorConfig(cooldown_steps=3), names=("object_push", "collision"))
    calm, jump = np.zeros(7), np.full(7, 5.0)
    # Frame 3's push comes while object_push cools down (it fired at 1); frame 5 is past it.
    frames = [frame(), frame(obj_vel=(1, 0, 0), qvel=jump), frame(qvel=jump), frame(obj_vel=(1, 0, 0), qvel=jump),
              frame(qvel=jump), frame(obj_vel=(1, 0, 0), qvel=calm)]
    assert [det.update(f) for f in frames] == [[], ["object_push", "collision"], [], [], [], ["object_push", "collision"]]
    with pytest.raises(ValueError, match="online detector 'bogus'"):
        OnlineDetectors(names=("bogus",))


def test_majority_label_needs_two_votes_for_an_error() -> None:
    assert majority_label({"motion": "drop", "grasp": "drop", "command": "none"}) == "drop"
    assert majority_label({"motion": "drop", "grasp": "object_push", "command": "none"}) == UNLABELLED
    assert majority_label({"motion": "none", "grasp": "none", "command": "drop"}) == UNLABELLED


def test_same_place_compares_positions_and_orientation_within_tolerance() -> None:
    opts = HarvestOptions(dedup_m=0.01, dedup_deg=10.0)

    def window(shift=0.0, yaw_deg=0.0) -> dict[str, np.ndarray]:
        half = np.radians(yaw_deg) / 2
        return {"traj/obj_pos": np.array([[9, 9, 9], REST + [shift, 0, 0]]), "traj/target_pos": np.zeros((2, 3)),
                "traj/obj_quat": np.array([[1, 0, 0, 0], [np.cos(half), 0, 0, np.sin(half)]])}

    assert same_place(window(), window(0.005, 5.0), opts)  # only the last frame counts
    assert not same_place(window(), window(0.02), opts)
    assert not same_place(window(), window(0.0, 30.0), opts)
