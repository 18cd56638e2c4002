"""The rollout actor: an asyncio Ray actor running up to `--envs-per-actor` episodes at once.

Each `run(item)` call is one episode, a coroutine on the actor's event loop. An episode that waits
for its policy's answer yields the loop, which steps the actor's other episodes; so the actor's core
keeps simulating while requests are in flight. The episodes on one served policy ask in rounds
(request_rounds): their requests leave together and reach the replica as one batch. The driver
decides how many `run` calls an actor has at a time.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from gauntlet.platform.eval.env_cache import EnvCache
from gauntlet.platform.eval.episode import (
    ChunkSource,
    PolicyUnavailableError,
    WorkItem,
    run_episode_async,
)
from gauntlet.platform.eval.request_rounds import RequestRounds, Seats
from gauntlet.platform.eval.results import skipped_row
from gauntlet.platform.eval.sources import open_source
from gauntlet.platform.eval.targets import PolicyTarget


# An async actor runs each concurrency group's coroutines on that group's one event-loop thread.
# `run()` is in the default group: every env is built, stepped and rendered on that one thread (an EGL
# context is current on one thread only; rendering from another fails with EGL_BAD_ACCESS).
# `ready()` has its own group, hence its own thread, so it answers while episodes are stepping: the
# driver's liveness ping tells a busy actor from a dead one (e.g. on a node that vanished).
@ray.remote(max_restarts=0, concurrency_groups={"ping": 1})
class RolloutActor:
    def __init__(self, db_path: str, targets: list[PolicyTarget], scenes: dict[str, dict[str, Any]],
                 code_version: str, envs_per_actor: int = 1):
        os.environ.setdefault("MUJOCO_GL", "egl")
        from gauntlet.envs.rendering import render_on_gpus
        from gauntlet.envs.scene_db import SceneDB

        render_on_gpus(ray.get_gpu_ids())  # before any env (and its EGL context) is built

        self.db = SceneDB.open(db_path)
        self.scenes = scenes
        self.targets = {t.label: t for t in targets}
        # label -> the source being opened or open: concurrent first episodes share one connection.
        self.sources: dict[str, asyncio.Future[ChunkSource]] = {}
        # label -> the request rounds of a served policy (its episodes on this actor ask together).
        self.rounds = {t.label: RequestRounds() for t in targets if t.kind == "serve"}
        # `envs_per_actor` episodes at once; the driver sends one item more, which waits for a seat.
        self.seats = Seats(envs_per_actor)
        # Room for the episodes in flight plus as many idle envs, kept for the next configurations.
        self.envs = EnvCache(capacity=2 * envs_per_actor)
        self.code_version = code_version
        ctx = ray.get_runtime_context()
        self.name = f"{ctx.get_node_id()[:8]}/{ctx.get_actor_id()[:8]}"

    @ray.method(concurrency_group="ping")
    async def ready(self) -> str:
        return self.name

    async def run(self, item: WorkItem) -> dict[str, Any]:
        scene = self.scenes[item.scene_id]
        rounds = self.rounds.get(item.policy)
        await self.seats.take(rounds)
        try:
            source = await self._source(item.policy)
            return await run_episode_async(self.db, self.envs, item, scene, source, self.name, self.code_version,
                                           rounds)
        except Exception as exc:  # noqa: BLE001 - the episode is recorded as skipped, the actor lives on
            return skipped_row(item, scene, f"{type(exc).__name__}: {exc}", self.name, self.code_version)
        finally:
            self.seats.give_back(rounds)

    async def _source(self, label: str) -> ChunkSource:
        opening = self.sources.get(label)
        if opening is None:
            opening = self.sources[label] = asyncio.ensure_future(self._open(self.targets[label]))
        try:
            return await opening
        except Exception:
            if self.sources.get(label) is opening:
                del self.sources[label]  # the next episode tries again
            raise

    @staticmethod
    async def _open(target: PolicyTarget) -> ChunkSource:
        try:
            return await open_source(target)
        except PolicyUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - named as what it is: the policy cannot be reached
            raise PolicyUnavailableError(f"cannot reach {target.label}: {type(exc).__name__}: {exc}") from exc

    async def pid(self) -> int:
        return os.getpid()
