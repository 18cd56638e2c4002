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
  the first alone and the rest after it.

`configure` changes both limits live (Serve's `reconfigure`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

ItemT = TypeVar("ItemT")
# (item, time.perf_counter() when submitted, the caller's future, the submission it came in)
_Entry = tuple[Any, float, asyncio.Future, int]


class Batcher(Generic[ItemT]):
    """`await submit(item)` -> that item's entry of `run_batch(items, enqueued_at)`, which runs on the
    inference thread and returns one result per item, in order (`enqueued_at`: each item's
    `time.perf_counter()` when it was submitted, for queue-wait statistics). All other methods are
    called on the replica's event loop."""

    def __init__(self, run_batch: Callable[[list[ItemT], list[float]], list[Any]], max_batch_size: int,
                 batch_wait_timeout_s: float):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
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

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        if self._queue and not self._running:
            self._cancel_timer()
            self._dispatch(asyncio.get_running_loop())  # a waiting batch re-reads the limits

    async def submit(self, item: ItemT) -> Any:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: list[ItemT]) -> list[Any]:
        """Queues `items` together and returns their results in order (a batch larger than
        `max_batch_size` is split; the first `max_batch_size` run together)."""
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
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
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
