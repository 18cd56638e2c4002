"""Real Ray Serve: every ingress with a real client, batching, bad requests, live reconfigure."""

from __future__ import annotations

import concurrent.futures as cf
import json

import grpc
import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import PolicyServing, build_app, start_serve
from gauntlet.deployments.grpc_client import PolicyGrpcClient
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.registry import PolicyRef
from gauntlet.policies.remote import RemotePolicy, RemotePolicyError

HTTP_PORT = 18123
GRPC_PORT = 19123
BASE = f"http://127.0.0.1:{HTTP_PORT}"
GOOD = {"observation/state": [0.1] * 8, "prompt": "pick up the red cube"}


@pytest.fixture(scope="module")
def served(ray_session):
    from ray import serve

    spec = PolicyServing(PolicyRef("random"), max_batch_size=16, batch_wait_timeout_s=0.05, num_cpus=0.5)
    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    start_serve([spec], http_port=HTTP_PORT, grpc_port=GRPC_PORT)
    serve.run(build_app([PolicyServing(PolicyRef("random"), num_cpus=0.25)], api_key="s3cret"),
              name="secure", route_prefix="/secure")
    yield serve.get_deployment_handle("policy-random", app_name="gauntlet")
    serve.shutdown()


def _error(r: httpx.Response) -> str:
    if r.headers["content-type"].startswith("application/msgpack"):
        return msgpack_numpy.unpackb(r.content)["error"]
    return r.json()["error"]


def _stats(handle) -> dict:
    return handle.get_stats.remote().result()


def test_health_and_metadata(served) -> None:
    assert httpx.get(f"{BASE}/healthz").json() == {"status": "ok", "policies": ["random"]}
    meta = httpx.get(f"{BASE}/v1/policies/random/metadata").json()
    assert meta["action_dim"] == 7 and meta["chunk_len"] == 8
    assert meta["observation_spec"]["observation/state"] == {"shape": [8], "dtype": "float32"}
    assert httpx.get(f"{BASE}/v1/policies/nope/metadata").status_code == 404


def test_http_json_and_msgpack(served) -> None:
    r = httpx.post(f"{BASE}/v1/policies/random/infer", json=GOOD)
    assert r.status_code == 200
    assert np.array(r.json()["actions"]).shape == (8, 7)
    body = msgpack_numpy.packb({"observation/state": np.zeros(8, np.float32), "prompt": "x"})
    r = httpx.post(f"{BASE}/v1/policies/random/infer", content=body,
                   headers={"content-type": "application/msgpack"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/msgpack")
    out = msgpack_numpy.unpackb(r.content)
    assert out["actions"].shape == (8, 7) and out["actions"].dtype == np.float32


def test_start_serve_refuses_an_http_port_serve_is_not_on(served) -> None:
    with pytest.raises(ValueError, match=f"http_port: Serve already runs in this Ray with HTTP on 127.0.0.1:{HTTP_PORT}"):
        start_serve([PolicyServing(PolicyRef("random"))], http_port=HTTP_PORT + 1, grpc_port=None)
    assert httpx.get(f"{BASE}/healthz").status_code == 200  # the running app is untouched


def test_concurrent_clients_are_batched(served) -> None:
    served.reset_stats.remote().result()
    with httpx.Client() as client, cf.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: client.post(f"{BASE}/v1/policies/random/infer", json=GOOD).status_code,
                              range(48)))
    assert codes == [200] * 48
    stats = _stats(served)
    assert stats["max_batch_size_seen"] > 1  # requests from different clients shared a batch
    assert sum(k * v for k, v in stats["batch_sizes"].items()) == 48


def test_one_bad_request_in_a_batch_of_good_ones(served) -> None:
    bad = {"observation/state": [0.1] * 7}
    nan = {"observation/state": [float("nan")] + [0.0] * 7}
    body = json.dumps({"batch": [GOOD, bad, GOOD, nan, GOOD]}, allow_nan=True)
    r = httpx.post(f"{BASE}/v1/policies/random/infer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [("actions" in x) for x in results] == [True, False, True, False, True]
    assert results[1]["status"] == 400 and "observation/state" in results[1]["error"] and "shape" in results[1]["error"]
    assert "NaN" in results[3]["error"]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "needle"),
    [
        (b"{not json", "application/json", 400, "malformed JSON"),
        (b"\xc1\xc1", "application/msgpack", 400, "malformed msgpack"),
        (json.dumps({"observation/state": "abc"}).encode(), "application/json", 400, "observation/state"),
        (json.dumps({"prompt": "only"}).encode(), "application/json", 400, "missing"),
        (json.dumps({"observation/state": [[1] * 8]}).encode(), "application/json", 400, "shape"),
        (json.dumps([1, 2]).encode(), "application/json", 400, "observation object"),
        (b"x" * (17 * 2**20), "application/json", 413, "exceeds the limit"),
    ],
)
def test_malformed_requests_get_clear_4xx_and_server_keeps_serving(served, body, ctype, status, needle) -> None:
    r = httpx.post(f"{BASE}/v1/policies/random/infer", content=body, headers={"content-type": ctype})
    assert r.status_code == status
    assert needle in _error(r)
    assert httpx.post(f"{BASE}/v1/policies/random/infer", json=GOOD).status_code == 200


