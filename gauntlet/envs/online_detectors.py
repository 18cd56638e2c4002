"""Online failure detectors: watch a policy's episode step by step and say when something went wrong.

Each detector reads one frame of the per-step signals `trajectory.TrajectoryRecorder` records
(`trajectory.SIGNALS`) at a time and keeps what it needs of the past itself, so it can run inside a
rollout without a second recording. They are the online counterparts of the offline classifiers
(`error_classifiers.py`): those label a finished window, these only decide *when* to look. A detector
that fired stays quiet for `cooldown_steps`, so one slow failure is reported once, not every step.

- drop:          the object was held clear of its resting height and is no longer held
- grasp_slip:    the held object slid down in the hand since the grasp began
- missed_grasp:  the fingers closed fully (on nothing) next to the object
- object_push:   the object, not held, was set moving fast sideways
- collision:     the arm's joint velocities jumped within one step (something hit it, or it hit something)
- no_progress:   neither the hand nor the object got closer to where the task needs them for a while
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gauntlet.runtime.config_args import require_at_least
from gauntlet.runtime.registry import Registry

Frame = dict[str, np.ndarray]  # one step of trajectory.SIGNALS: signal name -> that step's value


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of the online detectors (metres, seconds of sim time are steps here)."""

    lift_m: float = 0.02  # drop: the held object was at least this far above its resting height
    slip_m: float = 0.008  # grasp_slip: the object sank this far in the hand since the grasp began
    closed_gap_m: float = 0.012  # missed_grasp: finger opening below this is closed on nothing
    near_m: float = 0.05  # missed_grasp: the hand was this close to the object as it closed
    push_speed: float = 0.2  # object_push: horizontal object speed (m/s) that a push sets off
    # collision: jump of the arm's joint-velocity norm (rad/s) in one step. Uniform random actions
    # reach ~4 rad/s (measured on lift), so below ~5 every flailing step would count as a collision.
    collision_dqvel: float = 6.0
    no_progress_steps: int = 40  # no_progress: steps without getting `progress_m` closer
    progress_m: float = 0.01  # no_progress: what counts as getting closer
    cooldown_steps: int = 20  # a detector that fired is quiet this many steps

    def __post_init__(self) -> None:
        require_at_least(self, 1, "no_progress_steps", "cooldown_steps")


class Detector(Protocol):
    def update(self, frame: Frame) -> bool:  # True: the failure it watches for happened at this frame
        ...


def _opening(frame: Frame) -> float:
    """Finger gap: the two finger joints move in opposite directions."""
    return float(frame["gripper_qpos"][0] - frame["gripper_qpos"][1])


class DropDetector:
    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.rest_z: float | None = None  # the object's height in the episode's first frame
        self.held_up = False  # at the previous frame: held, and clear of its resting height

    def update(self, frame: Frame) -> bool:
        z = float(frame["obj_pos"][2])
        if self.rest_z is None:
            self.rest_z = z
        held = bool(frame["grasped"])
        fired = self.held_up and not held
        self.held_up = held and z > self.rest_z + self.cfg.lift_m
        return fired


class SlipDetector:
    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.grasp_offset_z: float | None = None  # object minus hand height when the grasp began

    def update(self, frame: Frame) -> bool:
        if not bool(frame["grasped"]):
            self.grasp_offset_z = None
            return False
        offset = float(frame["obj_pos"][2] - frame["eef_pos"][2])
        if self.grasp_offset_z is None:
            self.grasp_offset_z = offset
            return False
        if offset < self.grasp_offset_z - self.cfg.slip_m:
            self.grasp_offset_z = offset  # the slipped grasp is the new reference
            return True
        return False


class _RisingEdge:
    """Fires when `condition` becomes true (and `at_edge` holds then), not again while it stays true."""

    def __init__(self, cfg: DetectorConfig, start: bool = False):
        self.cfg = cfg
        self.before = start  # the condition at the previous frame

    def condition(self, frame: Frame) -> bool:
        raise NotImplementedError

    def at_edge(self, frame: Frame) -> bool:
        return True

    def update(self, frame: Frame) -> bool:
        now = self.condition(frame)
        fired = now and not self.before and self.at_edge(frame)
        self.before = now
        return fired


class MissedGraspDetector(_RisingEdge):
    """The fingers close fully while commanded closed, next to the object and not holding it."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__(cfg, start=True)  # an episode that starts closed has not just missed anything

    def condition(self, frame: Frame) -> bool:
        return _opening(frame) < self.cfg.closed_gap_m

    def at_edge(self, frame: Frame) -> bool:
        near = float(np.linalg.norm(frame["obj_pos"] - frame["eef_pos"])) < self.cfg.near_m
        return near and not bool(frame["grasped"]) and float(frame["gripper_cmd"]) > 0


class PushDetector(_RisingEdge):
    """The object, not held, starts moving fast sideways."""

    def condition(self, frame: Frame) -> bool:
        return float(np.linalg.norm(frame["obj_vel"][:2])) > self.cfg.push_speed and not bool(frame["grasped"])


class CollisionDetector:
    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.last: np.ndarray | None = None  # the previous frame's arm joint velocities

    def update(self, frame: Frame) -> bool:
        qvel = np.asarray(frame["arm_qvel"], dtype=np.float64)
        fired = self.last is not None and float(np.linalg.norm(qvel - self.last)) > self.cfg.collision_dqvel
        self.last = qvel
        return fired


class NoProgressDetector:
    """Progress: minus (hand-to-object + object-to-target distance); it must improve by `progress_m`
    within `no_progress_steps`, or the detector fires and starts counting again."""

    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.best: float | None = None
        self.since = 0  # frames since `best` last improved by progress_m

    def update(self, frame: Frame) -> bool:
        distance = float(np.linalg.norm(frame["eef_pos"] - frame["obj_pos"])
                         + np.linalg.norm(frame["obj_pos"] - frame["target_pos"]))
        if self.best is None or distance < self.best - self.cfg.progress_m:
            self.best, self.since = distance, 0
            return False
        self.since += 1
        if self.since >= self.cfg.no_progress_steps:
            self.best, self.since = distance, 0
            return True
        return False


# detector name -> its factory; names match the error types they resemble where there is one
DETECTORS: Registry[Callable[[DetectorConfig], Detector]] = Registry("online detector")
DETECTORS.register("drop", DropDetector)
DETECTORS.register("grasp_slip", SlipDetector)
DETECTORS.register("missed_grasp", MissedGraspDetector)
DETECTORS.register("object_push", PushDetector)
DETECTORS.register("collision", CollisionDetector)
DETECTORS.register("no_progress", NoProgressDetector)


class OnlineDetectors:
    """Every detector on one episode: `update(frame)` gives the names of those that fired at it."""

    def __init__(self, cfg: DetectorConfig | None = None, names: tuple[str, ...] | None = None):
        self.cfg = cfg or DetectorConfig()
        self.detectors = {name: DETECTORS.lookup(name)(self.cfg) for name in (names or DETECTORS.names())}
        self.quiet_until = dict.fromkeys(self.detectors, -1)  # name -> first frame it may fire again
        self.frame_index = -1

    def update(self, frame: Frame) -> list[str]:
        self.frame_index += 1
        fired = []
        for name, detector in self.detectors.items():
            # Every detector sees every frame (their memories stay current), cooling down or not.
            if detector.update(frame) and self.frame_index >= self.quiet_until[name]:
                fired.append(name)
                self.quiet_until[name] = self.frame_index + self.cfg.cooldown_steps
        return fired
