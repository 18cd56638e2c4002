"""Request rounds and seats on one event loop, as in a rollout actor: episodes whose chunks run out
at different steps end up asking together; an episode that ends or goes away never holds the round;
a finished episode's seat goes to the next item without the round leaving one short."""

from __future__ import annotations

import asyncio

from gauntlet.platform.eval.request_rounds import RequestRounds, Seats

CHUNK = 5


class _Recorder:
    """The policy: answers after a short wait and records which round each request left in."""

    def __init__(self, rounds: RequestRounds):
        self.rounds = rounds
        self.sent: list[tuple[int, str]] = []  # (round number, episode)

    async def ask(self, name: str) -> int:
        self.sent.append((self.rounds.rounds, name))
        await asyncio.sleep(0.002)
        return CHUNK


async def _episode(rounds: RequestRounds, policy: _Recorder, name: str, steps: int, start_after: int) -> int:
    """`steps` env steps, asking for a chunk whenever the last one is used up; starts `start_after`
    loop turns late (an episode handed to the actor while the others were mid-chunk)."""
    for _ in range(start_after):
        await asyncio.sleep(0)
    rounds.join()
    try:
        await _steps(rounds, policy, name, steps)
    finally:
        rounds.leave()
    return steps


async def _steps(rounds: RequestRounds, policy: _Recorder, name: str, steps: int) -> None:
    left = 0
    for _ in range(steps):
        if left == 0:
            async with rounds.turn():
                left = await policy.ask(name)
        left -= 1
        await asyncio.sleep(0)  # one env step; the others take theirs


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_episodes_out_of_phase_fall_into_rounds() -> None:
    rounds = RequestRounds()
    policy = _Recorder(rounds)

    async def scenario() -> None:
        await asyncio.gather(*(_episode(rounds, policy, f"e{i}", 40, 3 * i) for i in range(3)))

    _run(scenario())
    by_round: dict[int, list[str]] = {}
    for number, name in policy.sent:
        by_round.setdefault(number, []).append(name)
    assert len(policy.sent) == 3 * 40 // CHUNK
    # The first request leaves alone (the others have not started); the late starters wait for it to
    # come round, and from then on every round has all three, until e0 (in step from the start) ends.
    assert by_round[1] == ["e0"]
    last = max(by_round)
    assert all(sorted(by_round[n]) == ["e0", "e1", "e2"] for n in range(2, last))
    assert sorted(by_round[last]) == ["e1", "e2"]
    assert rounds.active == rounds.awaiting == 0


def test_an_episode_that_ends_early_or_is_cancelled_releases_the_round() -> None:
    rounds = RequestRounds()
    policy = _Recorder(rounds)

    async def scenario() -> list[int]:
        short = asyncio.ensure_future(_episode(rounds, policy, "short", 7, 0))  # ends mid-chunk
        stuck = asyncio.ensure_future(_episode(rounds, policy, "stuck", 100, 0))
        long = asyncio.ensure_future(_episode(rounds, policy, "long", 20, 0))
        await asyncio.sleep(0.01)
        stuck.cancel()  # gone while waiting for a round or an answer: the others carry on
        done = await asyncio.gather(short, long)
        assert stuck.cancelled()
        return done

    assert _run(scenario()) == [7, 20]
    assert [name for _, name in policy.sent].count("long") == 20 // CHUNK
    assert rounds.active == rounds.awaiting == 0


def test_a_finished_episodes_seat_goes_to_the_next_item_within_the_round() -> None:
    """Two seats, four items: items 3 and 4 wait; each takes a seat over as an episode ends, and
    joins the rounds before the finished one leaves, so no round leaves with one request."""
    rounds = RequestRounds()
    policy = _Recorder(rounds)
    seats = Seats(2)
    started: list[str] = []

    async def item(name: str, steps: int) -> None:
        await seats.take(rounds)
        started.append(name)
        await asyncio.sleep(0)  # the actor awaits the policy's source here: the other items arrive
        try:
            await _steps(rounds, policy, name, steps)
        finally:
            seats.give_back(rounds)

    async def scenario() -> None:
        await asyncio.gather(item("a", 7), item("b", 20), item("c", 13), item("d", 5))

    _run(scenario())
    assert started == ["a", "b", "c", "d"] and seats.free == 2
    by_round: dict[int, list[str]] = {}
    for number, name in policy.sent:
        by_round.setdefault(number, []).append(name)
    sizes = [len(names) for _, names in sorted(by_round.items())]
    # 2 + 4 + 3 + 1 chunks: a and b start together, c takes a's seat, d takes c's, and every one of
    # the five rounds leaves with both seats' requests.
    assert sizes == [2] * 5, by_round
    assert rounds.active == rounds.awaiting == 0
