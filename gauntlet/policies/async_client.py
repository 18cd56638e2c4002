"""A robot-side client that keeps executing queued actions while the next chunk is computed.

The scheme is LeRobot's async inference (`lerobot/async_inference/robot_client.py`, 0.6.1) without
its transport: LeRobot's gRPC service carries pickles both ways, and Gauntlet unpickles nothing that
crosses a network (docs/serving.md, "LeRobot's async robot client"). Here the chunk comes from any
Gauntlet policy client: a `RemotePolicy` (openpi WebSocket or Gauntlet's msgpack HTTP route, so a
Gauntlet server or an openpi server) or a local `Policy`.

The robot loop calls `action = client.next_action(obs)` once per control step:
- actions are indexed by control step; the chunk computed from the observation of step t holds the
  actions of steps t, t+1, ..., t+H-1;
- when `queued / chunk length <= chunk_size_threshold` and no request is in flight, the observation
  goes to the policy on a background thread and the call returns the queued action at once;
- when the chunk arrives (merged at the start of the next call), its actions for steps already
  executed are dropped, those for steps still queued are combined with the queued ones by the
  aggregate function (AGGREGATE_FUNCTIONS, LeRobot's names and weights), later ones are appended;
- only an empty queue blocks, for at most `empty_queue_timeout_s`; a failed request raises its error
  from the next call (the worker thread lives on), and the robot loop decides what to do.

One request is in flight at a time (LeRobot's server likewise computes from the latest observation
only). A policy with per-episode memory (PolicyMetadata.episode_memory) sees only the observations
sent, one per chunk, each with this client's episode id; `reset()` starts a new episode.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from gauntlet.keys import ACTIONS_KEY, EPISODE_ID_KEY
from gauntlet.policies.base import Policy, stack_observations
from gauntlet.policies.remote import RemotePolicy

# How a queued action (old) and a newer chunk's action for the same step (new) combine: LeRobot
# 0.6.1's `AGGREGATE_FUNCTIONS` (async_inference/configs.py), same names, same weights.
AGGREGATE_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "weighted_average": lambda old, new: 0.3 * old + 0.7 * new,
    "latest_only": lambda old, new: new,
    "average": lambda old, new: 0.5 * old + 0.5 * new,
    "conservative": lambda old, new: 0.7 * old + 0.3 * new,
}


@dataclass(frozen=True)
class AsyncClientConfig:
    # Ask for the next chunk once (queued actions / chunk length) falls to this, in [0, 1]: 0 waits
    # for an empty queue (synchronous), 1 asks as soon as a step is executed (LeRobot's default: 0.5).
    chunk_size_threshold: float = 0.5
    # How a queued action and a newer chunk's action for the same step combine: a name in
    # AGGREGATE_FUNCTIONS (LeRobot's `aggregate_fn_name`).
    aggregate_fn_name: str = "weighted_average"
    # Use only the first N actions of each chunk (LeRobot's `actions_per_chunk`); 0 = the whole chunk.
    actions_per_chunk: int = 0
    # How long `next_action` waits for a chunk when no action is queued; then AsyncClientTimeout.
    empty_queue_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.chunk_size_threshold <= 1.0:
            raise ValueError(f"chunk_size_threshold: expected a number in [0, 1], got {self.chunk_size_threshold!r}")
        if self.aggregate_fn_name not in AGGREGATE_FUNCTIONS:
            raise ValueError(f"aggregate_fn_name: expected one of {sorted(AGGREGATE_FUNCTIONS)}, "
                             f"got {self.aggregate_fn_name!r}")
        if self.actions_per_chunk < 0:
            raise ValueError(f"actions_per_chunk: expected 0 (the whole chunk) or more, got {self.actions_per_chunk!r}")
        if not self.empty_queue_timeout_s > 0:
            raise ValueError(f"empty_queue_timeout_s: expected a positive number of seconds, "
                             f"got {self.empty_queue_timeout_s!r}")


class AsyncClientTimeout(TimeoutError):
    """No action was queued and the requested chunk did not arrive within `empty_queue_timeout_s`."""


class AsyncClientError(RuntimeError):
    """The policy answered something that is not an action chunk; the message names the field."""


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk as it was merged: what `on_chunk` receives."""

    episode_id: str
    sent_step: int  # the step whose observation it was computed from: its first action's step
    merged_step: int  # the step being asked for when it was merged (steps before it were executed)
    actions: np.ndarray  # (H, D) as received, after `actions_per_chunk`


