"""Builds error-recovery scenes from scripted-expert rollouts with injected errors.

For each (task, variant, error type, k): run the expert from a seeded reset until it reaches the
phase the error belongs to, inject, let the error play out for the injector's settle steps, and
capture the full state. Then let the expert try to recover from that exact state (oracle
validation) and let the error classifiers label the recorded trajectory.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gauntlet.envs.env import EnvConfig, GauntletEnv
from gauntlet.envs.injectors import SPECS, apply_injection, hold_action
from gauntlet.envs.scene_db import SCHEMA_VERSION, SceneRecord
from gauntlet.envs.trajectory import TrajectoryRecorder


@dataclass(frozen=True)
class SceneJob:
    """One scene to generate."""

    task: str
    variant: str
    error_type: str
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
    from gauntlet import __version__
    from gauntlet.envs.error_classifiers import CLASSIFIERS
    from gauntlet.envs.experts import make_expert

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
        steps_in_phase = -1
        for _ in range(job.approach_horizon):
            if expert.phase == phase:
                steps_in_phase += 1
                if steps_in_phase >= offset:
                    break
            action = expert.act()
            recorder.record(env, action[6])
            env.step(action)
        else:
            reason = f"expert never reached phase {phase!r} within {job.approach_horizon} steps"
            continue
        inject_step = env.counters.steps
        recorder.record(env, hold_action(env)[6])
        params = apply_injection(env, job.error_type, rng)
        recorder.mark_injection()
        recorder.record(env, hold_action(env)[6])
        # The policy keeps acting while the error plays out (its commands are recorded, and may
        # be overridden by e.g. a stalled gripper): the trajectory shows command vs execution.
        for _ in range(spec.settle_steps):
            action = expert.act()
            env.step(action)
            recorder.record(env, action[6])
        state = env.get_state()
        traj = recorder.arrays()
        labels = {name: clf(traj) for name, clf in CLASSIFIERS.items()}
        recoverable, recovery_steps = False, -1
        if job.validate:
            oracle = make_expert(env, seed=seed)
            for t in range(job.recovery_horizon):
                if env.step(oracle.act()):
                    recoverable, recovery_steps = True, t + 1
                    break
        row: dict[str, Any] = {
            "scene_id": job.scene_id,
            "task": job.task,
            "variant": job.variant,
            "error_type": job.error_type,
            "category": spec.category,
            "phase": phase,
            "magnitude": float(params["magnitude"]),
            "magnitude_unit": spec.magnitude_unit,
            "injection_params": json.dumps(params, sort_keys=True),
            "inject_step": int(inject_step),
            "settle_steps": int(spec.settle_steps),
            "seed": int(seed),
            "env_config": json.dumps(asdict(env.config), sort_keys=True),
            "fingerprint": env.fingerprint,
            "schema_version": SCHEMA_VERSION,
            "recoverable": bool(recoverable),
            "recovery_steps": int(recovery_steps),
            "label_motion": labels["motion"],
            "label_grasp": labels["grasp"],
            "label_command": labels["command"],
            "gauntlet_version": __version__,
        }
        arrays = {f"state/{k}": v for k, v in state.items()}
        arrays.update(traj)
        return SceneRecord(row=row, arrays=arrays), ""
    return None, reason


def _worker_init() -> None:
    # Each worker simulates on one core; BLAS threads would only fight over the two we have.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
