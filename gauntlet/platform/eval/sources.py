"""How a rollout actor reaches a policy: a Serve DeploymentHandle, a remote URL, or in-process.

All three present the same `ChunkSource` face to the episode loop, blocking (`infer`) and awaitable
(`next_chunk_async`, what the rollout actors use to keep several envs' requests in flight). The Serve
client retries while a replica is being restarted, so a replica crash costs latency, not episodes,
of a policy without per-episode memory.

A policy with per-episode memory (PolicyMetadata.episode_memory) keeps it in the replica that
answers the episode. The Serve client then names one Serve session for all its requests, which the
deployment's router (deployments/session_router) sends to one replica for as long as it lives; and
it counts each episode's calls: an answer whose `episode_calls` differs (the replica was restarted,
or the session had to move) raises EpisodeMemoryLost, and the episode starts again (episode.py).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np

from gauntlet.deployments.batcher import OVERLOADED_KIND
from gauntlet.deployments.error_values import is_error_value
from gauntlet.keys import ACTIONS_KEY, EPISODE_CALLS_KEY, EPISODE_ID_KEY, SIM_STATE_KEY
from gauntlet.platform.eval.episode import ChunkSource, EpisodeMemoryLost, PolicyUnavailableError
from gauntlet.platform.eval.openpi import RemoteOptions, check_answer, effective_metadata, remote_contract
from gauntlet.platform.eval.targets import PolicyTarget
from gauntlet.policies.base import PolicyMetadata, stack_observations

# Episodes whose calls one source counts (least recently asked dropped first): far more than an
# actor runs at once, so a running episode is never dropped.
MAX_COUNTED_EPISODES = 4096


class EpisodeCalls:
    """The calls this client made per episode id to a policy with per-episode memory, checked
    against the count each answer carries (EPISODE_CALLS_KEY). Thread-safe."""

    def __init__(self) -> None:
        self._calls: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, obs: dict[str, Any], answer: Any) -> None:
        """Counts this answered call; EpisodeMemoryLost if the policy counted otherwise (the episode
        is forgotten here too: its restart comes under a new id)."""
        episode = str(obs.get(EPISODE_ID_KEY) or "")
        if not episode:
            return
        answered = answer.get(EPISODE_CALLS_KEY) if isinstance(answer, dict) else None
        with self._lock:
            expected = self._calls.pop(episode, 0) + 1
            if isinstance(answered, bool) or not isinstance(answered, (int, np.integer)) or answered != expected:
                raise EpisodeMemoryLost(episode, expected, answered)
            self._calls[episode] = expected
            while len(self._calls) > MAX_COUNTED_EPISODES:
                self._calls.popitem(last=False)


class _SourceBase:
    """What every source learns from the policy's metadata (the `ChunkSource` attributes)."""

    replan_steps: int = 0  # actions executed per chunk before asking again; 0 = the whole chunk
    pad_images: bool = False  # resize images with padding (openpi's clients) rather than plain resize

    def _set_metadata(self, meta: PolicyMetadata) -> None:
        spec = meta.observation_spec
        self.spec_keys = frozenset(spec)
        # Image sizes the policy expects: the actor resizes its renders to them.
        self.image_shapes = {k: v.shape for k, v in spec.items() if v.is_image}
        # Vector sizes the policy was built for: a scene whose task gives another size is skipped.
        self.vector_shapes = {k: v.shape for k, v in spec.items() if not v.is_image and v.dtype != "str"}
        self.needs_images = meta.needs_images
        self.needs_sim_state = SIM_STATE_KEY in spec
        self.chunk_len = meta.chunk_len or 1
        # A policy with per-episode memory: the sources whose policy lives in another process (Serve,
        # remote), where that memory can be lost under a running episode, check each answer's count.
        self.episode_calls = EpisodeCalls() if meta.episode_memory else None


# Backoff of a retried call: the first delay, doubled after each try up to the cap (a replica restart
# takes seconds; a capped delay keeps a caller from sleeping past the moment the replica is back).
RETRY_FIRST_S = 0.2
RETRY_CAP_S = 5.0
# Each delay is drawn from [RETRY_JITTER x delay, delay]: actors a full queue turned away together
# come back spread out instead of refilling it at the same instant.
RETRY_JITTER = 0.5


class _RetryBudget:
    """Backoff while a replica restarts or its queue is full: the next delay, until `budget_s` is spent.
    Delays double up to RETRY_CAP_S and are jittered (RETRY_JITTER)."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.deadline = time.monotonic() + budget_s
        self.delay = RETRY_FIRST_S

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def next_delay(self, exc: Exception) -> float:
        if self.expired:
            raise PolicyUnavailableError(f"policy unavailable for {self.budget_s:.0f} s: {exc}") from exc
        delay, self.delay = self.delay, min(self.delay * 2, RETRY_CAP_S)
        return delay * random.uniform(RETRY_JITTER, 1.0)


def _overloaded(answer: Any) -> bool:
    """The replica's full queue refused the request (HTTP 503's error value): transient, so it is sent
    again after a backoff, never counted as the episode's failure while the retry budget lasts."""
    return is_error_value(answer) and answer.get("kind") == OVERLOADED_KIND


