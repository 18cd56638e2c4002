"""Episodes: restore a scene, step it, ask the policy for a chunk only when the last one is used up.

Images are rendered only for those requests (and only if the policy needs them); privileged
policies also get the simulator state.

One episode loop, two drivers. `Episode` holds everything an episode does (restore, request, step,
result row); a driver only decides how to wait for the policy's answer:

- `run_episode`: blocks on `policy.infer` (in-process callers, benchmarks);
- `run_episode_async`: awaits `policy.next_chunk_async`, so a rollout actor runs several episodes on its
  one rendering thread and steps whichever env has actions while the others wait for theirs.

A policy with per-episode memory (a recurrent state, the scripted oracle's expert) keeps it in the
replica that answered the episode. If that memory is lost mid-episode (the replica was restarted, or
the episode reached another one), the source raises EpisodeMemoryLost instead of handing over
actions computed from a fresh state; the episode then starts again from its scene's start, under a
new episode id, and its row counts the restart (`episode_restarts`). Continuing would mix two
policies' worth of behaviour into one row. An item sent again after its rollout actor died has an
id of its own too (`WorkItem.attempt`): the replica's memory of the dead attempt is never continued,
nor taken for a lost memory (no restart is counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gauntlet.envs.env import GauntletEnv
from gauntlet.envs.scene_db import SceneDB
from gauntlet.keys import EPISODE_ID_KEY, PROMPT_KEY, SIM_STATE_KEY
from gauntlet.platform.eval.env_cache import EnvCache
from gauntlet.platform.eval.request_rounds import RequestRounds
from gauntlet.platform.eval.results import new_row, skipped_row
from gauntlet.platform.eval.video import VIDEO_KEY, EpisodeRecorder, VideoOptions

WATCH_KEY = "_watch"  # a finished row's entry for its episode watch's result (popped by the driver)


class StepWatch(Protocol):
    """Watches one episode (e.g. for failures to harvest): sees the env after every step."""

    def on_step(self, env: GauntletEnv, action: np.ndarray, step: int) -> None:  # step: 1-based
        ...

    def finish(self, env: GauntletEnv) -> Any:  # at the episode's end; the row carries it back
        ...


class WatchSpec(Protocol):
    """What a work item carries to the actor (plain, shippable): starts an episode's observer."""

    def start(self, scene: dict[str, Any]) -> StepWatch:
        ...


class PolicyUnavailableError(RuntimeError):
    """The policy could not answer (replica down past the retry budget, or it returned an error)."""


# Restarts of one episode after its policy memory was lost, before it is skipped instead: one
# restarted replica costs an episode one restart; more in a row mean the requests do not stick to
# one replica at all (e.g. a deployment without session affinity), which restarting cannot fix.
MAX_EPISODE_RESTARTS = 3


class EpisodeMemoryLost(RuntimeError):
    """A policy with per-episode memory answered as if it had not seen this episode's earlier calls:
    the replica holding that memory was restarted or replaced, or another replica answered."""

    def __init__(self, episode_id: str, expected: int, answered: Any):
        super().__init__(f"episode {episode_id!r}: the policy answered call {answered!r} of the episode, "
                         f"this client made {expected}; its memory of the episode is gone (a restarted "
                         f"or another replica answered)")
        self.episode_id = episode_id


class ChunkSource(Protocol):
    """What an episode needs from a policy: its metadata and one chunk per observation."""

    needs_images: bool
    needs_sim_state: bool
    spec_keys: frozenset[str]
    image_shapes: dict[str, tuple[int, ...]]
    vector_shapes: dict[str, tuple[int, ...]]  # declared non-image arrays (a mismatch skips the scene)
    replan_steps: int  # execute this many actions of each chunk, then ask again; 0 = the whole chunk
    pad_images: bool  # resize images keeping their aspect ratio, padded (openpi's clients)

    def next_chunk(self, obs: dict[str, Any]) -> np.ndarray:  # (H, D): one chunk for one observation
        ...

    async def next_chunk_async(self, obs: dict[str, Any]) -> np.ndarray:  # (H, D); never blocks the event loop
        ...


@dataclass(frozen=True)
class WorkItem:
    """One episode to run: the idempotency key plus what the actor needs to run it."""

    run_id: str
    scene_id: str
    policy: str  # policy label (results column)
    trial: int
    horizon: int
    video: VideoOptions | None = None  # record this episode (not part of its identity)
    # Times the item was sent again after an actor died with it in flight (not part of its identity).
    attempt: int = 0
    watch: WatchSpec | None = None  # watch each step of the episode (not part of its identity)

    @property
    def key(self) -> tuple:
        return (self.run_id, self.scene_id, self.policy, self.trial)

    @property
    def episode_id(self) -> str:
        """The id a policy keeps the episode's memory under. Each attempt has its own: a replica still
        holds the memory of the attempt that died, and continuing it would look like a lost memory."""
        base = f"{self.run_id}/{self.scene_id}/{self.policy}/{self.trial}"
        return f"{base}#attempt{self.attempt}" if self.attempt else base


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


