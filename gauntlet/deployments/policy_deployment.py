"""The batched policy replica: many rollout actors' requests become one `policy.infer` call.

Requests are validated one by one before they join a batch (a malformed one fails alone), grouped
by LoRA adapter inside the batch, padded by the policy to its compiled bucket, and split back. If the
policy still raises on a group, the group is split in halves and retried, so the request it raises
on is found and answered alone (422: the policy rejected its content) while its batch-mates get
their actions; a group in which every request fails is the policy's fault (500).
Batches form in `batcher.Batcher` (no wait for a lone request; inference on its own thread);
`max_batch_size` and `batch_wait_timeout_s` change live through `reconfigure` (Serve's user_config).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from gauntlet.deployments.adapters import (
    AdapterNameError,
    UnknownAdapterError,
    check_adapter_name,
    load_failure_message,
    resolve_adapter,
)
from gauntlet.deployments.batcher import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_BATCH_SIZE,
    OVERLOADED_KIND,
    OVERLOADED_STATUS,
    Batcher,
    QueueFull,
    check_limits,
)
from gauntlet.deployments.error_values import error_value
from gauntlet.deployments.replica_stats import ReplicaStats
from gauntlet.keys import ACTIONS_KEY, EPISODE_CALLS_KEY, SERVER_TIMING_KEY
from gauntlet.policies.base import CountsCompiles, ServesAdapters, WarmsUp, stack_observations
from gauntlet.policies.validation import ObservationError, validate_observation

# Serve's own default max_ongoing_requests (5) would silently cap every batch at 5; the deployment
# options set it to a multiple of the largest batch instead (see app.py).
ONGOING_PER_BATCH_SLOT = 2
# Environment of the replica processes. Serve runs user code on a second event loop in its own thread
# by default, so that blocking user code cannot stall the replica; here inference already runs on the
# batcher's thread and the request path never blocks, so that second loop only added a cross-thread
# hop to every request and every WebSocket message (C = 1, no-op policy: WebSocket 5.1 -> 2.7 ms,
# gRPC 8.5 -> 5.7 ms on the 2-core CI machine). Ray documents the switch among its throughput settings.
REPLICA_ENV_VARS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


class AdapterLoadError(RuntimeError):
    """An adapter that exists but cannot be loaded; the message names it, never its host path."""


class PolicyError(RuntimeError):
    """The policy itself failed on a batch (not the request's fault)."""


class RejectedByPolicy(ValueError):
    """The policy raised on this request's content alone (its batch-mates succeeded)."""


def _newest_mtime(directory: str) -> int:
    """The newest modification time of a directory and its entries: changes when a file is fixed."""
    with os.scandir(directory) as entries:
        return max([os.stat(directory).st_mtime_ns, *(e.stat().st_mtime_ns for e in entries)])


@dataclass(frozen=True)
class _Item:
    obs: dict[str, Any]
    adapter: str | None


class _AdapterRef:
    """What `serve.multiplexed` caches: unloads the adapter from the shared base when evicted, on
    the inference thread (between batches, never under one that is running)."""

    def __init__(self, policy: Any, name: str, batcher: Batcher):
        self.policy = policy
        self.name = name
        self.batcher = batcher

    def _unload(self) -> None:
        if isinstance(self.policy, ServesAdapters):
            try:
                self.policy.remove_adapter(self.name)
            except Exception:  # noqa: BLE001 - eviction must never take the replica down
                pass

    def __del__(self) -> None:
        try:
            self.batcher.executor.submit(self._unload)
        except RuntimeError:  # the replica is shutting down: nothing left to unload for
            pass


class PolicyReplica:
    """Deployment class (wrapped by `serve.deployment` in app.py)."""

    def __init__(self, policy_name: str, checkpoint: str | None = None, policy_kwargs: dict | None = None,
                 adapters_dir: str | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, max_queued: int = 0):
        from gauntlet.policies.registry import make_policy

        self.name = policy_name
        self.policy = make_policy(policy_name, checkpoint, **(policy_kwargs or {}))
        self.spec = self.policy.metadata.observation_spec
        self.adapters_dir = adapters_dir
        self._broken_adapters: dict[str, tuple[int, str]] = {}  # name -> (its dir's mtime, message)
        self.stats = ReplicaStats(policy_name)
        self._warm_buckets = 0
        check_limits(max_batch_size, batch_wait_timeout_s, max_queued)
        self._warm(max_batch_size)  # before Serve reports the replica healthy
        self.batcher = Batcher(self._infer_batch, max_batch_size, batch_wait_timeout_s, max_queued)

    # ---------------------------------------------------------------------- configuration
    def _warm(self, max_batch_size: int) -> None:
        """Compiles every bucket up to `max_batch_size`, so no request ever waits on a compile."""
        if isinstance(self.policy, WarmsUp) and max_batch_size > self._warm_buckets:
            self.policy.warmup(max_batch_size)
            self._warm_buckets = max_batch_size

    @property
    def max_batch_size(self) -> int:
        return self.batcher.max_batch_size

    @property
    def batch_wait_timeout_s(self) -> float:
        return self.batcher.batch_wait_timeout_s

    async def reconfigure(self, user_config: dict) -> None:
        """Live batch settings: {"max_batch_size": N, "batch_wait_timeout_s": T, "max_queued": Q}."""
        size = int(user_config.get("max_batch_size", self.max_batch_size))
        timeout_s = float(user_config.get("batch_wait_timeout_s", self.batch_wait_timeout_s))
        max_queued = int(user_config.get("max_queued", self.batcher.max_queued_setting))
        check_limits(size, timeout_s, max_queued)
        # Compile on the inference thread, between batches, *before* the batch size grows.
        await self.batcher.run_on_inference_thread(self._warm, size)
        self.batcher.configure(size, timeout_s, max_queued)

    # ---------------------------------------------------------------------------- serving
    def metadata(self) -> dict[str, Any]:
        meta = self.policy.metadata.to_dict()
        meta["serving"] = {"max_batch_size": self.max_batch_size,
                           "batch_wait_timeout_s": self.batch_wait_timeout_s, "max_queued": self.batcher.max_queued}
        return meta

    def get_stats(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap["max_batch_size"] = self.max_batch_size
        snap["batch_wait_timeout_s"] = self.batch_wait_timeout_s
        snap["max_queued"] = self.batcher.max_queued
        snap["queued"] = self.batcher.queued  # waiting behind the running batch right now
        # JAX policies: compilations so far. Flat after start-up means no request waited on one.
        snap["compile_count"] = int(self.policy.compile_count) if isinstance(self.policy, CountsCompiles) else 0
        return snap

    def reset_stats(self) -> None:
        self.stats = ReplicaStats(self.name)

    @serve.multiplexed(max_num_models_per_replica=8)
    async def _load_adapter(self, adapter: str) -> _AdapterRef:
        """Loads the adapter of canonical name `adapter` (one multiplex slot per canonical name)."""
        if not isinstance(self.policy, ServesAdapters):
            raise UnknownAdapterError(adapter, [])
        loader = self.policy.load_adapter
        name, path = resolve_adapter(self.adapters_dir, adapter)
        stamp = _newest_mtime(path)
        failed = self._broken_adapters.get(name)
        if failed is not None and failed[0] == stamp:  # unchanged since it failed: not read again
            raise AdapterLoadError(failed[1])
        try:
            await self.batcher.run_on_inference_thread(loader, name, path)  # never during a batch
        except Exception as exc:  # noqa: BLE001 - any loader failure is this adapter's, answered by name
            message = load_failure_message(name, path, exc)
            print(f"[serve] {self.name}: adapter {name!r} at {path} failed to load: {exc!r}", flush=True)
            self._broken_adapters[name] = (stamp, message)
            raise AdapterLoadError(message) from None
        self._broken_adapters.pop(name, None)
        return _AdapterRef(self.policy, name, self.batcher)

    async def infer(self, obs: Any, adapter: str | None = None) -> dict[str, Any]:
        """One observation -> {"actions": (H, D), "server_timing": {...}}, or an error *value*
        `{"error": message, "status": http_status, "kind": ...}` for this caller only.

        Errors travel as values, not exceptions: they are the client's answer, not a replica
        failure, and typed exceptions do not survive Ray's cross-process serialisation intact.
        """
        admitted = await self._admit(obs, adapter)
        if isinstance(admitted, dict):
            return admitted
        return self._answer(await self.batcher.submit(admitted))

    async def infer_many(self, observations: Any, adapter: str | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        """Observations sent together (a rollout actor's envs whose chunks ran out together) -> one
        answer each, as `infer` gives it; they join the batcher as one group, so they share a batch.
        Not a list: one error value for the whole call."""
        if not isinstance(observations, list):
            self.stats.record_request("invalid")
            return error_value("invalid_observation", 400,
                               f"infer_many takes a list of observations, got {type(observations).__name__}")
        admitted = [await self._admit(obs, adapter) for obs in observations]
        items = [a for a in admitted if isinstance(a, _Item)]
        results = iter(await self.batcher.submit_many(items) if items else ())
        return [a if isinstance(a, dict) else self._answer(next(results)) for a in admitted]

    async def _admit(self, obs: Any, adapter: str | None) -> _Item | dict[str, Any]:
        """The request as it joins a batch (validated, its adapter loaded), or its error value."""
        try:
            validated = validate_observation(obs, self.spec)
        except ObservationError as exc:
            self.stats.record_request("invalid")
            return error_value("invalid_observation", 400, f"invalid observation: {exc}", field=exc.field)
        try:
            adapter = check_adapter_name(adapter)
            if adapter:
                adapter = resolve_adapter(self.adapters_dir, adapter)[0]  # canonical: one slot per adapter
                await self._load_adapter(adapter)
        except AdapterNameError as exc:
            self.stats.record_request("invalid")
            return error_value("invalid_adapter", 400, str(exc), field="adapter")
        except UnknownAdapterError as exc:
            self.stats.record_request("unknown_adapter")
            return error_value("unknown_adapter", 404, str(exc))
        except AdapterLoadError as exc:
            self.stats.record_request("error")
            return error_value("adapter_unusable", 500, str(exc))
        return _Item(validated, adapter)

    def _answer(self, result: Any) -> dict[str, Any]:
        """The batch's result for one request, as the caller's answer."""
        if isinstance(result, QueueFull):
            self.stats.record_request(OVERLOADED_KIND)
            return error_value(OVERLOADED_KIND, OVERLOADED_STATUS, str(result))
        if isinstance(result, RejectedByPolicy):
            self.stats.record_request("invalid")
            return error_value("rejected_by_policy", 422, f"the policy rejected this observation: {result}")
        if isinstance(result, Exception):
            self.stats.record_request("error")
            return error_value("policy_error", 500, str(result))
        self.stats.record_request("ok")
        return result

    def _infer_batch(self, items: list[_Item], enqueued_at: list[float]) -> list[Any]:
        """Runs on the batcher's inference thread: one result (or exception value) per item."""
        start = time.perf_counter()
        results: list[Any] = [None] * len(items)
        groups: dict[str | None, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.adapter, []).append(i)
        for adapter, idx in groups.items():
            answers = self._infer_isolating(adapter, [items[i].obs for i in idx])
            served = any(isinstance(a, dict) for a in answers)
            for i, answer in zip(idx, answers, strict=True):
                if isinstance(answer, dict):
                    results[i] = answer
                elif served or isinstance(answer, ObservationError):
                    results[i] = RejectedByPolicy(f"{type(answer).__name__}: {answer}")
                else:
                    results[i] = PolicyError(f"{type(answer).__name__}: {answer}")
        infer_ms = (time.perf_counter() - start) * 1e3
        waits = [(start - t) * 1e3 for t in enqueued_at]
        self.stats.record_batch(len(items), waits, infer_ms)
        for r, w in zip(results, waits, strict=True):
            if isinstance(r, dict):
                r[SERVER_TIMING_KEY] = {"infer_ms": infer_ms, "queue_wait_ms": w, "batch_size": len(items)}
        return results

    def _infer_actions(self, adapter: str | None, observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One answer per observation: {"actions": (H, D)}, plus EPISODE_CALLS_KEY (an int) from a
        policy with per-episode memory."""
        batch = stack_observations(observations)
        out = self.policy.infer(batch) if adapter is None else self.policy.infer(batch, adapter=adapter)
        actions = np.asarray(out[ACTIONS_KEY], dtype=np.float32)  # (B, H, D)
        if actions.shape[0] != len(observations):
            raise PolicyError(f"policy returned {actions.shape[0]} action chunks for {len(observations)} requests")
        if not np.all(np.isfinite(actions)):
            raise PolicyError("policy returned non-finite actions")
        answers: list[dict[str, Any]] = [{ACTIONS_KEY: a} for a in actions]
        if EPISODE_CALLS_KEY in out:
            calls = np.asarray(out[EPISODE_CALLS_KEY]).reshape(-1)
            if calls.shape[0] != len(observations):
                raise PolicyError(f"policy returned {calls.shape[0]} {EPISODE_CALLS_KEY} for {len(observations)} requests")
            for answer, n in zip(answers, calls.tolist(), strict=True):
                answer[EPISODE_CALLS_KEY] = int(n)
        return answers

    def _infer_isolating(self, adapter: str | None, observations: list[dict[str, Any]]) -> list[Any]:
        """Per observation: its answer (`_infer_actions`), or the exception inference raised on it.

        A failing group is halved and each half retried, so one request the policy cannot handle
        costs its batch-mates about 2*log2(B) extra calls, never their answers.

        Known cost for a policy with per-episode memory: the failed call may already have advanced
        the memory of some rows, and the retry advances it again, so their answers' `episode_calls`
        run ahead of the client's count. The client detects it (EpisodeMemoryLost) and restarts
        those episodes from their scenes (counted in `episode_restarts`): rows stay right, at the
        price of re-running them.
        """
        try:
            return self._infer_actions(adapter, observations)
        except Exception as exc:  # noqa: BLE001 - isolated below, answered per request
            if len(observations) == 1:
                return [exc]
        half = len(observations) // 2
        return (self._infer_isolating(adapter, observations[:half])
                + self._infer_isolating(adapter, observations[half:]))
