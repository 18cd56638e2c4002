"""The async chunk client (LeRobot's async-inference scheme over Gauntlet's msgpack clients), against
real sockets: a local openpi-protocol WebSocket server whose replies the test releases one by one (so
"the robot keeps acting while the chunk is computed" is shown without timing), and real Serve.

The local server answers the observation of step t (its state's first value) with the chunk
actions[i] = [100 t + i, -(100 t + i)]: every action says which request and which index it came from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from gauntlet.keys import ACTIONS_KEY, EPISODE_ID_KEY, STATE_KEY
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.async_client import (
    AGGREGATE_FUNCTIONS,
    AsyncChunkClient,
    AsyncClientConfig,
    AsyncClientError,
    AsyncClientTimeout,
    ChunkRecord,
)
from gauntlet.policies.remote import RemotePolicy, RemotePolicyError

CHUNK = 4  # the local server's chunk length
WAIT_S = 60.0  # bound on any wait for the local server (never reached when things work)


def obs_at(step: int) -> dict[str, Any]:
    return {STATE_KEY: np.array([step, 0, 0, 0, 0, 0, 0, 0], np.float32), "prompt": "lift"}


def first(action: np.ndarray) -> float:
    return round(float(action[0]), 4)


class ChunkServer:
    """openpi's WebSocket protocol on 127.0.0.1 (metadata frame, then one msgpack reply per
    observation; an error is a text frame, then close 1011). With `gated`, each reply waits for
    `release()`. `fail_at`: steps answered with an error."""

    def __init__(self, episode_memory: bool = False):
        from websockets.sync.server import serve

        self.received: list[tuple[int, str | None]] = []  # (step, episode_id) per observation
        self.gated = False
        self.fail_at: set[int] = set()
        self.replies: dict[int, Any] = {}  # step -> the reply sent instead of its chunk
        self._gate = threading.Semaphore(0)
        self._meta = {"name": "chunks", "action_dim": 2, "chunk_len": CHUNK, "episode_memory": episode_memory}
        self.server = serve(self._session, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _session(self, ws: Any) -> None:
        ws.send(msgpack_numpy.packb(self._meta))
        for message in ws:
            obs = msgpack_numpy.unpackb(message)
            step = int(obs[STATE_KEY][0])
            self.received.append((step, obs.get(EPISODE_ID_KEY)))
            if self.gated:
                self._gate.acquire(timeout=WAIT_S)
            if step in self.fail_at:
                ws.send(f"policy failed at step {step}: out of cheese")
                ws.close(1011)
                return
            values = 100.0 * step + np.arange(CHUNK, dtype=np.float32)  # (H,)
            reply = self.replies.get(step, {ACTIONS_KEY: np.stack([values, -values], axis=1)})  # (H, 2)
            ws.send(msgpack_numpy.packb(reply))

    def release(self) -> None:
        self._gate.release()

    def close(self) -> None:
        self._gate.release()  # a session waiting for a release ends
        self.server.shutdown()


@pytest.fixture
def chunk_server() -> Iterator[Callable[..., ChunkServer]]:
    started: list[ChunkServer] = []

    def start(**kwargs: Any) -> ChunkServer:
        started.append(ChunkServer(**kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


def settle(client: AsyncChunkClient) -> None:
    """Waits until the chunk in flight has arrived (it is merged by the next call)."""
    deadline = time.monotonic() + WAIT_S
    while client.pending:
        assert time.monotonic() < deadline, "the local server's reply never arrived"
        time.sleep(0.005)


# What a queued action (old) and a newer one (new) for the same step become: LeRobot 0.6.1's
# async_inference/configs.py, spelled out here independently of the module's table.
LEROBOT_AGGREGATES = {
    "weighted_average": lambda old, new: 0.3 * old + 0.7 * new,
    "latest_only": lambda old, new: new,
    "average": lambda old, new: 0.5 * old + 0.5 * new,
    "conservative": lambda old, new: 0.7 * old + 0.3 * new,
}


@pytest.mark.parametrize("aggregate", sorted(LEROBOT_AGGREGATES))
def test_the_robot_acts_while_a_chunk_is_computed_and_overlaps_merge_by_name(chunk_server, aggregate: str) -> None:
    """Threshold 0.5 of a 4-action chunk: a request leaves when 2 actions are queued; while the server
    holds it, the queued actions are still returned; a chunk's actions for executed steps are dropped,
    for queued steps combined by the named aggregate function, later ones appended."""
    assert set(AGGREGATE_FUNCTIONS) == set(LEROBOT_AGGREGATES)
    server = chunk_server()
    config = AsyncClientConfig(chunk_size_threshold=0.5, aggregate_fn_name=aggregate, empty_queue_timeout_s=WAIT_S)
    records: list[ChunkRecord] = []
    with AsyncChunkClient(RemotePolicy(server.url, timeout_s=WAIT_S), config, on_chunk=records.append) as client:
        assert first(client.next_action(obs_at(0))) == 0  # empty queue: asks with step 0's observation, waits
        assert first(client.next_action(obs_at(1))) == 1  # 3 of 4 queued: no request
        server.gated = True
        assert first(client.next_action(obs_at(2))) == 2  # 2 of 4 queued: asks with step 2's observation
        assert first(client.next_action(obs_at(3))) == 3  # the server holds it: answered from the queue
        assert client.pending and client.stats.waits == 1
        server.release()
        settle(client)
        # Step 4 merges the chunk from step 2 (200..203): 200, 201 were for steps 2, 3, already
        # executed; 202, 203 are steps 4, 5, and with 2 of 4 queued it asks with step 4's observation.
        assert first(client.next_action(obs_at(4))) == 202
        server.release()
        settle(client)
        # The chunk from step 4 (400..403) meets step 5's queued 203: combined; 402, 403 appended.
        expected = LEROBOT_AGGREGATES[aggregate](np.float32(203), np.float32(401))
        assert first(client.next_action(obs_at(5))) == pytest.approx(float(expected), abs=1e-3)
        assert [first(client.next_action(obs_at(t))) for t in (6, 7)] == [402, 403]  # asks at step 6
        server.release()
        settle(client)
    assert [step for step, _ in server.received] == [0, 2, 4, 6]
    assert [(r.sent_step, r.merged_step) for r in records] == [(0, 0), (2, 4), (4, 5)]
    stats = client.stats
    assert (stats.requests, stats.chunks, stats.waits, stats.stale, stats.aggregated) == (4, 3, 1, 3, 1)


def test_a_server_error_surfaces_on_the_next_call_and_the_client_goes_on(chunk_server) -> None:
    server = chunk_server()
    server.fail_at = {2}
    config = AsyncClientConfig(chunk_size_threshold=0.5, empty_queue_timeout_s=WAIT_S)
    with AsyncChunkClient(RemotePolicy(server.url, timeout_s=WAIT_S), config) as client:
        assert [first(client.next_action(obs_at(t))) for t in (0, 1, 2)] == [0, 1, 2]  # asks at step 2
        settle(client)
        with pytest.raises(RemotePolicyError, match="policy failed at step 2: out of cheese") as failure:
            client.next_action(obs_at(3))
        assert "the chunk asked for at step 2" in "".join(failure.value.__notes__)
        assert client.step == 3 and client.queued == 1  # the failed call took no action
        # The worker lives on: step 3 is answered from the queue and asks again (a new connection).
        assert first(client.next_action(obs_at(3))) == 3
        assert first(client.next_action(obs_at(4))) == 301
    assert [step for step, _ in server.received] == [0, 2, 3]


@pytest.mark.parametrize(("reply", "message"), [
    ({ACTIONS_KEY: np.zeros((CHUNK, 3), np.float32)}, r"actions: expected a chunk of shape \(H >= 1, 2\), got \[4, 3\]"),
    ({ACTIONS_KEY: np.full((CHUNK, 2), np.nan, np.float32)}, "actions: not all finite"),
    ({"chunk": [1, 2]}, "the policy's answer has no 'actions'"),
])
def test_a_malformed_answer_is_refused_naming_the_field(chunk_server, reply: dict, message: str) -> None:
    server = chunk_server()
    server.replies = {2: reply}
    with AsyncChunkClient(RemotePolicy(server.url, timeout_s=WAIT_S), AsyncClientConfig()) as client:
        assert [first(client.next_action(obs_at(t))) for t in (0, 1, 2)] == [0, 1, 2]  # asks at step 2
        settle(client)
        with pytest.raises(AsyncClientError, match=message):
            client.next_action(obs_at(3))
        assert first(client.next_action(obs_at(3))) == 3  # and asks again


def test_an_empty_queue_waits_at_most_the_timeout_naming_the_field(chunk_server) -> None:
    server = chunk_server()
    server.gated = True
    config = AsyncClientConfig(empty_queue_timeout_s=0.2)
    with AsyncChunkClient(RemotePolicy(server.url, timeout_s=WAIT_S), config) as client:
        with pytest.raises(AsyncClientTimeout, match=r"AsyncClientConfig\.empty_queue_timeout_s = 0\.2 s"):
            client.next_action(obs_at(0))
        server.release()
        settle(client)
        assert first(client.next_action(obs_at(0))) == 0  # the chunk still awaited: not asked again
    assert server.received == [(0, None)]  # a stateless policy: no episode id added


def test_reset_starts_a_new_episode_and_discards_the_chunk_in_flight(chunk_server) -> None:
    server = chunk_server(episode_memory=True)
    config = AsyncClientConfig(chunk_size_threshold=0.5, empty_queue_timeout_s=WAIT_S)
    with AsyncChunkClient(RemotePolicy(server.url, timeout_s=WAIT_S), config) as client:
        old = client.episode_id
        assert [first(client.next_action(obs_at(t))) for t in (0, 1, 2)] == [0, 1, 2]  # asks at step 2
        settle(client)
        client.reset("ep-2")
        assert (client.episode_id, client.step, client.queued, client.pending) == ("ep-2", 0, 0, False)
        # Step 0 of the new episode asks with its own observation (state 7 here); step 2's chunk is gone.
        assert [first(client.next_action(obs_at(7))) for _ in range(2)] == [700, 701]
    assert server.received == [(0, old), (2, old), (7, "ep-2")]


def test_config_errors_name_the_field() -> None:
    for field, value in (("chunk_size_threshold", 1.5), ("aggregate_fn_name", "median"),
                         ("actions_per_chunk", -1), ("empty_queue_timeout_s", 0)):
        with pytest.raises(ValueError, match=f"^{field}: "):
            AsyncClientConfig(**{field: value})


def replay(records: list[ChunkRecord], steps: int, aggregate: str) -> list[np.ndarray]:
    """The actions steps 0..steps-1 get from these chunks, merged where they were merged."""
    queue: dict[int, np.ndarray] = {}
    out = []
    for step in range(steps):
        for record in (r for r in records if r.merged_step == step):
            for i, action in enumerate(record.actions):
                at = record.sent_step + i
                if at >= step:
                    queue[at] = LEROBOT_AGGREGATES[aggregate](queue[at], action) if at in queue else action
        out.append(queue.pop(step))
    return out


def test_a_local_policy_is_driven_the_same_way() -> None:
    from gauntlet.policies.random_policy import RandomPolicy

    records: list[ChunkRecord] = []
    config = AsyncClientConfig(chunk_size_threshold=0.75, aggregate_fn_name="average", actions_per_chunk=6)
    with AsyncChunkClient(RandomPolicy(chunk_len=8, seed=3), config, on_chunk=records.append) as client:
        actions = [client.next_action(obs_at(t)) for t in range(20)]
    assert all(len(r.actions) == 6 for r in records)  # actions_per_chunk of 8
    assert len(records) >= 20 // 6
    np.testing.assert_allclose(np.stack(actions), np.stack(replay(records, 20, "average")), rtol=1e-6)


# -------------------------------------------------------------------------------- real Serve
@pytest.fixture(scope="module")
def served_random(ray_session, free_ports) -> Iterator[str]:
    from ray import serve

    from gauntlet.deployments.app import PolicyServing, start_serve
    from gauntlet.policies.registry import PolicyRef

    http_port, grpc_port = free_ports(2)
    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    start_serve([PolicyServing(PolicyRef("random"), num_cpus=0.25)], http_port=http_port, grpc_port=grpc_port)
    yield f"http://127.0.0.1:{http_port}/v1/policies/random"
    serve.shutdown()


@pytest.mark.parametrize("route", ["http", "ws"])
def test_under_serve_the_queue_refills_before_it_empties(served_random: str, route: str) -> None:
    """A robot stepping every STEP_S against `random` (8-action chunks) on real Serve: after the
    first chunk no call blocks, every request leaves at the threshold (4 queued), and every action
    is the merge of the chunks received (weighted_average)."""
    step_s = 0.1  # the robot's control period: 4 queued steps leave the server 0.4 s per chunk
    url = served_random if route == "http" else served_random.replace("http://", "ws://", 1) + "/ws"
    records: list[ChunkRecord] = []
    with AsyncChunkClient(RemotePolicy(url, timeout_s=WAIT_S), AsyncClientConfig(empty_queue_timeout_s=WAIT_S),
                          on_chunk=records.append) as client:
        actions, queued = [], []
        for t in range(24):
            queued.append(client.queued)
            actions.append(client.next_action(obs_at(t)))
            time.sleep(step_s)
    assert client.stats.waits == 1, f"the queue ran empty: {queued}"
    assert [r.sent_step for r in records] == list(range(0, 24, 4))[: len(records)]
    assert all(r.merged_step < r.sent_step + 4 for r in records)  # before the 4 queued actions ran out
    np.testing.assert_allclose(np.stack(actions), np.stack(replay(records, 24, "weighted_average")), rtol=1e-6)