class PolicyMismatchError(ValueError):
    """The scene's observation does not fit the policy (e.g. a policy trained for another task's
    object state): the episode is skipped with this reason, never sent."""


def check_fits(obs: dict[str, Any], vector_shapes: dict[str, tuple[int, ...]], task: str) -> None:
    for key, shape in vector_shapes.items():
        value = obs.get(key)
        if value is not None and np.shape(value) != tuple(shape):
            raise PolicyMismatchError(f"incompatible with the policy: it takes {key} of shape {tuple(shape)}, "
                                      f"task {task!r} gives {np.shape(value)}")


class Episode:
    """One episode, advanced by a driver: `start`, then until `done`: if `wants_chunk`, build
    `request()`, call `sending()` as it leaves for the policy and hand the answer to `give`; then
    `step()`. `close()` always. If the policy lost its memory of the episode, `restart` instead of
    `give`.

    The row is `self.row` (a skipped row if the scene could not be restored). Latency is measured
    per request, from `sending()` to `give()`, whichever driver waits (with several envs per actor
    it includes the step the actor was taking for another env when the answer came).
    """

    def __init__(self, db: SceneDB, item: WorkItem, scene: dict[str, Any], policy: ChunkSource, worker: str,
                 code_version: str):
        self.db, self.item, self.scene, self.policy = db, item, scene, policy
        self.worker, self.code_version = worker, code_version
        self.row = new_row(item, scene, worker, code_version)
        self.env: GauntletEnv | None = None
        self.done = False
        self.step_index = 0  # env steps taken so far
        self._envs: EnvCache | None = None
        self._chunk: list[np.ndarray] = []
        self._latencies_ms: list[float] = []
        self._asked_at = 0.0
        self._started_at = time.perf_counter()
        self._recorder: EpisodeRecorder | None = None
        self.restarts = 0  # times started again because the policy lost its memory of the episode
        self.watcher: StepWatch | None = None  # item.watch's, for the current start

    @property
    def episode_id(self) -> str:
        """The id the policy keeps this episode's memory under: a new one at each restart, so that
        whatever memory of an abandoned start survives somewhere is never continued."""
        return f"{self.item.episode_id}#restart{self.restarts}" if self.restarts else self.item.episode_id

    def start(self, envs: EnvCache) -> None:
        """Takes an env and restores the scene into it; a scene that cannot be restored is skipped."""
        try:
            self.env = envs.acquire(self.scene["env_config"], self.scene.get("fingerprint") or "")
            self._envs = envs
            self._begin()
        except Exception as exc:  # noqa: BLE001 - one bad scene is recorded, never fatal
            self._skip(f"restore failed: {type(exc).__name__}: {exc}")

    def _begin(self) -> None:
        """Restores the scene (and starts its video): at the start and at each restart."""
        assert self.env is not None
        self.db.restore(self.env, self.item.scene_id)
        self.watcher = self.item.watch.start(self.scene) if self.item.watch is not None else None
        if self.item.video is not None:
            title = f"{self.item.policy} | {self.scene.get('task', '')} {self.scene.get('variant', '')}"
            self._recorder = EpisodeRecorder(self.env, self.item.video, title, self.scene.get("error_type", ""))
            self._recorder.capture(0, force=True)

    def _skip(self, reason: str) -> None:
        self.row = skipped_row(self.item, self.scene, reason, self.worker, self.code_version)
        self.row["episode_restarts"] = self.restarts
        self.done = True

    def restart(self, lost: EpisodeMemoryLost) -> None:
        """The policy lost its memory of this episode mid-way: starts it again from the scene's start
        under a new episode id (the row describes that run, and counts the restart), or, after
        MAX_EPISODE_RESTARTS, skips it with the reason."""
        if self._recorder is not None:
            self._recorder.discard()
            self._recorder = None
        if self.restarts >= MAX_EPISODE_RESTARTS:
            self._skip(f"{type(lost).__name__}: lost again after {self.restarts} restarts: {lost}")
            return
        self.restarts += 1
        self.row = new_row(self.item, self.scene, self.worker, self.code_version, episode_restarts=self.restarts)
        self.step_index = 0
        self._chunk = []
        self._latencies_ms = []
        try:
            self._begin()
        except Exception as exc:  # noqa: BLE001 - as at the start: recorded, never fatal
            self._skip(f"restore failed: {type(exc).__name__}: {exc}")

    @property
    def wants_chunk(self) -> bool:
        return not self.done and not self._chunk

    def request(self) -> dict[str, Any]:
        """The observation to send: rendered now, filtered to what the policy declared."""
        assert self.env is not None
        obs = self.env.observe(images=self.policy.needs_images)
        if self.policy.needs_sim_state:
            obs[SIM_STATE_KEY] = self.env.get_state()
        obs[EPISODE_ID_KEY] = self.episode_id
        if self.step_index == 0:
            check_fits(obs, self.policy.vector_shapes, self.scene.get("task", ""))
        return filter_obs(obs, self.policy.spec_keys, self.policy.image_shapes, self.policy.pad_images)

    def mark_sent(self) -> None:
        """The request leaves now: its latency counts from here."""
        self._asked_at = time.perf_counter()

    def take_chunk(self, actions: np.ndarray) -> None:
        """Takes the policy's answer to the last `request()`, an (H, D) chunk, as the actions to step."""
        self._latencies_ms.append((time.perf_counter() - self._asked_at) * 1e3)
        # openpi's clients execute only the first `replan_steps` actions, then ask again.
        self._chunk = list(np.asarray(actions, dtype=np.float64))[: self.policy.replan_steps or None]
        self.row["replan_steps"] = self.row["replan_steps"] or len(self._chunk)
        if not self.row["first_action"] and self._chunk:
            self.row["first_action"] = json.dumps([float(a) for a in self._chunk[0]])

    def step(self) -> None:
        """One env step with the chunk's next action.

        Per-step hooks (e.g. rendering a video frame at chosen steps) belong at the end of this
        method: `self.env` has just stepped and `self.step_index` is the step's 1-based number."""
        assert self.env is not None
        self.step_index += 1
        action = self._chunk.pop(0)
        solved = self.env.step(action)
        self.row["steps"] = self.step_index
        if self.watcher is not None:
            self.watcher.on_step(self.env, action, self.step_index)
        if solved:
            self.row.update(success=True, recovery_step=self.step_index)
        if self._recorder is not None:
            self._recorder.capture(self.step_index, solved)
        if solved or self.step_index >= self.item.horizon:
            self._finish()

    def _finish(self) -> None:
        lat = self._latencies_ms
        if lat:
            self.row.update(inference_calls=len(lat), latency_ms_mean=float(np.mean(lat)),
                            latency_ms_p50=float(np.median(lat)), latency_ms_max=float(np.max(lat)))
        if self._recorder is not None:
            self.row[VIDEO_KEY] = self._recorder.finish(bool(self.row["success"]), self.step_index)
            self._recorder = None
        if self.watcher is not None:
            self.row[WATCH_KEY] = self.watcher.finish(self.env)
        self.row["wall_s"] = time.perf_counter() - self._started_at
        self.done = True

    def close(self) -> None:
        """Returns the env to its pool (also after an exception: the next restore resets it)."""
        if self._recorder is not None:  # the episode failed mid-way: no video
            self._recorder.discard()
            self._recorder = None
        if self._envs is not None and self.env is not None:
            self._envs.release(self.env)
        self._envs = None