@dataclass
class AsyncClientStats:
    """Counts over the client's life (all episodes)."""

    requests: int = 0  # chunks asked for
    chunks: int = 0  # chunks merged
    waits: int = 0  # `next_action` calls that found the queue empty and blocked
    stale: int = 0  # received actions dropped: their step was executed before they arrived
    aggregated: int = 0  # received actions combined with a queued one for the same step


class AsyncChunkClient:
    """`next_action(obs) -> (D,)` for a robot loop, over any Gauntlet policy client (module docstring).

    `on_chunk(record)` is called on the caller's thread for every chunk merged."""

    def __init__(self, policy: Policy | RemotePolicy, config: AsyncClientConfig = AsyncClientConfig(),
                 on_chunk: Callable[[ChunkRecord], None] | None = None):
        self.policy = policy
        self.config = config
        self.stats = AsyncClientStats()
        self._aggregate = AGGREGATE_FUNCTIONS[config.aggregate_fn_name]
        self._on_chunk = on_chunk
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gauntlet-async-chunks")
        # The chunk length the threshold is a fraction of: the longest chunk received (as LeRobot's
        # client), until then the declared one, capped by actions_per_chunk.
        declared = int(policy.metadata.chunk_len or 0)
        self._chunk_len = max(1, min(declared or config.actions_per_chunk, config.actions_per_chunk or declared))
        self._in_flight: tuple[Future, int] | None = None  # (the request, the step it was sent at)
        self._start_episode(None, reset_policy=False)

    @property
    def episode_id(self) -> str:
        return self._episode_id

    @property
    def step(self) -> int:
        """The step the next `next_action` call is for (actions returned so far this episode)."""
        return self._step

    @property
    def queued(self) -> int:
        """Actions queued for this and later steps."""
        return len(self._queue)

    @property
    def pending(self) -> bool:
        """Whether a chunk was asked for and has not arrived yet."""
        return self._in_flight is not None and not self._in_flight[0].done()

    def reset(self, episode_id: str | None = None) -> None:
        """A new episode: queued actions are dropped, a chunk still in flight is discarded (its
        error too), steps count from 0, and the policy's own `reset()` runs before its next request."""
        self._start_episode(episode_id, reset_policy=True)

    def _start_episode(self, episode_id: str | None, reset_policy: bool) -> None:
        self._episode_id = episode_id or f"async-{uuid.uuid4().hex}"
        self._step = 0
        self._queue: dict[int, np.ndarray] = {}  # step -> (D,), steps contiguous from self._step
        self._in_flight = None  # its result belongs to the previous episode: never merged
        self._reset_policy = reset_policy

    def next_action(self, obs: dict[str, Any]) -> np.ndarray:
        """The action for this step, (D,) float32. Blocks only while no action is queued."""
        self._harvest()
        while not self._queue:
            if self._in_flight is None:
                self._request(obs)
            self._wait()
        # The queue counts this step's action: what is left once the previous step ran, as LeRobot
        # counts it after executing an action.
        if self._in_flight is None and len(self._queue) / self._chunk_len <= self.config.chunk_size_threshold:
            self._request(obs)
        action = self._queue.pop(self._step)
        self._step += 1
        return action

    def _request(self, obs: dict[str, Any]) -> None:
        if self.policy.metadata.episode_memory and EPISODE_ID_KEY not in obs:
            obs = {**obs, EPISODE_ID_KEY: self._episode_id}
        reset, self._reset_policy = self._reset_policy, False
        self._in_flight = (self._pool.submit(self._infer, obs, reset), self._step)
        self.stats.requests += 1

    def _infer(self, obs: dict[str, Any], reset: bool) -> Any:
        """On the worker thread: the policy's answer to one observation."""
        if reset:
            self.policy.reset()
        if isinstance(self.policy, RemotePolicy):
            return self.policy.infer_one(obs)
        return {ACTIONS_KEY: self.policy.infer(stack_observations([obs]))[ACTIONS_KEY][0]}  # (1, H, D) -> (H, D)

    def _wait(self) -> None:
        future, sent = self._in_flight
        self.stats.waits += 1
        try:
            future.result(timeout=self.config.empty_queue_timeout_s)
        except FutureTimeout:
            raise AsyncClientTimeout(
                f"no action queued for step {self._step} of episode {self._episode_id}, and the chunk asked for "
                f"at step {sent} did not arrive within AsyncClientConfig.empty_queue_timeout_s = "
                f"{self.config.empty_queue_timeout_s} s (it is still awaited)") from None
        except Exception:  # noqa: BLE001 - _harvest raises it, with the step it was asked for
            pass
        self._harvest()

    def _harvest(self) -> None:
        """Merges the chunk in flight if it has arrived; raises its error if it failed."""
        if self._in_flight is None or not self._in_flight[0].done():
            return
        future, sent = self._in_flight
        self._in_flight = None
        error = future.exception()
        if error is not None:
            error.add_note(f"(the chunk asked for at step {sent} of episode {self._episode_id})")
            raise error
        self._merge(sent, self._chunk_of(future.result()))

    def _chunk_of(self, answer: Any) -> np.ndarray:
        """The answer's (H, D) float32 actions, or AsyncClientError naming what is wrong."""
        raw = answer.get(ACTIONS_KEY) if isinstance(answer, dict) else None
        if raw is None:
            raise AsyncClientError(f"the policy's answer has no {ACTIONS_KEY!r}: {str(answer)[:80]!r}")
        try:
            chunk = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise AsyncClientError(f"{ACTIONS_KEY}: not numbers ({exc})") from None
        dim = self.policy.metadata.action_dim
        if chunk.ndim != 2 or chunk.shape[0] == 0 or (dim and chunk.shape[1] != dim):
            raise AsyncClientError(f"{ACTIONS_KEY}: expected a chunk of shape (H >= 1, {dim or 'D'}), "
                                   f"got {list(chunk.shape)}")
        if not np.isfinite(chunk).all():
            raise AsyncClientError(f"{ACTIONS_KEY}: not all finite")
        return chunk[: self.config.actions_per_chunk or None]

    def _merge(self, sent: int, chunk: np.ndarray) -> None:
        """chunk[i] is the action of step sent + i: executed steps dropped, queued ones aggregated."""
        self._chunk_len = max(self._chunk_len, len(chunk))
        for i, action in enumerate(chunk):
            step = sent + i
            if step < self._step:
                self.stats.stale += 1
            elif step in self._queue:
                self._queue[step] = self._aggregate(self._queue[step], action).astype(np.float32)
                self.stats.aggregated += 1
            else:  # past the queue's end: queued steps are contiguous from self._step
                self._queue[step] = action
        self.stats.chunks += 1
        if self._on_chunk is not None:
            self._on_chunk(ChunkRecord(self._episode_id, sent, self._step, chunk))

    def close(self) -> None:
        """Stops the worker after the request in flight (if any; the interpreter's exit waits for it,
        at most the RemotePolicy's `timeout_s`); a RemotePolicy's connection, which lives on the
        worker thread, is closed there."""
        closer = getattr(self.policy, "close", None)
        if callable(closer):
            self._pool.submit(closer)
        self._pool.shutdown(wait=False)

    def __enter__(self) -> AsyncChunkClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
