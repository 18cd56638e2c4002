"""A policy with per-episode memory on 2 replicas, reached over HTTP and WebSocket through Serve's
proxy: real Ray, real Serve (`start_serve`), real sockets, the real BC-RNN.

BC-RNN keeps each episode's hidden state in the replica that answered it and counts the episode's
calls (`episode_calls`). Every episode must be answered 1, 2, 3, ... in order: no call may reach a
replica that never saw the episode. Two shapes of app:

- BC-RNN is the ingress itself (2 replicas): the proxy routes each request by the session header the
  client sends (`remote.SESSION_HEADER`); without it the 2 replicas share the episodes and memory is
  lost, which the control shows.
- BC-RNN sits behind a stateless ingress (random, 2 replicas): the proxy pins the episode to an
  ingress replica, which calls BC-RNN's handle with the episode id as its Serve session.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import APP_NAME, PolicyServing, start_serve
from gauntlet.keys import EPISODE_CALLS_KEY, EPISODE_ID_KEY, OBJECT_STATE_KEY, STATE_KEY
from gauntlet.policies.registry import PolicyRef
from gauntlet.policies.remote import RemotePolicy

EPISODES = 6
CALLS = 5  # per episode: without affinity, 2 replicas keep one episode whole with odds 2**-(CALLS - 1)


def _obs(episode: str, step: int) -> dict[str, Any]:
    return {STATE_KEY: np.full(8, step, np.float32), OBJECT_STATE_KEY: np.zeros(10, np.float32),
            EPISODE_ID_KEY: episode}


def _spec(name: str) -> PolicyServing:
    return PolicyServing(PolicyRef(name), replicas=2, max_batch_size=4, num_cpus=0.25)


@pytest.fixture(scope="module")
def ports(ray_session, free_ports) -> Iterator[int]:
    from ray import serve

    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    yield free_ports(1)[0]
    serve.shutdown()


def _serve(http_port: int, *names: str) -> str:
    from ray import serve
    from ray.serve.context import _get_global_client

    if _get_global_client(raise_if_no_controller_running=False) is not None:
        serve.delete(APP_NAME)  # the other test's app
    start_serve([_spec(n) for n in names], http_port=http_port, grpc_port=None)
    return f"127.0.0.1:{http_port}"


def _http_calls(base: str, tag: str) -> dict[str, list[int]]:
    """Episodes interleaved call by call through RemotePolicy over HTTP: each episode's counts."""
    client = RemotePolicy(f"http://{base}/v1/policies/bc_rnn", timeout_s=60)
    assert client.metadata.episode_memory
    counts: dict[str, list[int]] = {f"{tag}-{i}": [] for i in range(EPISODES)}
    for step in range(CALLS):
        for episode, seen in counts.items():
            seen.append(client.infer_one(_obs(episode, step))[EPISODE_CALLS_KEY])
    return counts


def _ws_calls(base: str, tag: str) -> dict[str, list[int]]:
    """The same over WebSocket, every call from a new thread, hence on a new connection (RemotePolicy
    keeps one per thread): each handshake is routed by the proxy anew."""
    client = RemotePolicy(f"ws://{base}/v1/policies/bc_rnn/ws", timeout_s=60)
    counts: dict[str, list[int]] = {f"{tag}-{i}": [] for i in range(EPISODES)}

    def call(episode: str, step: int) -> None:
        try:
            counts[episode].append(client.infer_one(_obs(episode, step))[EPISODE_CALLS_KEY])
        finally:
            client.close()  # this thread's connection

    for step in range(CALLS):
        for episode in counts:
            thread = threading.Thread(target=call, args=(episode, step))
            thread.start()
            thread.join(120)
    return counts


WHOLE = [list(range(1, CALLS + 1))] * EPISODES  # every episode answered 1, 2, ..., CALLS


def test_a_stateful_ingress_on_two_replicas_keeps_each_episode_on_one(ports: int) -> None:
    base = _serve(ports, "bc_rnn")
    assert list(_http_calls(base, "http").values()) == WHOLE
    assert list(_ws_calls(base, "ws").values()) == WHOLE

    # Control: a client that sends no session header spreads an episode over both replicas, which
    # lose its memory (all 6 episodes kept whole by chance: odds 2**-24).
    plain = {f"plain-{i}": [] for i in range(EPISODES)}
    for step in range(CALLS):
        for episode, seen in plain.items():
            obs = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in _obs(episode, step).items()}
            answer = httpx.post(f"http://{base}/v1/policies/bc_rnn/infer", json=obs, timeout=60)
            seen.append(answer.json()[EPISODE_CALLS_KEY])
    assert list(plain.values()) != WHOLE


def test_a_stateful_policy_behind_a_two_replica_ingress_keeps_each_episode_on_one(ports: int) -> None:
    base = _serve(ports, "random", "bc_rnn")
    assert list(_http_calls(base, "http").values()) == WHOLE
    assert list(_ws_calls(base, "ws").values()) == WHOLE