class _Blocking:
    """A source seen through `next_chunk_async` that answers with its blocking `next_chunk`."""

    def __init__(self, source: ChunkSource):
        self._source = source

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    async def next_chunk_async(self, obs: dict[str, Any]) -> np.ndarray:
        return self._source.next_chunk(obs)


def run_episode(db: SceneDB, envs: EnvCache, item: WorkItem, scene: dict[str, Any], policy: ChunkSource,
                worker: str, code_version: str) -> dict[str, Any]:
    """Runs one episode on this thread, blocking on each policy call; returns its result row.
    (The one episode loop, `run_episode_async`, on a private event loop.)"""
    return asyncio.run(run_episode_async(db, envs, item, scene, _Blocking(policy), worker, code_version))


async def run_episode_async(db: SceneDB, envs: EnvCache, item: WorkItem, scene: dict[str, Any],
                            policy: ChunkSource, worker: str, code_version: str,
                            rounds: RequestRounds | None = None) -> dict[str, Any]:
    """`run_episode` for an event loop: while this episode awaits its chunk, the loop steps the
    actor's other episodes. Everything touching the env runs on the loop's thread (EGL). With
    `rounds`, a request waits for the actor's other episodes on this policy to run out too, and
    they all leave together (see request_rounds)."""
    episode = Episode(db, item, scene, policy, worker, code_version)
    try:
        episode.start(envs)
        while not episode.done:
            if episode.wants_chunk:
                request = episode.request()
                async with rounds.turn() if rounds is not None else contextlib.nullcontext():
                    episode.mark_sent()
                    try:
                        actions = await policy.next_chunk_async(request)
                    except EpisodeMemoryLost as lost:
                        episode.restart(lost)  # from the scene's start, at the next round
                        continue
                    episode.take_chunk(actions)
            episode.step()
            # The actor's other episodes take their turn step by step, so an answer that arrived
            # while this one was stepping is taken up within a step, not after this whole chunk.
            await asyncio.sleep(0)
    finally:
        episode.close()
    return episode.row