class ServeSource(_SourceBase):
    def __init__(self, app: str, deployment: str, retry_s: float = 120.0, adapter: str = ""):
        from ray import serve

        self.handle = serve.get_deployment_handle(deployment, app_name=app)
        self.adapter = adapter or None
        # Multiplexed id: Serve routes an adapter's requests to replicas that already hold it.
        self._infer_handle = self.handle.options(multiplexed_model_id=adapter) if adapter else self.handle
        self.retry_s = retry_s
        self._outgoing: list[tuple[dict[str, Any], asyncio.Future]] = []  # asked this loop turn, not yet sent
        self._sending: set[asyncio.Task] = set()
        # Blocking, so never on an event loop: the rollout actor builds sources in a worker thread.
        self._set_metadata(PolicyMetadata.from_dict(self._call(lambda: self.handle.metadata.remote().result())))
        if self.episode_calls is not None:
            # One session for every request of this source (one per rollout actor and policy): all
            # the actor's episodes reach the replica that holds their memory, and a round's
            # `infer_many` call, which carries several of them, stays one call.
            self._infer_handle = self._infer_handle.options(session_id=f"eval-{uuid.uuid4().hex}")

    def _call(self, fn: Any) -> Any:
        budget = _RetryBudget(self.retry_s)
        while True:
            try:
                out = fn()
            except Exception as exc:  # noqa: BLE001 - replica restarting: retry within the budget
                time.sleep(budget.next_delay(exc))
                continue
            if not _overloaded(out) or budget.expired:
                return out  # past the budget an overloaded answer stands: `_actions` fails it, saying why
            time.sleep(budget.next_delay(RuntimeError(out.get("error"))))

    def _actions(self, obs: dict[str, Any], out: dict[str, Any]) -> np.ndarray:
        if is_error_value(out):
            raise PolicyUnavailableError(f"policy answered an error: {out['error']}")
        actions = np.asarray(out[ACTIONS_KEY])
        if self.episode_calls is not None:
            self.episode_calls.check(obs, out)
        return actions

    def next_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        return self._actions(obs, self._call(lambda: self._infer_handle.infer.remote(obs, self.adapter).result()))

    async def next_chunk_async(self, obs: dict[str, Any]) -> np.ndarray:
        # Requests made in the same event-loop turn (the envs of one round, see request_rounds)
        # leave as one `infer_many` call: one Ray call, and one group in the replica's batcher.
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._outgoing.append((obs, answer))
        if len(self._outgoing) == 1:
            loop.call_soon(self._send_outgoing)
        return await answer

    def _send_outgoing(self) -> None:
        calls, self._outgoing = self._outgoing, []
        task = asyncio.ensure_future(self._send(calls))
        self._sending.add(task)  # a strong reference until it is done (the loop keeps only weak ones)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[tuple[dict[str, Any], asyncio.Future]]) -> None:
        try:
            out = await self._infer_many([obs for obs, _ in calls])
        except asyncio.CancelledError:  # the actor is shutting down: nobody waits in vain
            for _, answer in calls:
                answer.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every caller of this call learns why
            for _, answer in calls:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for (obs, answer), value in zip(calls, out, strict=True):
            if answer.done():  # the episode went away meanwhile
                continue
            try:
                answer.set_result(self._actions(obs, value))
            except (PolicyUnavailableError, EpisodeMemoryLost) as exc:
                answer.set_exception(exc)
            except Exception as exc:  # noqa: BLE001 - a malformed answer fails its own episode only
                answer.set_exception(PolicyUnavailableError(f"malformed answer {str(value)[:80]!r}: "
                                                            f"{type(exc).__name__}: {exc}"))

    async def _infer_many(self, observations: list[dict[str, Any]]) -> list[Any]:
        """One answer per observation. Those a full queue refused (`_overloaded`), and only those, are sent
        again after a backoff, within the same retry budget as a replica restart."""
        budget = _RetryBudget(self.retry_s)
        answers: list[Any] = [None] * len(observations)
        pending = list(range(len(observations)))
        while True:
            out = await self._infer_many_once([observations[i] for i in pending], budget)
            for i, value in zip(pending, out, strict=True):
                answers[i] = value
            busy = [i for i, value in zip(pending, out, strict=True) if _overloaded(value)]
            if not busy or budget.expired:
                return answers  # past the budget an overloaded answer stands: `_actions` fails it, saying why
            pending = busy
            await asyncio.sleep(budget.next_delay(RuntimeError(answers[busy[0]].get("error"))))

    async def _infer_many_once(self, observations: list[dict[str, Any]], budget: _RetryBudget) -> list[Any]:
        """One `infer_many` call, retried while a replica restarts; one answer per observation."""
        while True:
            try:
                out = await self._infer_handle.infer_many.remote(observations, self.adapter)
                break
            except Exception as exc:  # noqa: BLE001 - replica restarting: retry within the budget
                await asyncio.sleep(budget.next_delay(exc))
        if isinstance(out, dict):  # an error about the call as a whole
            out = [out] * len(observations)
        if not isinstance(out, list) or len(out) != len(observations):
            raise PolicyUnavailableError(f"infer_many answered {type(out).__name__} for {len(observations)} requests")
        return out


