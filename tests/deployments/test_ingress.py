"""The policy deployment is its own ingress: no hop to a second deployment, other policies by handle.

Real Serve, real HTTP and WebSocket clients. The app serves `random` (the ingress, with a batch
timeout far longer than any lone request may wait) and `bc_rnn` (a plain replica behind it); a
second app puts the routes-only `Gateway` (for policies in their own runtime_env) in front of a
replica, on the same surface.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import APP_NAME, PolicyServing, deployment_name, start_serve
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.registry import PolicyRef

HTTP_PORT = 18323
BASE = f"http://127.0.0.1:{HTTP_PORT}"
TIMEOUT_S = 2.0  # the ingress policy's batch timeout
STATE = "observation/state"


@pytest.fixture(scope="module")
def served(ray_session):
    from ray import serve

    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    specs = [PolicyServing(PolicyRef("random"), max_batch_size=8, batch_wait_timeout_s=TIMEOUT_S, num_cpus=0.25),
             PolicyServing(PolicyRef("bc_rnn"), num_cpus=0.25)]
    start_serve(specs, http_port=HTTP_PORT, grpc_port=None)
    yield serve.get_deployment_handle(deployment_name("random"), app_name=APP_NAME)
    serve.shutdown()


@pytest.fixture(scope="module")
def gateway(served):
    from ray import serve

    from gauntlet.deployments.ingress import Gateway
    from gauntlet.deployments.policy_deployment import PolicyReplica

    replica = serve.deployment(PolicyReplica, name=deployment_name("random"), max_ongoing_requests=32,
                               ray_actor_options={"num_cpus": 0.25}).bind("random")
    front = serve.deployment(Gateway, name="gateway", ray_actor_options={"num_cpus": 0})
    serve.run(front.bind({"random": replica}, api_key="k"), name="behind-gateway", route_prefix="/gw")
    yield f"{BASE}/gw"
    serve.delete("behind-gateway")


def test_the_first_policy_is_the_ingress_and_no_gateway_is_deployed(served) -> None:
    from ray import serve

    deployments = set(serve.status().applications[APP_NAME].deployments)
    assert deployments == {deployment_name("random"), deployment_name("bc_rnn")}
    assert httpx.get(f"{BASE}/healthz").json() == {"status": "ok", "policies": ["bc_rnn", "random"]}


def test_websocket_requests_run_in_the_replica_without_waiting_the_timeout(served) -> None:
    from websockets.sync.client import connect

    served.reset_stats.remote().result()
    with connect(f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/random/ws") as ws:
        assert msgpack_numpy.unpackb(ws.recv())["serving"]["batch_wait_timeout_s"] == TIMEOUT_S
        for i in range(3):
            ws.send(msgpack_numpy.packb({STATE: np.full(8, i, np.float32)}))
            out = msgpack_numpy.unpackb(ws.recv())
            assert out["actions"].shape == (8, 7)
            # The replica's own record: a lone request joins a batch of one at once.
            assert out["server_timing"]["batch_size"] == 1
            assert out["server_timing"]["queue_wait_ms"] < TIMEOUT_S * 1e3 / 2
    r = httpx.post(f"{BASE}/v1/policies/random/infer", json={STATE: [0.0] * 8})
    assert r.status_code == 200 and r.json()["server_timing"]["queue_wait_ms"] < TIMEOUT_S * 1e3 / 2
    stats = served.get_stats.remote().result()
    assert stats["requests"] == {"ok": 4}  # answered by this replica itself
    assert stats["mean_queue_wait_ms"] < TIMEOUT_S * 1e3 / 2


def test_a_second_policy_is_served_through_the_first(served) -> None:
    from websockets.sync.client import connect

    obs = {STATE: [0.1] * 8, "observation/object_state": [0.0] * 10}
    meta = httpx.get(f"{BASE}/v1/policies/bc_rnn/metadata").json()
    assert meta["observation_spec"]["observation/object_state"]["shape"] == [10]
    r = httpx.post(f"{BASE}/v1/policies/bc_rnn/infer", json=obs)
    assert r.status_code == 200 and np.array(r.json()["actions"]).shape[0] == meta["chunk_len"]
    r = httpx.post(f"{BASE}/v1/policies/bc_rnn/infer", json={STATE: [0.1] * 8})
    assert r.status_code == 400 and "observation/object_state" in r.json()["error"]
    with connect(f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/bc_rnn/ws") as ws:
        ws.recv()
        ws.send(msgpack_numpy.packb({k: np.asarray(v, np.float32) for k, v in obs.items()}))
        assert msgpack_numpy.unpackb(ws.recv())["actions"].shape[0] == meta["chunk_len"]
    assert httpx.post(f"{BASE}/v1/policies/nope/infer", json=obs).status_code == 404


def test_policies_in_their_own_environment_get_a_routes_only_gateway(gateway) -> None:
    from websockets.sync.client import connect

    from gauntlet.deployments.app import _in_gauntlets_env

    assert _in_gauntlets_env(PolicyServing(PolicyRef("random"), runtime_env={"env_vars": {"A": "1"}}))
    assert not _in_gauntlets_env(PolicyServing(PolicyRef("random"), runtime_env={"uv": {"packages": ["x"]}}))
    auth = {"Authorization": "Api-Key k"}
    assert httpx.get(f"{gateway}/healthz").json() == {"status": "ok", "policies": ["random"]}
    assert httpx.post(f"{gateway}/v1/policies/random/infer", json={STATE: [0.0] * 8}).status_code == 401
    r = httpx.post(f"{gateway}/v1/policies/random/infer", json={STATE: [0.0] * 8}, headers=auth)
    assert r.status_code == 200 and np.array(r.json()["actions"]).shape == (8, 7)
    r = httpx.post(f"{gateway}/v1/policies/random/infer", json={STATE: [0.0] * 3}, headers=auth)
    assert r.status_code == 400 and "observation/state" in r.json()["error"]
    with connect(f"ws://127.0.0.1:{HTTP_PORT}/gw/v1/policies/random/ws", additional_headers=auth) as ws:
        assert msgpack_numpy.unpackb(ws.recv())["action_dim"] == 7
        ws.send(msgpack_numpy.packb({STATE: np.zeros(8, np.float32)}))
        assert msgpack_numpy.unpackb(ws.recv())["actions"].shape == (8, 7)
