"""The eval driver's work queue: rollout actors pull items; dead actors are replaced.

Each actor runs `envs_per_actor` episodes at once and holds one item more, waiting for a seat
(`request_rounds.Seats`): when an episode ends, the next starts in the actor at once instead of after
a round trip to the driver. Work is pulled (an actor gets its next item as soon as one of its
episodes finishes), so a slow scene never idles the others. An actor that dies, or stops
answering liveness pings, is killed and replaced, and all its in-flight items go back to the front
of the queue, in their order, each as a new attempt (its own episode id). An item whose `run`
raises while its actor lives on is recorded as skipped (`actor_raised`, transient) and the actor
keeps working. Finished rows go to the results store in batches of `write_every`, and whatever is
buffered is written however `run` ends.

Runs end. An item that was in flight on `max_attempts` dead actors is recorded as skipped
(`actor_died`, transient) instead of going back to the queue. A slot whose actor fails to start
`start_attempts` times in a row is given up (the run ends when none is left), and a run where no
actor has been working for `start_timeout_s` ends with EvalRunError.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gauntlet.platform.eval.config import EvalConfig, EvalRunError
from gauntlet.platform.eval.episode import WATCH_KEY, WatchSpec, WorkItem
from gauntlet.platform.eval.results import (
    ACTOR_DIED,
    ACTOR_RAISED,
    DRIVER_WORKER,
    TRANSIENT,
    ResultsStore,
    skipped_row,
)
from gauntlet.platform.eval.status import StatusLine
from gauntlet.platform.eval.targets import PolicyTarget
from gauntlet.platform.eval.video import VIDEO_KEY, write_video

QUEUED_PER_ACTOR = 1  # items an actor holds beyond its envs: the next episode is there when one ends
ERROR_CHARS = 300  # of an actor's error kept in a skip reason or a message (Ray's errors run to pages)


@dataclass(frozen=True)
class EpisodeWatch:
    """Every episode of a run watched: `spec` goes with each item to the actors (episode.WatchSpec),
    and `sink`, in the driver, receives each finished episode's item and its watch's result."""

    spec: WatchSpec
    sink: Callable[[WorkItem, Any], None]
    # Once it answers True, no further episode is sent (those in flight finish and are recorded).
    enough: Callable[[], bool] | None = None


def brief(exc: BaseException) -> str:
    """`Type: the message's telling line`, at most ERROR_CHARS long: the first line, or the last when
    the message carries the traceback of an error raised in the actor (that line names the error)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    traced = any(line.startswith("Traceback") for line in lines)
    return f"{type(exc).__name__}: {(lines[-1] if traced else lines[0]) if lines else ''}"[:ERROR_CHARS]


