"""The rollout actor: a Ray actor with its envs, pulling work items one at a time from the driver."""

from __future__ import annotations

import os
from typing import Any

import ray

from gauntlet.platform.eval.episode import EnvCache, PolicyUnavailableError, WorkItem, run_episode
from gauntlet.platform.eval.results import skipped_row
from gauntlet.platform.eval.sources import make_source
from gauntlet.platform.eval.targets import PolicyTarget


# `ready()` has its own concurrency group so it answers while `run()` is busy: the driver's
# liveness ping tells a busy actor from a dead one (e.g. on a node that vanished without notice).
# `run()` stays in the default group, a single thread: an EGL context is current on one thread only,
# and rendering from another thread fails with EGL_BAD_ACCESS.
@ray.remote(max_restarts=0, concurrency_groups={"ping": 1})
class RolloutActor:
    def __init__(self, db_path: str, targets: list[PolicyTarget], scenes: dict[str, dict[str, Any]],
                 code_version: str):
        os.environ.setdefault("MUJOCO_GL", "egl")
        from gauntlet.envs.scene_db import SceneDB

        self.db = SceneDB.open(db_path)
        self.scenes = scenes
        self.targets = {t.label: t for t in targets}
        self.sources: dict[str, Any] = {}
        self.envs = EnvCache()
        self.code_version = code_version
        ctx = ray.get_runtime_context()
        self.name = f"{ctx.get_node_id()[:8]}/{ctx.get_actor_id()[:8]}"

    @ray.method(concurrency_group="ping")
    def ready(self) -> str:
        return self.name

    def run(self, item: WorkItem) -> dict[str, Any]:
        scene = self.scenes[item.scene_id]
        try:
            if item.policy not in self.sources:
                try:
                    self.sources[item.policy] = make_source(self.targets[item.policy])
                except PolicyUnavailableError:
                    raise
                except Exception as exc:  # noqa: BLE001 - named as what it is: the policy cannot be reached
                    raise PolicyUnavailableError(f"cannot reach {item.policy}: {type(exc).__name__}: {exc}") from exc
            return run_episode(self.db, self.envs, item, scene, self.sources[item.policy], self.name,
                               self.code_version)
        except Exception as exc:  # noqa: BLE001 - the episode is recorded as skipped, the actor lives on
            return skipped_row(item, scene, f"{type(exc).__name__}: {exc}", self.name, self.code_version)

    def pid(self) -> int:
        return os.getpid()
