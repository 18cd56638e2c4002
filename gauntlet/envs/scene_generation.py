"""Builds error-recovery scenes from scripted-expert rollouts with injected errors.

For each (task, variant, error type, k): run the expert from a seeded reset until it reaches the
phase the error belongs to, inject, let the error play out for the injector's settle steps, and
capture the full state. Then let the expert try to recover from that exact state (oracle
validation) and let the error classifiers label the recorded trajectory.

A nominal job (error type `injectors.NOMINAL`) captures the task's start state after a seeded reset
instead: nothing is injected, and the oracle validation checks that the expert solves the task from it.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from gauntlet import __version__
from gauntlet.envs.env import EnvConfig, GauntletEnv
from gauntlet.envs.error_classifiers import CLASSIFIERS
from gauntlet.envs.experts import ScriptedExpert, make_expert
from gauntlet.envs.injectors import NOMINAL, NOMINAL_CATEGORY, SPECS, apply_injection, hold_action
from gauntlet.envs.scene_db import PROVENANCE_DEFAULTS, SCHEMA_VERSION, SceneRecord, default_origin
from gauntlet.envs.trajectory import TrajectoryRecorder
from gauntlet.keys import GRIPPER_INDEX


@dataclass(frozen=True)
class SceneJob:
    """One scene to generate."""

    task: str
    variant: str
    error_type: str  # an injector's error type, or NOMINAL for the task's untouched start state
    index: int  # k-th scene of this (task, variant, error_type)
    base_seed: int  # the run's --seed
    image_size: int
    approach_horizon: int  # steps the expert may take to reach the injection phase
    recovery_horizon: int  # steps the expert gets to recover (oracle validation)
    max_attempts: int  # seeds tried before giving up on this job
    validate: bool  # run the oracle recovery check

    @property
    def scene_id(self) -> str:
        return f"{self.task}-{self.variant}-{self.error_type}-{self.base_seed}-{self.index:04d}"

    def seed(self, attempt: int) -> int:
        # Stable across processes (unlike hash()) and distinct per job and attempt.
        key = f"{self.scene_id}:{attempt}".encode()
        return int(zlib.crc32(key)) % (2**31 - 1)


_ENVS: dict[tuple[str, str, int], GauntletEnv] = {}  # per-process env cache (a worker reuses envs)


def _env_for(job: SceneJob) -> GauntletEnv:
    key = (job.task, job.variant, job.image_size)
    if key not in _ENVS:
        _ENVS[key] = GauntletEnv(EnvConfig(task=job.task, variant=job.variant, image_size=job.image_size))
    return _ENVS[key]


def generate_scene(job: SceneJob) -> tuple[SceneRecord | None, str]:
    """(record, "") on success; (None, reason) when no seed reached the injection phase."""
    if job.error_type == NOMINAL:
        return _nominal_scene(job), ""
    env = _env_for(job)
    spec = SPECS[job.error_type]
    reason = ""
    for attempt in range(job.max_attempts):
        seed = job.seed(attempt)
        rng = np.random.default_rng(seed)
        phase = str(rng.choice(spec.phases))
        offset = int(rng.integers(0, 4))  # steps into the phase: varies the injection timing
        env.reset(seed)
        expert = make_expert(env, seed=seed)
        recorder = TrajectoryRecorder(window=10)
        if not _run_into_phase(env, expert, recorder, phase, offset, job.approach_horizon):
            reason = f"expert never reached phase {phase!r} within {job.approach_horizon} steps"
            continue
        inject_step = env.counters.steps
        params = _inject_and_settle(env, expert, recorder, job.error_type, rng)
        state = env.get_state()
        traj = recorder.arrays()
        labels = {name: clf(traj) for name, clf in CLASSIFIERS.items()}
        recovery_steps = oracle_recovery_steps(env, seed, job.recovery_horizon) if job.validate else -1
        row = _scene_row(job, env, phase, params, inject_step, seed, labels, recovery_steps)
        arrays = {f"state/{k}": v for k, v in state.items()}
        arrays.update(traj)
        return SceneRecord(row=row, arrays=arrays), ""
    return None, reason


def _nominal_scene(job: SceneJob) -> SceneRecord:
    """The task's start state after a reset with the scene's seed; nothing injected.

    The trajectory is that one frame before and after an empty "injection", so the classifiers run on
    it like on any scene (and say "none": nothing happened), and the oracle check tells whether the
    expert solves the task from the start, which is what makes the scene a fair baseline.
    """
    env = _env_for(job)
    seed = job.seed(0)
    env.reset(seed)
    recorder = TrajectoryRecorder(window=1)
    recorder.record(env, hold_action(env)[GRIPPER_INDEX])
    recorder.mark_injection()
    recorder.record(env, hold_action(env)[GRIPPER_INDEX])
    state = env.get_state()
    traj = recorder.arrays()
    labels = {name: clf(traj) for name, clf in CLASSIFIERS.items()}
    recovery_steps = oracle_recovery_steps(env, seed, job.recovery_horizon) if job.validate else -1
    params = {"magnitude": 0.0, "magnitude_unit": ""}
    row = _scene_row(job, env, "start", params, 0, seed, labels, recovery_steps)
    arrays = {f"state/{k}": v for k, v in state.items()}
    arrays.update(traj)
    return SceneRecord(row=row, arrays=arrays)


def _run_into_phase(env: GauntletEnv, expert: ScriptedExpert, recorder: TrajectoryRecorder, phase: str,
                    offset: int, horizon: int) -> bool:
    """Runs the expert until it has spent `offset` steps in `phase`; False if it never gets there."""
    steps_in_phase = -1
    for _ in range(horizon):
        if expert.phase == phase:
            steps_in_phase += 1
            if steps_in_phase >= offset:
                return True
        action = expert.act()
        recorder.record(env, action[GRIPPER_INDEX])
        env.step(action)
    return False


def _inject_and_settle(env: GauntletEnv, expert: ScriptedExpert, recorder: TrajectoryRecorder,
                       error_type: str, rng: np.random.Generator) -> dict[str, Any]:
    """Injects the error, then lets it play out for its settle steps; returns the injector's params."""
    recorder.record(env, hold_action(env)[GRIPPER_INDEX])
    params = apply_injection(env, error_type, rng)
    recorder.mark_injection()
    recorder.record(env, hold_action(env)[GRIPPER_INDEX])
    # The policy keeps acting while the error plays out (its commands are recorded, and may
    # be overridden by e.g. a stalled gripper): the trajectory shows command vs execution.
    for _ in range(SPECS[error_type].settle_steps):
        action = expert.act()
        env.step(action)
        recorder.record(env, action[GRIPPER_INDEX])
    return params


