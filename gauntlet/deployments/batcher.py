"""The replica's batcher: one batch at a time on its own inference thread, no wait for a lone request.

Serve's `@serve.batch` waits `batch_wait_timeout_s` for a partial batch even when nothing else is
queued, so at C = 1 every request paid the whole timeout on top of inference; and it runs the batch
on the replica's event loop, so no request is even received while a batch runs. Here:

- inference runs on one dedicated thread, so the event loop keeps accepting (and validating)
  requests meanwhile; whatever queued while a batch ran forms the next batch as soon as it ends, up
  to `max_batch_size` (those requests have waited already);
- a request that finds the batcher idle is dispatched from `submit` itself (not one event-loop turn
  later) unless requests have recently overlapped in the replica (two or more in flight together):
  only then does a partial batch wait for company, up to `batch_wait_timeout_s` after its first
  request arrived or after the previous batch ended, whichever is later (the callers that batch
  just answered are the ones about to send again: with 16 closed-loop clients this keeps batches
  of 16 instead of alternating 15 and 1). A wait that brings nobody switches back to running lone
  requests at once;
- `submit_many` queues several items as one group (a rollout actor's envs whose chunks ran out
  together): they join the queue together, so an idle batcher starts them as one batch rather than
  the first alone and the rest after it;
- the queue is bounded (`max_queued` requests waiting behind the running batch): a request that
  finds it full is answered at once with a `QueueFull` value, never queued and never awaited, and
  the requests already queued are untouched. Without a bound a replica that cannot keep up holds
  every caller's observation in memory and answers each later than the last; with it the excess is
  told to come back (HTTP 503, gRPC UNAVAILABLE), which a caller with a retry budget can do.

`configure` changes the limits live (Serve's `reconfigure`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

ItemT = TypeVar("ItemT")
# A replica's batching defaults: the largest batch one infer call sees, and how long a partial batch
# waits for company (only while requests overlap; a lone request never waits).
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_S = 0.005
# The default queue bound: this many full batches may wait behind the running one, and never fewer
# than MIN_QUEUED requests (a serial policy, max_batch_size 1, still queues a few callers' worth).
QUEUED_BATCHES = 4
MIN_QUEUED = 64
# What a replica answers a request its full queue refused (`error_values.error_value` kind and
# status): transient, so callers with a retry budget back off and send it again.
OVERLOADED_KIND = "overloaded"
OVERLOADED_STATUS = 503


def default_max_queued(max_batch_size: int) -> int:
    """The queue bound when none is configured (`max_queued=0`)."""
    return max(MIN_QUEUED, QUEUED_BATCHES * max_batch_size)


def check_limits(max_batch_size: int, batch_wait_timeout_s: float, max_queued: int = 0) -> None:
    """ValueError naming the limit that is out of range (`max_queued` 0: the default)."""
    if max_batch_size < 1 or batch_wait_timeout_s < 0:
        raise ValueError("max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
    if max_queued < 0 or 0 < max_queued < max_batch_size:
        # Fewer than a batch could never fill one: a partial batch would wait out its timeout.
        raise ValueError(f"max_queued must be 0 (the default) or >= max_batch_size ({max_batch_size}), "
                         f"got {max_queued}")


class QueueFull(Exception):
    """The answer (a value, not raised) to a request that found the queue full."""

# (item, time.perf_counter() when submitted, the caller's future, the submission it came in)
_Entry = tuple[Any, float, asyncio.Future, int]


class Batcher(Generic[ItemT]):
    """`await submit(item)` -> that item's entry of `run_batch(items, enqueued_at)`, which runs on the
    inference thread and returns one result per item, in order (`enqueued_at`: each item's
    `time.perf_counter()` when it was submitted, for queue-wait statistics). All other methods are
    called on the replica's event loop."""

    def __init__(self, run_batch: Callable[[list[ItemT], list[float]], list[Any]], max_batch_size: int,
                 batch_wait_timeout_s: float, max_queued: int = 0):
        check_limits(max_batch_size, batch_wait_timeout_s, max_queued)
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_queued_setting = max_queued  # as configured; 0: default_max_queued(max_batch_size)
        # One thread: batches never overlap (a policy is not assumed thread-safe), and everything
        # else that touches the policy (adapter loads, warm-up) is serialised on it too.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="gauntlet-infer")
        self.concurrent = False  # requests overlapped recently: partial batches wait for company
        self._queue: deque[_Entry] = deque()
        self._running = False  # a batch is on the inference thread
        self._timer: asyncio.TimerHandle | None = None  # a partial batch's deadline
        self._in_flight = 0  # submitted, not yet answered
        self._free_since = 0.0  # time.perf_counter() when the last batch ended
        self._submissions = 0  # submissions so far: numbers each entry's group

    @property
    def max_queued(self) -> int:
        """Requests that may wait behind the running batch; more are answered `QueueFull`."""
        return self.max_queued_setting or default_max_queued(self.max_batch_size)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float, max_queued: int | None = None) -> None:
        """New limits (`max_queued` None: unchanged). A lower bound refuses new requests only: those
        already queued stay queued."""
        max_queued = self.max_queued_setting if max_queued is None else max_queued
        check_limits(max_batch_size, batch_wait_timeout_s, max_queued)
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_queued_setting = max_queued
        if self._queue and not self._running:
            self._cancel_timer()
            self._dispatch(asyncio.get_running_loop())  # a waiting batch re-reads the limits

    async def submit(self, item: ItemT) -> Any:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: list[ItemT]) -> list[Any]:
        """Queues `items` together and returns their results in order (a batch larger than
        `max_batch_size` is split; the first `max_batch_size` run together). Items past the room
        left in the queue are answered `QueueFull` at once; the ones before them are queued."""
        room = max(0, self.max_queued - len(self._queue))
        refused: list[Any] = [QueueFull(f"the replica's queue is full ({self.max_queued} requests wait for "
                                        f"its inference thread); retry later")] * max(0, len(items) - room)
        items = items[:room]
        if not items:
            return refused
        loop = asyncio.get_running_loop()
        if self._in_flight:
            self.concurrent = True
        self._in_flight += len(items)
        self._submissions += 1
        now = time.perf_counter()
        futures = [loop.create_future() for _ in items]
        self._queue.extend((item, now, future, self._submissions) for item, future in zip(items, futures, strict=True))
        try:
            if not self._running:
                self._dispatch(loop)
            if len(futures) == 1:
                return [await futures[0], *refused]
            return [*(await asyncio.gather(*futures)), *refused]
        finally:
            self._in_flight -= len(items)

    async def run_on_inference_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` between batches (e.g. loading an adapter, compiling buckets)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ---------------------------------------------------------------------------- internals
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts the next batch now, or arms the deadline of a partial batch that waits for company."""
        while self._queue and self._queue[0][2].done():  # callers that went away (cancelled) are not run
            self._queue.popleft()
        if not self._queue:
            self._cancel_timer()
            return
        waiting = self.concurrent and len(self._queue) < self.max_batch_size
        deadline = max(self._queue[0][1], self._free_since) + self.batch_wait_timeout_s
        if waiting and time.perf_counter() < deadline:
            if self._timer is None:
                self._timer = loop.call_later(deadline - time.perf_counter(), self._on_deadline, loop)
            return
        self._cancel_timer()
        batch: list[_Entry] = []
        while self._queue and len(batch) < self.max_batch_size:
            entry = self._queue.popleft()
            if not entry[2].done():
                batch.append(entry)
        if waiting and len({e[3] for e in batch}) == 1:
            self.concurrent = False  # a whole wait brought nobody: lone requests run at once again
        self._running = True
        done = loop.run_in_executor(self.executor, self.run_batch, [e[0] for e in batch], [e[1] for e in batch])
        done.add_done_callback(lambda fut: self._finish(loop, batch, fut))

    def _on_deadline(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._running:
            self._dispatch(loop)

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list[_Entry], done: asyncio.Future) -> None:
        self._running = False
        self._free_since = time.perf_counter()
        exc = done.exception()  # run_batch answers per item; a raise is a bug, told to every caller
        results = [None] * len(batch) if exc is not None else list(done.result())
        if len(results) != len(batch):
            exc = RuntimeError(f"run_batch answered {len(results)} of {len(batch)} requests")
            results = [None] * len(batch)
        for (_, _, future, _), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)
        self._dispatch(loop)
