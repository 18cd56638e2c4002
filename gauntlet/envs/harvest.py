"""Failure scenes from a policy's own rollouts: what happens inside the episode.

`HarvestOptions` travels with each work item to the rollout actor; `start(scene)` gives the episode a
`HarvestWatch`, which sees every step (`on_step`). The online detectors (`online_detectors.py`) read
the same per-step signals the scene generator records (`trajectory.signal_frame`). When one fires at
step s, the episode goes on as it would, and `after_steps` steps later the full simulator state is
captured exactly as scene generation captures it (`env.get_state()`), with the signal window around s
(`window` frames before, the rest after: the classifiers' injection index is s). When the episode ends,
`finish(env)` labels each capture with the three offline classifiers, validates it with the scripted
oracle from the restored state (`scene_generation.oracle_recovery_steps`) and returns them as
payloads for the driver, which writes the scenes (`platform/eval/harvest.py`). Captures of one episode
whose object poses agree within the tolerance are kept once (`same_place`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.envs.error_classifiers import CLASSIFIERS
from gauntlet.envs.injectors import NOMINAL
from gauntlet.envs.online_detectors import DetectorConfig, OnlineDetectors
from gauntlet.envs.scene_db import UNLABELLED
from gauntlet.envs.trajectory import TrajectoryRecorder, signal_frame
from gauntlet.keys import GRIPPER_INDEX
from gauntlet.runtime.config_args import require_at_least

if TYPE_CHECKING:
    from gauntlet.envs.env import GauntletEnv

# The signal-window entries that locate the objects at capture (its last frame): what `same_place` compares.
POSE_SIGNALS = ("traj/obj_pos", "traj/target_pos")


@dataclass(frozen=True)
class HarvestOptions:
    """How an episode is watched for failures (sent with each work item to the rollout actors)."""

    after_steps: int = 5  # steps the episode goes on after a detection before its state is captured
    window: int = 10  # signal frames kept before the detection, for the classifiers
    recovery_horizon: int = 400  # steps the scripted oracle gets to recover from a capture
    dedup_m: float = 0.01  # captures whose object and target positions all agree within this are one
    dedup_deg: float = 10.0  # ... and whose object orientations agree within this many degrees
    max_per_episode: int = 8  # captures kept per episode at most (the earliest)
    detectors: DetectorConfig = field(default_factory=DetectorConfig)  # the online detectors' thresholds

    def __post_init__(self) -> None:
        require_at_least(self, 1, "window", "recovery_horizon", "max_per_episode")
        require_at_least(self, 0, "after_steps")

    def start(self, scene: dict[str, Any]) -> HarvestWatch:
        """The watch over one episode that starts from `scene` (its metadata row)."""
        return HarvestWatch(self, scene)


@dataclass
class Capture:
    """A detected failure: where it was seen, and the state `after_steps` later."""

    step: int  # episode step at which the detectors fired (1-based, as Episode counts)
    detectors: list[str]  # which fired
    state: dict[str, np.ndarray] = field(default_factory=dict)  # env.get_state(), once taken
    traj: dict[str, np.ndarray] = field(default_factory=dict)  # "traj/..." window, injection index at `step`


class HarvestWatch:
    """One episode's observer: `on_step` after each env step, `finish` once at its end."""

    def __init__(self, options: HarvestOptions, scene: dict[str, Any]):
        self.options, self.scene = options, scene
        self.detectors = OnlineDetectors(options.detectors)
        self.frames: list[dict[str, np.ndarray]] = []  # frames[i] is after step i + 1
        self.captures: list[Capture] = []
        self.fingerprint = ""  # of the env the episode ran in

    def on_step(self, env: GauntletEnv, action: np.ndarray, step: int) -> None:
        frame = signal_frame(env, float(action[GRIPPER_INDEX]))
        self.frames.append(frame)
        fired = self.detectors.update(frame)
        if fired and len(self.captures) < self.options.max_per_episode:
            self.captures.append(Capture(step=step, detectors=fired))
        for capture in self.captures:
            if not capture.state and step == capture.step + self.options.after_steps:
                self._take(env, capture, step)

    def _take(self, env: GauntletEnv, capture: Capture, step: int) -> None:
        capture.state = env.get_state()
        self.fingerprint = env.fingerprint
        recorder = TrajectoryRecorder(window=self.options.window)
        recorder.pre.extend(self.frames[max(0, capture.step - 1 - self.options.window): capture.step - 1])
        recorder.mark_injection()
        recorder.post.extend(self.frames[capture.step - 1: step])
        capture.traj = recorder.arrays()

    def finish(self, env: GauntletEnv) -> list[dict[str, Any]]:
        """The episode's failure scenes as payloads {"fields": scene columns, "arrays": npz arrays}:
        captures taken before the episode ended, near-duplicates dropped, labelled and oracle-validated.
        Leaves `env` in some oracle's final state (the next episode restores its own scene)."""
        from gauntlet.envs.scene_generation import oracle_recovery_steps

        kept: list[Capture] = []
        for capture in self.captures:
            if capture.state and not any(same_place(capture.traj, k.traj, self.options) for k in kept):
                kept.append(capture)
        payloads = []
        seed = int(self.scene.get("seed", 0))
        for capture in kept:
            labels = {name: clf(capture.traj) for name, clf in CLASSIFIERS.items()}
            env.set_state(capture.state)
            recovery_steps = oracle_recovery_steps(env, seed, self.options.recovery_horizon)
            fields = {
                "error_type": majority_label(labels), "inject_step": capture.step, "source_step": capture.step,
                "settle_steps": self.options.after_steps, "fingerprint": self.fingerprint,
                "recoverable": recovery_steps >= 0, "recovery_steps": recovery_steps,
                "injection_params": json.dumps({"detectors": capture.detectors,
                                                "harvest": asdict(self.options)}, sort_keys=True),
                **{f"label_{name}": label for name, label in labels.items()},
            }
            arrays = {f"state/{k}": v for k, v in capture.state.items()}
            arrays.update(capture.traj)
            payloads.append({"fields": fields, "arrays": arrays})
        return payloads


def majority_label(labels: dict[str, str]) -> str:
    """The label at least two of the three classifiers give, unless it is "none"; else UNLABELLED."""
    label, votes = Counter(labels.values()).most_common(1)[0]
    return label if votes * 2 > len(labels) and label != NOMINAL else UNLABELLED


def same_place(a: dict[str, np.ndarray], b: dict[str, np.ndarray], options: HarvestOptions) -> bool:
    """Whether two captures' signal windows end with the objects in the same place: object and target
    positions within `dedup_m` and the object's orientation within `dedup_deg`."""
    for key in POSE_SIGNALS:
        if float(np.max(np.abs(np.asarray(a[key])[-1] - np.asarray(b[key])[-1]))) > options.dedup_m:
            return False
    qa, qb = np.asarray(a["traj/obj_quat"])[-1], np.asarray(b["traj/obj_quat"])[-1]
    cos_half = min(1.0, abs(float(np.dot(qa, qb))) / (np.linalg.norm(qa) * np.linalg.norm(qb) + 1e-12))
    return float(np.degrees(2 * np.arccos(cos_half))) <= options.dedup_deg
