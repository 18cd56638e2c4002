"""Requests in rounds: the envs of one rollout actor that share a served policy ask it together.

An actor renders its envs' observations one after another on its one thread. Sent as each env's
chunk runs out, requests leave a render apart (tens of ms on a CPU) while a small model answers in a
few, so the replica almost never holds two at once: with 2 actors x 4 envs its mean batch was 1.02.
Here an env whose chunk is used up renders its observation and then waits at the round's gate until
every episode of the actor on that policy is waiting there too; then they all send in the same
event-loop turn, which `ServeSource` turns into one `infer_many` call, one group in the replica's
batcher. The wait costs the actor almost no work: while an env waits, the envs it waits for are
stepping on the same thread (only while a round's answers are in flight does the thread idle, one
round trip per round instead of overlapping it with other envs' steps). Envs answered together step
together, so they run out together again; an episode that starts mid-round (its predecessor
finished early) waits for the others to come round and joins the next.

An episode that waits at the gate is not yet "sending": its latency counts from the send.

`Seats` are the actor's K episode slots. The driver sends an actor one item more than it has seats;
when an episode ends, the waiting item takes its seat over at once (no driver round trip with an
idle env) and joins its rounds before the finished episode leaves them, so a round never leaves one
short because an episode ended just before it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RequestRounds:
    """The gate of one policy on one actor. An episode `join`s before its first request and
    `leave`s when it ends (`Seats` does both); each request goes out inside `turn()`, which returns
    once the round leaves and is left when the answer is in."""

    def __init__(self) -> None:
        self.active = 0  # episodes of this policy running on the actor
        self.awaiting = 0  # episodes whose request has left and whose answer is not in yet
        self.rounds = 0  # rounds released so far
        self._waiting: list[asyncio.Future] = []  # episodes at the gate, observation rendered

    def join(self) -> None:
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        self._release_if_ready()  # the round may have been waiting for this one

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        gate = asyncio.get_running_loop().create_future()
        self._waiting.append(gate)
        self._release_if_ready()
        try:
            await gate
        except BaseException:
            if gate in self._waiting:  # cancelled at the gate: no longer part of the round
                self._waiting.remove(gate)
                self._release_if_ready()
            raise
        self.awaiting += 1
        try:
            yield
        finally:
            self.awaiting -= 1

    def _release_if_ready(self) -> None:
        # Every running episode is at the gate: nobody else can join this round. (Those awaiting
        # an answer will step their chunk and come round, so they are waited for too.)
        if self._waiting and len(self._waiting) >= self.active:
            released, self._waiting = self._waiting, []
            self.rounds += 1
            for gate in released:
                if not gate.done():
                    gate.set_result(None)


class Seats:
    """The actor's `capacity` episode slots, each handed from a finished episode to the next item."""

    def __init__(self, capacity: int):
        self.free = capacity
        self._queue: deque[tuple[asyncio.Future, RequestRounds | None]] = deque()  # items waiting, in order

    async def take(self, rounds: RequestRounds | None) -> None:
        """Waits for a seat; holding it, the episode is a member of `rounds` (None: no rounds)."""
        if self.free > 0 and not self._queue:
            self.free -= 1
            if rounds is not None:
                rounds.join()
            return
        entry = (asyncio.get_running_loop().create_future(), rounds)
        self._queue.append(entry)
        try:
            await entry[0]
        except asyncio.CancelledError:
            if entry in self._queue:
                self._queue.remove(entry)
            elif entry[0].done() and not entry[0].cancelled():  # handed a seat just as it was cancelled
                self.give_back(rounds)
            raise

    def give_back(self, rounds: RequestRounds | None) -> None:
        """The episode holding a seat is done: the next waiting item gets the seat (and joins its
        rounds) before this one leaves its own."""
        while self._queue:
            seat, successor = self._queue.popleft()
            if seat.done():  # its caller went away
                continue
            if successor is not None:
                successor.join()
            seat.set_result(None)
            break
        else:
            self.free += 1
        if rounds is not None:
            rounds.leave()