def oracle_recovery_steps(env: GauntletEnv, seed: int, horizon: int) -> int:
    """Steps a fresh expert needs to solve the task from here; -1 when it does not within `horizon`."""
    oracle = make_expert(env, seed=seed)
    for t in range(horizon):
        if env.step(oracle.act()):
            return t + 1
    return -1


def _scene_row(job: SceneJob, env: GauntletEnv, phase: str, params: dict[str, Any], inject_step: int,
               seed: int, labels: dict[str, str], recovery_steps: int) -> dict[str, Any]:
    """The scene's metadata row (columns: scene_db.SCENE_COLUMNS)."""
    spec = SPECS.get(job.error_type)  # None for a nominal scene
    return {
        "scene_id": job.scene_id,
        "task": job.task,
        "variant": job.variant,
        "error_type": job.error_type,
        "category": spec.category if spec else NOMINAL_CATEGORY,
        "phase": phase,
        "magnitude": float(params["magnitude"]),
        "magnitude_unit": spec.magnitude_unit if spec else "",
        "injection_params": json.dumps(params, sort_keys=True),
        "inject_step": int(inject_step),
        "settle_steps": int(spec.settle_steps) if spec else 0,
        "seed": int(seed),
        "env_config": env.config.to_json(),
        "fingerprint": env.fingerprint,
        "schema_version": SCHEMA_VERSION,
        "recoverable": recovery_steps >= 0,
        "recovery_steps": int(recovery_steps),
        "label_motion": labels["motion"],
        "label_grasp": labels["grasp"],
        "label_command": labels["command"],
        "gauntlet_version": __version__,
        "origin": default_origin(job.error_type),  # generated here: injected, or nominal
        **PROVENANCE_DEFAULTS,
    }


def _worker_init() -> None:
    # Each worker simulates on one core; BLAS threads would only fight over the two we have.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
