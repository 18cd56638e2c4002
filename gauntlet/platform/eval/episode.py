"""Episodes: restore a scene, step it, ask the policy for a chunk only when the last one is used up.

Images are rendered only for those requests (and only if the policy needs them); privileged
policies also get the simulator state. Used by the rollout actors and, in-process, by benchmarks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gauntlet.envs.env import EnvConfig, GauntletEnv
from gauntlet.envs.scene_db import SceneDB
from gauntlet.keys import EPISODE_ID_KEY, PROMPT_KEY, SIM_STATE_KEY
from gauntlet.platform.eval.results import new_row, skipped_row


class PolicyUnavailableError(RuntimeError):
    """The policy could not answer (replica down past the retry budget, or it returned an error)."""


class ChunkSource(Protocol):
    """What an episode needs from a policy: its metadata and one chunk per observation."""

    needs_images: bool
    needs_sim_state: bool
    spec_keys: frozenset[str]
    image_shapes: dict[str, tuple[int, ...]]
    replan_steps: int  # execute this many actions of each chunk, then ask again; 0 = the whole chunk
    pad_images: bool  # resize images keeping their aspect ratio, padded (openpi's clients)

    def infer(self, obs: dict[str, Any]) -> np.ndarray:  # (H, D)
        ...


@dataclass(frozen=True)
class WorkItem:
    """One episode to run: the idempotency key plus what the actor needs to run it."""

    run_id: str
    scene_id: str
    policy: str  # policy label (results column)
    trial: int
    horizon: int

    @property
    def key(self) -> tuple:
        return (self.run_id, self.scene_id, self.policy, self.trial)

    @property
    def episode_id(self) -> str:
        return f"{self.run_id}/{self.scene_id}/{self.policy}/{self.trial}"


def filter_obs(obs: dict[str, Any], keys: frozenset[str],
               image_shapes: dict[str, tuple[int, ...]] | None = None, pad: bool = False) -> dict[str, Any]:
    """Only what the policy declared (plus prompt/episode id): nothing else crosses the wire.

    Camera images are resized to the size the policy declares (scenes are rendered at the scene's
    own camera size, which is part of its fingerprint, and policies are trained at theirs): with
    OpenCV's area filter, as Gauntlet's datasets are, or with `pad` as openpi's clients do (keep the
    aspect ratio, pad to the size), which is what openpi-trained models saw.
    """
    out = {k: v for k, v in obs.items() if k in keys or k in (PROMPT_KEY, EPISODE_ID_KEY)}
    for key, shape in (image_shapes or {}).items():
        img = out.get(key)
        if img is None or img.shape == shape:
            continue
        if pad:
            from gauntlet.platform.eval.openpi import resize_with_pad

            out[key] = resize_with_pad(img, shape[0], shape[1])
        else:
            import cv2

            out[key] = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return out


class EnvCache:
    """One env per distinct env configuration, built on first use and reused across episodes."""

    def __init__(self) -> None:
        self._envs: dict[str, GauntletEnv] = {}

    def get(self, env_config_json: str) -> GauntletEnv:
        if env_config_json not in self._envs:
            cfg = json.loads(env_config_json)
            cfg["cameras"] = tuple(cfg.get("cameras", ()))
            self._envs[env_config_json] = GauntletEnv(EnvConfig(**cfg))
        return self._envs[env_config_json]


def run_episode(db: SceneDB, envs: EnvCache, item: WorkItem, scene: dict[str, Any], policy: ChunkSource,
                worker: str, code_version: str) -> dict[str, Any]:
    """Runs one episode and returns its result row; a scene that cannot be restored is skipped."""
    start = time.perf_counter()
    try:
        env = envs.get(scene["env_config"])
        db.restore(env, item.scene_id)
    except Exception as exc:  # noqa: BLE001 - one bad scene is recorded, never fatal
        return skipped_row(item, scene, f"restore failed: {type(exc).__name__}: {exc}", worker, code_version)
    row = new_row(item, scene, worker, code_version)
    chunk: list[np.ndarray] = []
    latencies: list[float] = []
    for step in range(1, item.horizon + 1):
        if not chunk:
            obs = env.observe(images=policy.needs_images)
            if policy.needs_sim_state:
                obs[SIM_STATE_KEY] = env.get_state()
            obs[EPISODE_ID_KEY] = item.episode_id
            t = time.perf_counter()
            actions = policy.infer(filter_obs(obs, policy.spec_keys, policy.image_shapes, policy.pad_images))
            latencies.append((time.perf_counter() - t) * 1e3)
            # openpi's clients execute only the first `replan_steps` actions, then ask again.
            chunk = list(np.asarray(actions, dtype=np.float64))[: policy.replan_steps or None]  # (H, D)
            row["replan_steps"] = row["replan_steps"] or len(chunk)
        if env.step(chunk.pop(0)):
            row.update(success=True, recovery_step=step)
            row["steps"] = step
            break
        row["steps"] = step
    if latencies:
        row.update(inference_calls=len(latencies), latency_ms_mean=float(np.mean(latencies)),
                   latency_ms_p50=float(np.median(latencies)), latency_ms_max=float(np.max(latencies)))
    row["wall_s"] = time.perf_counter() - start
    return row