class Dispatcher:
    """Runs `pending` on `cfg.actors` rollout actors until every item has a row."""

    def __init__(self, cfg: EvalConfig, scenes: dict[str, dict[str, Any]], targets: list[PolicyTarget],
                 version: str, store: ResultsStore, status: StatusLine, replay: bool = False,
                 sink: Callable[[WorkItem, Any], None] | None = None, stop: Callable[[], bool] | None = None):
        self.cfg = cfg
        self.sink = sink  # receives each episode's watch's result (EpisodeWatch.sink)
        self.stop = stop  # once it says so, no further item is sent (EpisodeWatch.enough)
        self.sink_errors = 0  # watch results the sink raised on
        self.not_sent = 0  # items left unsent because `stop` said so
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
        self.deaths: Counter[tuple] = Counter()  # item key -> actors that died with it in flight
        # Items that were in flight on a dead actor. Which one killed it is unknown (an actor runs
        # envs_per_actor episodes and holds one more), so each is charged a death, and from then on
        # runs alone on an actor: an innocent batch-mate is charged once and then finishes, while
        # the item that kills its actor is charged alone until max_attempts.
        self.suspects: set[tuple] = set()
        self.start_failures: Counter[int] = Counter()  # slot -> failed starts in a row
        self.idle_since: float | None = None  # since when no item has been in flight (no actor working)
        self.idle_said = 0.0  # when the last "waiting for actors" notice was printed

    def _new_actor(self) -> Any:
        from gauntlet.platform.eval.rollout_actor import RolloutActor
        from gauntlet.policies.registry import plugin_env_vars

        resources = {self.cfg.actor_resource: 1} if self.cfg.actor_resource else None
        # Plugin policy families go with the actors, which build local policies themselves (Ray merges
        # these env_vars with the job's).
        plugins = {"runtime_env": {"env_vars": plugin_env_vars()}} if plugin_env_vars() else {}
        return RolloutActor.options(num_cpus=self.cfg.actor_cpus, num_gpus=self.cfg.actor_gpus, max_restarts=0,
                                    resources=resources, **plugins).remote(
            str(Path(self.cfg.scenes).resolve()), self.targets, self.scenes, self.version, self.cfg.envs_per_actor)

    def _start(self, slot: int) -> None:
        # A new actor receives work only once it has answered a ping (it may wait for resources).
        self.actors[slot] = self._new_actor()
        self.starting[slot] = self.actors[slot].ready.remote()

    def _fill(self) -> None:
        """Gives started actors items until each has `envs_per_actor` + QUEUED_PER_ACTOR in flight,
        least loaded first (so the last items of a run spread over the actors rather than queue on one).
        A suspect (see `suspects`) goes only to an idle actor, and that actor then gets nothing else."""
        load = Counter(s for s, _ in self.in_flight.values())
        alone = {s for s, item in self.in_flight.values() if item.key in self.suspects}
        started = [slot for slot in self.actors if slot not in self.starting and slot not in alone]
        if self.pending and self.stop is not None and self.stop():
            self.not_sent += len(self.pending)
            self.pending.clear()
        while self.pending and started:
            slot = min(started, key=lambda s: load[s])
            # An extra item only while there is more work than actors: a queued item cannot move to
            # another actor, so near the end it would wait behind a long episode while others idle.
            queued = QUEUED_PER_ACTOR if len(self.pending) > len(started) else 0
            if load[slot] >= self.cfg.envs_per_actor + queued:
                break
            item = self._take(idle=load[slot] == 0)
            if item is None:  # only suspects wait, and no actor is idle
                break
            self.in_flight[self.actors[slot].run.remote(item)] = (slot, item)
            load[slot] += 1
            if item.key in self.suspects:
                started.remove(slot)

    def _take(self, idle: bool) -> WorkItem | None:
        """The first pending item an actor may get: any if it is idle, else the first non-suspect."""
        for i, item in enumerate(self.pending):
            if idle or item.key not in self.suspects:
                del self.pending[i]
                return item
        return None

    def _replace(self, slot: int, why: str) -> None:
        """The actor (or its node) is gone: each of its items is charged a death and goes back to
        the queue (the earliest sent first), or is recorded as skipped once it has max_attempts."""
        import ray

        lost = [ref for ref, (s, _) in self.in_flight.items() if s == slot]
        capped = 0
        for ref in reversed(lost):
            item = self.in_flight.pop(ref)[1]
            self.deaths[item.key] += 1
            self.suspects.add(item.key)
            if self.deaths[item.key] >= self.cfg.max_attempts:
                self._give_up(item, why)
                capped += 1
            else:  # a new attempt, under a new episode id (see WorkItem.episode_id)
                self.pending.appendleft(replace(item, attempt=self.deaths[item.key]))
        self.replaced += 1
        self.pings.pop(slot, None)
        print(f"[eval] actor {slot} lost ({why}); re-queued {len(lost) - capped} item(s), starting a replacement",
              flush=True)
        try:
            ray.kill(self.actors[slot], no_restart=True)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        self._start(slot)

    def _give_up(self, item: WorkItem, why: str) -> None:
        """An item whose actor died max_attempts times: a transient skip (`--resume` tries it again)."""
        n = self.deaths[item.key]
        print(f"[eval] {item.scene_id} / {item.policy} / trial {item.trial}: its actor died {n} times running "
              f"it; recorded as skipped ({ACTOR_DIED})", flush=True)
        if self.replay:
            return  # a replay for a video: the episode's row is already stored
        reason = f"{ACTOR_DIED}: its rollout actor died {n} times running it; last: {why}"
        self._record(skipped_row(item, self.scenes[item.scene_id], reason, DRIVER_WORKER, self.version,
                                 kind=TRANSIENT))

    def _record_raised(self, item: WorkItem, exc: BaseException) -> None:
        """An item whose `run` raised (outside the episode, whose own exceptions `run` turns into
        skipped rows): recorded as skipped with the error, the actor kept and no death charged.
        Killing the actor would charge a death to every item it holds and, at max_attempts, record a
        code error as `actor_died`. Transient, like every error nobody foresaw (results.PERMANENT_CAUSES):
        the same code would likely raise again, but `--resume` after a fix must run it, and a wrong
        "transient" costs one attempt per `--resume`, never a loop within a run."""
        cause = getattr(exc, "cause", None)  # what `run` raised, as raised (Ray's message wraps it in its own)
        why = brief(cause if isinstance(cause, BaseException) else exc)
        print(f"[eval] {item.scene_id} / {item.policy} / trial {item.trial}: the rollout actor raised running "
              f"it ({why}); recorded as skipped ({ACTOR_RAISED})", flush=True)
        if self.replay:
            return  # a replay for a video: the episode's row is already stored
        self._record(skipped_row(item, self.scenes[item.scene_id], f"{ACTOR_RAISED}: {why}", DRIVER_WORKER,
                                 self.version, kind=TRANSIENT))

    def _record(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)
        self.status.add(row)
        if len(self.buffer) >= self.cfg.write_every:
            self.store.write(self.buffer)
            self.buffer = []

    def _check_starting(self) -> None:
        import ray

        for slot, ref in list(self.starting.items()):
            done, _ = ray.wait([ref], timeout=0)
            if not done:
                continue
            del self.starting[slot]
            try:
                ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - could not even start: try again, a few times
                self.start_failures[slot] += 1
                if self.start_failures[slot] >= self.cfg.start_attempts:
                    self._retire(slot, brief(exc))
                else:
                    self._replace(slot, f"failed to start: {brief(exc)}")
            else:
                self.start_failures[slot] = 0

    def _retire(self, slot: int, why: str) -> None:
        """A slot whose actor failed to start start_attempts times in a row gets no new actor; the
        run ends when no slot is left."""
        import ray

        ray.kill(self.actors.pop(slot), no_restart=True)
        print(f"[eval] actor {slot} failed to start {self.start_failures[slot]} times in a row ({why}); "
              f"going on with {len(self.actors)} actor(s)", flush=True)
        if not self.actors:
            raise EvalRunError(f"no rollout actor could be started: each failed {self.cfg.start_attempts} times "
                               f"in a row (--start-attempts); the last error: {why}")

    def _collect(self) -> None:
        """Waits up to 2 s for a finished episode and records what finished."""
        import ray

        ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=2.0)
        for ref in ready:
            if ref not in self.in_flight:
                continue
            slot, item = self.in_flight[ref]
            try:
                row = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                # `run` itself raised and returned: the actor is alive, the error is this item's.
                self.in_flight.pop(ref)
                self._record_raised(item, exc)
                continue
            except ray.exceptions.RayError as exc:
                # The actor's (died, OOM-killed, its node lost, its result lost), never the episode's.
                self._replace(slot, brief(exc))
                continue
            self.in_flight.pop(ref)
            video, watched = row.pop(VIDEO_KEY, None), row.pop(WATCH_KEY, None)
            if video is not None:
                write_video(Path(self.cfg.out), row, video)
            if not self.replay:  # a replay for its video: the episode's row is already stored
                self.ran += 1
                self._record(row)
            if watched is not None and self.sink is not None:
                self._sink(item, watched)

    def _sink(self, item: WorkItem, watched: Any) -> None:
        """Hands an episode's watch result to the sink, after its row is recorded: a sink that raises
        (a full disk under the harvested scenes) is reported and counted, never the end of the run."""
        try:
            self.sink(item, watched)
        except Exception as exc:  # noqa: BLE001 - the run and its rows outlive the sink
            self.sink_errors += 1
            print(f"[eval] {item.scene_id} / {item.policy} / trial {item.trial}: the episode's watch result "
                  f"was not taken ({brief(exc)})", flush=True)

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
                    self._replace(slot, f"ping failed: {brief(exc)}")
            elif now - sent > timeout_s:
                self._replace(slot, f"no answer to a ping for {timeout_s:.0f} s")

    def _say_if_no_actor_starts(self, now: float) -> None:
        """Actors that cannot be placed (a resource no node has, or not free) wait in Ray without an
        error; every ping_timeout_s without one working, the driver says what they ask for and what
        the cluster has, so a run stuck on a typo'd --actor-resource does not look like a slow start.
        After start_timeout_s without one working, the run ends with EvalRunError saying the same."""
        import ray

        if self.idle_since is None:
            self.idle_since = self.idle_said = now
            return
        waited = now - self.idle_since
        if waited <= self.cfg.start_timeout_s and now - self.idle_said < self.cfg.ping_timeout_s:
            return
        self.idle_said = now
        asks = {"CPU": self.cfg.actor_cpus, "GPU": self.cfg.actor_gpus, self.cfg.actor_resource: 1.0}
        asks = {name: amount for name, amount in asks.items() if name and amount}
        total, free = ray.cluster_resources(), ray.available_resources()
        offer = ", ".join(f"{name} {total.get(name, 0):g} ({free.get(name, 0):g} free)" for name in asks)
        ask = ", ".join(f"{name} {amount:g}" for name, amount in asks.items())
        what = (f"({len(self.starting)} starting): each asks for {ask} (--actor-cpus/--actor-gpus/"
                f"--actor-resource); the cluster has {offer}")
        if waited > self.cfg.start_timeout_s:
            raise EvalRunError(f"no rollout actor has been working for {self.cfg.start_timeout_s:g} s "
                               f"(--start-timeout-s) {what}")
        print(f"[eval] no rollout actor is working after {waited:.0f} s {what}", flush=True)

    def run(self, pending: deque[WorkItem]) -> dict[str, int]:
        """Runs every item (until `stop` says so); returns {"ran", "actors_replaced"}, and for a watched run
        also {"sink_errors", "not_sent"}. Rows are written (also when this raises)."""
        import ray

        self.pending = pending
        for slot in range(min(self.cfg.actors, len(pending))):
            self._start(slot)
        self.status.restart_clock()
        last_ping = time.monotonic()
        try:
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
        finally:
            # Rows already finished are kept whatever ended the loop (an error in _collect, a
            # Ctrl-C, EvalRunError): a resumed run does not run them again.
            buffered, self.buffer = self.buffer, []
            self.store.write(buffered)
            for actor in self.actors.values():
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - never hide the error that got us here
                    pass
        outcome = {"ran": self.ran, "actors_replaced": self.replaced}
        if self.sink is not None or self.stop is not None:  # a watched run (scenes harvest)
            outcome.update(sink_errors=self.sink_errors, not_sent=self.not_sent)
        return outcome