def test_object_dtype_in_msgpack_is_refused_not_unpickled(served) -> None:
    evil = msgpack_numpy.msgpack.packb({"observation/state": {b"__ndarray__": True, b"data": b"\x80\x04N.",
                                                             b"dtype": "|O", b"shape": [1]}})
    r = httpx.post(f"{BASE}/v1/policies/random/infer", content=evil, headers={"content-type": "application/msgpack"})
    assert r.status_code == 400 and "not allowed" in msgpack_numpy.unpackb(r.content)["error"]


def test_unknown_adapter_is_404_for_that_request_only(served) -> None:
    r = httpx.post(f"{BASE}/v1/policies/random/infer?adapter=ghost", json=GOOD)
    assert r.status_code == 404 and "unknown adapter 'ghost'" in r.json()["error"]


def test_grpc_infer_metadata_and_invalid_argument(served) -> None:
    client = PolicyGrpcClient(f"127.0.0.1:{GRPC_PORT}")
    out = client.infer("random", {"observation/state": np.zeros(8, np.float32), "prompt": "x"})
    assert out["actions"].shape == (8, 7) and out["server_timing"]["batch_size"] >= 1
    assert client.policy_metadata("random")["action_dim"] == 7
    with pytest.raises(grpc.RpcError) as info:
        client.infer("random", {"observation/state": np.zeros(5, np.float32)})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "observation/state" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client.infer("nope", {"observation/state": np.zeros(8, np.float32)})
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert client.infer("random", {"observation/state": np.ones(8, np.float32)})["actions"].shape == (8, 7)
    client.close()


def test_unmodified_openpi_client_drives_the_websocket(served) -> None:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy(f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/random/ws")
    assert client.get_server_metadata()["action_dim"] == 7
    for _ in range(3):
        out = client.infer({"observation/state": np.zeros(8, np.float32), "prompt": "pick"})
        assert out["actions"].shape == (8, 7)
        assert "infer_ms" in out["server_timing"]
    with pytest.raises(RuntimeError, match="Error in inference server"):
        client.infer({"observation/state": np.zeros(3, np.float32)})


def test_websocket_error_frame_then_close_1011(served) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/random/ws") as ws:
        msgpack_numpy.unpackb(ws.recv())  # metadata frame first
        ws.send(msgpack_numpy.packb({"observation/state": np.zeros(2)}))
        reply = ws.recv()
        assert isinstance(reply, str) and "observation/state" in reply
        with pytest.raises(Exception):  # noqa: B017 - the server closed the connection
            ws.recv(timeout=5)
        assert ws.close_code == 1011


def test_api_key_is_checked_from_openpi_header(served) -> None:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    url = f"ws://127.0.0.1:{HTTP_PORT}/secure/v1/policies/random/ws"
    ok = WebsocketClientPolicy(url, api_key="s3cret")
    assert ok.infer({"observation/state": np.zeros(8, np.float32)})["actions"].shape == (8, 7)
    with pytest.raises((InvalidStatus, ConnectionClosed, OSError)):
        WebsocketClientPolicy(url, api_key="wrong").infer({"observation/state": np.zeros(8, np.float32)})
    r = httpx.post(f"{BASE}/secure/v1/policies/random/infer", json=GOOD)
    assert r.status_code == 401
    r = httpx.post(f"{BASE}/secure/v1/policies/random/infer", json=GOOD, headers={"Authorization": "Api-Key s3cret"})
    assert r.status_code == 200


def test_remote_policy_wrapper_over_ws_and_http(served) -> None:
    batch = {"observation/state": np.zeros((3, 8), np.float32), "prompt": np.array(["a", "b", "c"])}
    for url in (f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/random/ws", f"{BASE}/v1/policies/random"):
        remote = RemotePolicy(url)
        assert remote.metadata.action_dim == 7 and remote.metadata.chunk_len == 8
        assert remote.infer(batch)["actions"].shape == (3, 8, 7)
        with pytest.raises(RemotePolicyError, match="observation/state"):
            remote.infer({"observation/state": np.zeros((1, 4), np.float32)})


def test_live_reconfigure_changes_batch_size(served) -> None:
    from ray import serve

    spec = PolicyServing(PolicyRef("random"), max_batch_size=2, batch_wait_timeout_s=0.05, num_cpus=0.5)
    serve.run(build_app([spec]), name="gauntlet", route_prefix="/")
    served.reset_stats.remote().result()
    with httpx.Client() as client, cf.ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda _: client.post(f"{BASE}/v1/policies/random/infer", json=GOOD), range(24)))
    stats = _stats(served)
    assert stats["max_batch_size"] == 2 and stats["max_batch_size_seen"] <= 2
    meta = httpx.get(f"{BASE}/v1/policies/random/metadata").json()
    assert meta["serving"]["max_batch_size"] in (2, 16)  # the gateway may cache metadata


def test_http_and_grpc_listen_on_loopback_only(served) -> None:
    import psutil

    listening = [c for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in (HTTP_PORT, GRPC_PORT)]
    assert {c.laddr.port for c in listening} == {HTTP_PORT, GRPC_PORT}
    assert all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in listening), listening


def test_malformed_protobuf_gets_an_error_and_serving_continues(served) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}")
    raw = channel.unary_unary("/gauntlet.v1.PolicyService/Infer",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\xff\xff\xff\xff\x0f garbage", metadata=(("application", "gauntlet"),), timeout=30)
    assert info.value.code() != grpc.StatusCode.OK
    channel.close()
    client = PolicyGrpcClient(f"127.0.0.1:{GRPC_PORT}")
    assert client.infer("random", {"observation/state": np.ones(8, np.float32)})["actions"].shape == (8, 7)
    client.close()
