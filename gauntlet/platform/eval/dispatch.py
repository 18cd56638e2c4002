"""The eval driver's work queue: rollout actors pull items; dead actors are replaced.

Each actor runs `envs_per_actor` episodes at once and holds one item more, waiting for a seat
(`request_rounds.Seats`): when an episode ends, the next starts in the actor at once instead of after
a round trip to the driver. Work is pulled (an actor gets its next item as soon as one of its
episodes finishes), so a slow scene never idles the others. An actor that dies, or stops
answering liveness pings, is killed and replaced, and all its in-flight items go back to the front
of the queue, in their order. Finished rows go to the results store in batches of `write_every`.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from gauntlet.platform.eval.config import EvalConfig
from gauntlet.platform.eval.episode import WorkItem
from gauntlet.platform.eval.results import ResultsStore
from gauntlet.platform.eval.status import StatusLine
from gauntlet.platform.eval.targets import PolicyTarget
from gauntlet.platform.eval.video import VIDEO_KEY, write_video

QUEUED_PER_ACTOR = 1  # items an actor holds beyond its envs: the next episode is there when one ends


class Dispatcher:
    """Runs `pending` on `cfg.actors` rollout actors until every item has a row."""

    def __init__(self, cfg: EvalConfig, scenes: dict[str, dict[str, Any]], targets: list[PolicyTarget],
                 version: str, store: ResultsStore, status: StatusLine, replay: bool = False):
        self.cfg = cfg
        self.replay = replay  # items re-run only for their videos: rows are not stored again
        self.scenes = scenes
        self.targets = targets
        self.version = version
        self.store = store
        self.status = status
        self.pending: deque[WorkItem] = deque()
        self.actors: dict[int, Any] = {}  # slot -> actor handle
        self.in_flight: dict[Any, tuple[int, WorkItem]] = {}  # ObjectRef -> (actor slot, item)
        self.starting: dict[int, Any] = {}  # slot -> ready ping of a new actor
        self.pings: dict[int, tuple[Any, float]] = {}  # busy slot -> (outstanding liveness ping, sent at)
        self.buffer: list[dict[str, Any]] = []  # rows not yet written
        self.ran = 0
        self.replaced = 0
        self.idle_since: float | None = None  # since when no item has been in flight (no actor working)
        self.idle_said = 0.0  # when the last "waiting for actors" notice was printed

    def _new_actor(self) -> Any:
        from gauntlet.platform.eval.rollout_actor import RolloutActor

        resources = {self.cfg.actor_resource: 1} if self.cfg.actor_resource else None
        return RolloutActor.options(num_cpus=self.cfg.actor_cpus, num_gpus=self.cfg.actor_gpus, max_restarts=0,
                                    resources=resources).remote(
            str(Path(self.cfg.scenes).resolve()), self.targets, self.scenes, self.version, self.cfg.envs_per_actor)

    def _start(self, slot: int) -> None:
        # A new actor receives work only once it has answered a ping (it may wait for resources).
        self.actors[slot] = self._new_actor()
        self.starting[slot] = self.actors[slot].ready.remote()

    def _fill(self) -> None:
        """Gives started actors items until each has `envs_per_actor` + QUEUED_PER_ACTOR in flight,
        least loaded first (so the last items of a run spread over the actors rather than queue on one)."""
        load = Counter(s for s, _ in self.in_flight.values())
        started = [slot for slot in self.actors if slot not in self.starting]
        while self.pending and started:
            slot = min(started, key=lambda s: load[s])
            # An extra item only while there is more work than actors: a queued item cannot move to
            # another actor, so near the end it would wait behind a long episode while others idle.
            queued = QUEUED_PER_ACTOR if len(self.pending) > len(started) else 0
            if load[slot] >= self.cfg.envs_per_actor + queued:
                break
            item = self.pending.popleft()
            self.in_flight[self.actors[slot].run.remote(item)] = (slot, item)
            load[slot] += 1

    def _replace(self, slot: int, why: str) -> None:
        """The actor (or its node) is gone: its items go back to the queue, the slot gets a new actor."""
        import ray

        lost = [ref for ref, (s, _) in self.in_flight.items() if s == slot]
        for ref in reversed(lost):  # the earliest sent goes first again
            self.pending.appendleft(self.in_flight.pop(ref)[1])
        self.replaced += 1
        self.pings.pop(slot, None)
        print(f"[eval] actor {slot} lost ({why}); re-queued {len(lost)} item(s), starting a replacement", flush=True)
        try:
            ray.kill(self.actors[slot], no_restart=True)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        self._start(slot)

    def _check_starting(self) -> None:
        import ray

        for slot, ref in list(self.starting.items()):
            done, _ = ray.wait([ref], timeout=0)
            if done:
                del self.starting[slot]
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - could not even start: try again
                    self._replace(slot, f"failed to start: {type(exc).__name__}")

    def _collect(self) -> None:
        """Waits up to 2 s for a finished episode and records what finished."""
        import ray

        ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=2.0)
        for ref in ready:
            if ref not in self.in_flight:
                continue
            slot, _ = self.in_flight[ref]
            try:
                row = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as exc:
                self._replace(slot, type(exc).__name__)
                continue
            self.in_flight.pop(ref)
            video = row.pop(VIDEO_KEY, None)
            if video is not None:
                write_video(Path(self.cfg.out), row, video)
            if self.replay:
                continue  # a replay for its video: the episode's row is already stored
            self.buffer.append(row)
            self.status.add(row)
            self.ran += 1
            if len(self.buffer) >= self.cfg.write_every:
                self.store.write(self.buffer)
                self.buffer = []

    def _ping_busy(self, now: float) -> None:
        """Liveness: a node can vanish without its tasks failing promptly; a ping that stays
        unanswered for ping_timeout_s marks the actor dead."""
        import ray

        timeout_s = self.cfg.ping_timeout_s
        for slot in {s for s, _ in self.in_flight.values()}:
            ref, sent = self.pings.get(slot, (None, now))
            if ref is None:
                self.pings[slot] = (self.actors[slot].ready.remote(), now)
                continue
            done, _ = ray.wait([ref], timeout=0)
            if done:
                try:
                    ray.get(ref)
                    self.pings.pop(slot)
                except Exception as exc:  # noqa: BLE001
                    self._replace(slot, f"ping failed: {type(exc).__name__}")
            elif now - sent > timeout_s:
                self._replace(slot, f"no answer to a ping for {timeout_s:.0f} s")

    def _say_if_no_actor_starts(self, now: float) -> None:
        """Actors that cannot be placed (a resource no node has, or not free) wait in Ray without an
        error; every ping_timeout_s without one working, the driver says what they ask for and what
        the cluster has, so a run stuck on a typo'd --actor-resource does not look like a slow start."""
        import ray

        if self.idle_since is None:
            self.idle_since = self.idle_said = now
            return
        if now - self.idle_said < self.cfg.ping_timeout_s:
            return
        self.idle_said = now
        asks = {"CPU": self.cfg.actor_cpus, "GPU": self.cfg.actor_gpus, self.cfg.actor_resource: 1.0}
        asks = {name: amount for name, amount in asks.items() if name and amount}
        total, free = ray.cluster_resources(), ray.available_resources()
        offer = ", ".join(f"{name} {total.get(name, 0):g} ({free.get(name, 0):g} free)" for name in asks)
        ask = ", ".join(f"{name} {amount:g}" for name, amount in asks.items())
        print(f"[eval] no rollout actor is working after {now - self.idle_since:.0f} s ({len(self.starting)} "
              f"starting): each asks for {ask} (--actor-cpus/--actor-gpus/--actor-resource); the cluster "
              f"has {offer}", flush=True)

    def run(self, pending: deque[WorkItem]) -> dict[str, int]:
        """Runs every item; returns {"ran", "actors_replaced"}. Rows are written and compacted."""
        import ray

        self.pending = pending
        for slot in range(min(self.cfg.actors, len(pending))):
            self._start(slot)
        self.status.restart_clock()
        last_ping = time.monotonic()
        while self.in_flight or self.pending:
            self._check_starting()
            self._fill()
            if not self.in_flight:
                self._say_if_no_actor_starts(time.monotonic())
                time.sleep(0.5)  # every actor is still starting
                continue
            self.idle_since = None
            self._collect()
            now = time.monotonic()
            if now - last_ping > self.cfg.ping_timeout_s / 3:
                last_ping = now
                self._ping_busy(now)
            self.status.emit()
        self.store.write(self.buffer)
        self.buffer = []
        for actor in self.actors.values():
            ray.kill(actor)
        return {"ran": self.ran, "actors_replaced": self.replaced}
