"""The replica's batcher, alone (asyncio, no Ray) and inside real Serve replicas.

A lone request runs at once instead of waiting out the batch timeout; requests that arrive together
or while a batch runs share the next batch; the limits change live; a caller that raises or goes
away never takes another's answer. Assertions are on recorded batch sizes and queue waits (the
replica's own statistics), never on wall-clock speed: the timeouts here are seconds long, so a
request that waited one would show it in its recorded wait.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from gauntlet.deployments.batcher import MIN_QUEUED, QUEUED_BATCHES, Batcher, QueueFull, default_max_queued

LONG_S = 30.0  # a batch timeout no lone request may pay


class _Recorder:
    """run_batch for the tests: answers each item with itself * 10 and records sizes and waits."""

    def __init__(self, gate: threading.Event | None = None):
        self.sizes: list[int] = []
        self.waits_s: list[float] = []
        self.gate = gate  # when set, the first batch holds until the gate opens
        self.started = threading.Event()

    def __call__(self, items: list[int], enqueued_at: list[float]) -> list[int]:
        now = time.perf_counter()
        self.waits_s += [now - t for t in enqueued_at]
        self.sizes.append(len(items))
        self.started.set()
        if self.gate is not None and len(self.sizes) == 1:
            self.gate.wait(60)
        return [i * 10 for i in items]


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, LONG_S / 2))  # a hang fails instead of waiting LONG_S


def _gated() -> tuple[threading.Event, _Recorder, Batcher]:
    """A batcher with no batch wait whose first batch holds until the returned gate is set."""
    gate = threading.Event()
    rec = _Recorder(gate)
    return gate, rec, Batcher(rec, max_batch_size=16, batch_wait_timeout_s=0.0)


async def _running_alone(batcher: Batcher, rec: _Recorder, item: int) -> asyncio.Future:
    """Submits `item` to an idle batcher and returns once its batch of one is running (held by the gate)."""
    first = asyncio.ensure_future(batcher.submit(item))
    while not rec.started.is_set():
        await asyncio.sleep(0.01)
    return first


def test_a_lone_request_runs_at_once_without_waiting_the_timeout() -> None:
    rec = _Recorder()
    batcher = Batcher(rec, max_batch_size=8, batch_wait_timeout_s=LONG_S)

    async def one_at_a_time() -> list[int]:
        return [await batcher.submit(i) for i in range(5)]

    assert _run(one_at_a_time()) == [0, 10, 20, 30, 40]
    assert rec.sizes == [1] * 5
    assert max(rec.waits_s) < LONG_S / 10  # none of them waited for company
    assert not batcher.concurrent


def test_requests_that_arrive_together_fill_batches_before_the_timeout() -> None:
    rec = _Recorder()
    batcher = Batcher(rec, max_batch_size=4, batch_wait_timeout_s=LONG_S)

    async def together() -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(9))))

    assert _run(together()) == [i * 10 for i in range(9)]
    # The first found the batcher idle and ran at once; the others overlapped it and went in full
    # batches, each flushed when full, never held for the timeout.
    assert rec.sizes == [1, 4, 4]
    assert batcher.concurrent


def test_requests_that_queue_while_a_batch_runs_form_the_next_one() -> None:
    gate, rec, batcher = _gated()

    async def scenario() -> list[int]:
        first = await _running_alone(batcher, rec, 100)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(10)]
        await asyncio.sleep(0.05)
        gate.set()
        return [await first] + [await r for r in rest]

    assert _run(scenario()) == [1000] + [i * 10 for i in range(10)]
    assert rec.sizes == [1, 10]


def test_a_group_submitted_together_is_one_batch_not_a_lone_first_and_the_rest() -> None:
    rec = _Recorder()
    batcher = Batcher(rec, max_batch_size=4, batch_wait_timeout_s=LONG_S)

    async def scenario() -> tuple[list[int], list[int], int]:
        group = await batcher.submit_many([1, 2, 3])
        big = await batcher.submit_many(list(range(6)))  # past max_batch_size: split, in order
        return group, big, await batcher.submit(9)

    group, big, lone = _run(scenario())
    assert (group, big, lone) == ([10, 20, 30], [i * 10 for i in range(6)], 90)
    assert rec.sizes == [3, 4, 2, 1]
    assert max(rec.waits_s) < LONG_S / 10  # a group alone never waits for company either


def test_configure_changes_the_batch_size_live() -> None:
    rec = _Recorder()
    batcher = Batcher(rec, max_batch_size=16, batch_wait_timeout_s=0.01)
    batcher.configure(max_batch_size=2, batch_wait_timeout_s=0.01)

    async def together() -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(7))))

    assert _run(together()) == [i * 10 for i in range(7)]
    assert max(rec.sizes) == 2 and sum(rec.sizes) == 7


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    calls = []

    def flaky(items: list[int], enqueued_at: list[float]) -> list[int]:
        calls.append(list(items))
        if 1 in items:
            raise RuntimeError("boom")
        return items

    batcher = Batcher(flaky, max_batch_size=4, batch_wait_timeout_s=0.0)

    async def scenario() -> tuple[list, int]:
        first = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        return first, await batcher.submit(3)

    first, after = _run(scenario())
    assert calls == [[1], [2], [3]]
    assert isinstance(first[0], RuntimeError) and first[1] == 2 and after == 3


def test_a_caller_that_went_away_is_not_run() -> None:
    gate, rec, batcher = _gated()

    async def scenario() -> list[int]:
        first = await _running_alone(batcher, rec, 0)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        return [await first, await kept]

    assert _run(scenario()) == [0, 20]
    assert rec.sizes == [1, 1]  # the cancelled request never reached the policy


def test_a_full_queue_answers_at_once_and_leaves_the_queued_requests_alone() -> None:
    """Bound 2 behind a running batch: the 3rd..5th requests are answered QueueFull while the batch
    still runs (never queued, never awaited); the two queued ones and later requests get their answers."""
    gate = threading.Event()
    rec = _Recorder(gate)
    batcher = Batcher(rec, max_batch_size=2, batch_wait_timeout_s=0.0, max_queued=2)

    async def scenario() -> tuple[list, list, list, int]:
        first = await _running_alone(batcher, rec, 1)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0)
        refused = await asyncio.gather(*(batcher.submit(i) for i in (4, 5, 6)))  # the gate is still shut
        group = await batcher.submit_many([7, 8])
        assert not gate.is_set() and batcher.queued == 2 and not any(q.done() for q in queued)
        gate.set()
        answered = [await first] + [await q for q in queued]
        return answered, refused, group, await batcher.submit(9)

    answered, refused, group, after = _run(scenario())
    assert answered == [10, 20, 30] and after == 90
    assert all(isinstance(r, QueueFull) for r in refused + group)
    assert "queue is full (2 requests" in str(refused[0])
    assert rec.sizes == [1, 2, 1]  # the refused never reached run_batch


def test_a_group_takes_the_room_left_and_the_rest_is_refused_in_order() -> None:
    gate = threading.Event()
    rec = _Recorder(gate)
    batcher = Batcher(rec, max_batch_size=2, batch_wait_timeout_s=0.0, max_queued=3)

    async def scenario() -> tuple[Any, list]:
        first = await _running_alone(batcher, rec, 1)
        waiting = asyncio.ensure_future(batcher.submit(2))
        group = asyncio.ensure_future(batcher.submit_many([3, 4, 5, 6]))  # room for two of four
        while batcher.queued < 3:
            await asyncio.sleep(0.01)
        gate.set()
        await first, await waiting
        return await group

    out = _run(scenario())
    assert out[:2] == [30, 40] and all(isinstance(r, QueueFull) for r in out[2:])
    assert sorted(rec.sizes) == [1, 1, 2]


def test_the_queue_bound_defaults_from_the_batch_size_and_changes_live() -> None:
    batcher = Batcher(_Recorder(), max_batch_size=32, batch_wait_timeout_s=0.0)
    assert batcher.max_queued == default_max_queued(32) == QUEUED_BATCHES * 32
    batcher.configure(max_batch_size=1, batch_wait_timeout_s=0.0)
    assert batcher.max_queued == default_max_queued(1) == MIN_QUEUED  # a serial policy still queues some
    batcher.configure(max_batch_size=4, batch_wait_timeout_s=0.0, max_queued=8)
    assert batcher.max_queued == 8
    with pytest.raises(ValueError, match="max_queued must be 0 .* or >= max_batch_size \\(4\\), got 3"):
        batcher.configure(max_batch_size=4, batch_wait_timeout_s=0.0, max_queued=3)
    with pytest.raises(ValueError, match="max_queued"):
        Batcher(_Recorder(), max_batch_size=2, batch_wait_timeout_s=0.0, max_queued=-1)
    assert batcher.max_queued == 8  # a refused change leaves the limits as they were


def test_lowering_the_bound_live_keeps_what_is_already_queued() -> None:
    gate = threading.Event()
    rec = _Recorder(gate)
    batcher = Batcher(rec, max_batch_size=2, batch_wait_timeout_s=0.0, max_queued=6)

    async def scenario() -> tuple[list, Any]:
        first = await _running_alone(batcher, rec, 1)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(2, 7)]
        await asyncio.sleep(0)
        batcher.configure(max_batch_size=2, batch_wait_timeout_s=0.0, max_queued=2)
        refused = await batcher.submit(7)
        gate.set()
        return [await first] + [await q for q in queued], refused

    answered, refused = _run(scenario())
    assert answered == [10, 20, 30, 40, 50, 60] and isinstance(refused, QueueFull)


# ------------------------------------------------------------------------------ on real Serve

STATE = "observation/state"
REPLICA_TIMEOUT_S = 2.0  # the replica's batch timeout: long next to its 0.3 s batches


class _SlowPolicy:
    """The random policy, 0.3 s per call (a model whose batch takes a while), rejecting state[0] == 7."""

    def __init__(self) -> None:
        from gauntlet.policies.random_policy import RandomPolicy

        self.inner = RandomPolicy()
        self.metadata = self.inner.metadata

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.3)
        if np.any(batch[STATE][:, 0] == 7):
            raise ValueError("state[0] == 7 is outside what this model was trained on")
        return self.inner.infer(batch)


def _slow_replica_class():
    from gauntlet.deployments.policy_deployment import PolicyReplica

    class SlowReplica(PolicyReplica):
        def __init__(self) -> None:
            super().__init__("random", max_batch_size=8, batch_wait_timeout_s=REPLICA_TIMEOUT_S)
            self.policy = _SlowPolicy()

    return SlowReplica


@pytest.fixture(scope="module")
def slow(ray_session):
    import sys

    from ray import cloudpickle, serve

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test policy lives in this module
    app = serve.deployment(_slow_replica_class(), name="slow", max_ongoing_requests=64,
                           ray_actor_options={"num_cpus": 0.25}).bind()
    handle = serve.run(app, name="slow-batching", route_prefix=None)
    yield handle
    serve.delete("slow-batching")
    serve.shutdown()  # serve.run started Serve with default HTTP options: later modules start their own


def test_lone_requests_on_a_replica_are_not_held_for_the_timeout(slow) -> None:
    slow.reset_stats.remote().result()
    for i in range(3):
        out = slow.infer.remote({STATE: np.full(8, i, np.float32)}).result()
        assert out["actions"].shape == (8, 7) and out["server_timing"]["batch_size"] == 1
    stats = slow.get_stats.remote().result()
    assert stats["batch_sizes"] == {1: 3}
    assert stats["mean_queue_wait_ms"] < REPLICA_TIMEOUT_S * 1e3 / 2  # recorded by the replica: no timeout waited


def test_concurrent_requests_share_batches_and_a_bad_one_fails_alone(slow) -> None:
    slow.reset_stats.remote().result()
    states = [np.full(8, 7.0 if i == 6 else 0.5, np.float32) for i in range(12)]
    answers = [r.result() for r in [slow.infer.remote({STATE: s}) for s in states]]
    stats = slow.get_stats.remote().result()
    assert stats["max_batch_size_seen"] > 1 and sum(k * v for k, v in stats["batch_sizes"].items()) == 12
    assert answers[6]["status"] == 422 and "state[0] == 7" in answers[6]["error"]
    assert all(a["actions"].shape == (8, 7) for i, a in enumerate(answers) if i != 6)


def test_observations_sent_together_share_one_batch_and_a_bad_one_fails_alone(slow) -> None:
    """`infer_many` (a rollout actor's round): one group in the batcher even with nothing else queued."""
    slow.reset_stats.remote().result()
    observations = [{STATE: np.full(8, 0.5, np.float32)} for _ in range(5)]
    observations[2] = {STATE: np.full(3, 0.5, np.float32)}  # wrong shape: refused before batching
    answers = slow.infer_many.remote(observations).result()
    assert [a.get("status") for a in answers] == [None, None, 400, None, None]
    assert all(a["actions"].shape == (8, 7) and a["server_timing"]["batch_size"] == 4
               for i, a in enumerate(answers) if i != 2)
    assert "observation/state" in answers[2]["error"]
    stats = slow.get_stats.remote().result()
    assert stats["batch_sizes"] == {4: 1} and stats["requests"] == {"ok": 4, "invalid": 1}
    not_a_list = slow.infer_many.remote({STATE: np.zeros(8, np.float32)}).result()
    assert not_a_list["status"] == 400 and "list" in not_a_list["error"]