class RemoteSource(_SourceBase):
    """An openpi-protocol server: sent the contract's observation, every answer checked.

    A lost connection is retried within the connect budget (the server restarted); an answer that
    is not an action chunk fails the episode with RemoteAnswerError naming what the server sent.
    """

    def __init__(self, url: str, options: RemoteOptions | None = None):
        from gauntlet.policies.remote import RemoteConnectionError, RemotePolicy

        self.options = options or RemoteOptions()
        self.url = url
        self._retry_on = RemoteConnectionError
        try:
            self.policy = RemotePolicy(url, api_key=self.options.api_key or None, timeout_s=self.options.timeout_s,
                                       connect_retry_s=self.options.connect_s)
        except RemoteConnectionError as exc:
            raise PolicyUnavailableError(str(exc)) from None
        self.contract = remote_contract(self.policy.metadata, self.options, url)
        self._set_metadata(effective_metadata(self.policy.metadata, self.contract))
        # A spec-less (openpi) server gets exactly what openpi's LIBERO client sends, images padded.
        self.pad_images = not self.contract.declared

    def next_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        if not self.contract.declared:
            obs = {k: v for k, v in obs.items() if k in self.contract.spec}
        deadline = time.monotonic() + self.options.connect_s
        while True:
            try:
                answer = self.policy.infer_one(obs)
                break
            except self._retry_on as exc:
                if time.monotonic() > deadline:
                    raise PolicyUnavailableError(f"{self.url}: {exc}") from None
                time.sleep(0.5)
        actions = check_answer(answer, self.url, self.contract)
        if self.episode_calls is not None:  # e.g. a reconnect reached a restarted or another replica
            self.episode_calls.check(obs, answer)
        return actions

    async def next_chunk_async(self, obs: dict[str, Any]) -> np.ndarray:
        # The client blocks on its socket; in a worker thread (each with its own connection, see
        # RemotePolicy) it leaves the event loop free to step the actor's other envs.
        return await asyncio.to_thread(self.next_chunk, obs)


class LocalSource(_SourceBase):
    """The policy in this process (cheap privileged policies in the rollout actors; benchmarks)."""

    def __init__(self, name: str, checkpoint: str | None = None, policy: Any = None):
        from gauntlet.policies.registry import make_policy
        from gauntlet.policies.validation import validate_observation

        self.policy = policy if policy is not None else make_policy(name, checkpoint)
        self._validate = validate_observation
        self._set_metadata(self.policy.metadata)

    def next_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        obs = self._validate(obs, self.policy.metadata.observation_spec)
        return self.policy.infer(stack_observations([obs]))[ACTIONS_KEY][0]

    async def next_chunk_async(self, obs: dict[str, Any]) -> np.ndarray:
        # On the loop's own thread: the policy is cheap, and the scripted oracle steps mirror envs,
        # which belong to the actor's one rendering thread like every other env.
        return self.next_chunk(obs)


def make_source(target: PolicyTarget) -> ChunkSource:
    """The source for `target`, built in this thread (Serve and remote sources block while they connect)."""
    source: ChunkSource
    if target.kind == "serve":
        source = ServeSource(target.app, target.deployment, adapter=target.adapter)
    elif target.kind == "remote":
        source = RemoteSource(target.url, target.remote)
    elif target.kind == "local":
        from gauntlet.policies.registry import PolicyRef

        ref = PolicyRef.parse(target.policy)
        source = LocalSource(ref.name, ref.checkpoint)
    else:
        raise ValueError(f"unknown policy target kind {target.kind!r}")
    source.replan_steps = target.replan_steps
    return source


async def open_source(target: PolicyTarget) -> ChunkSource:
    """`make_source` for an event loop: connecting (Serve metadata, a remote handshake) happens in a
    worker thread so the loop keeps stepping envs; an in-process policy is built on the loop's thread,
    where its envs (the oracle's mirrors) must live."""
    if target.kind == "local":
        return make_source(target)
    return await asyncio.to_thread(make_source, target)
