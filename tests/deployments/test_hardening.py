"""Hardening of the serving path, on real Serve with real clients over real sockets.

One rule for the API key on every protocol; size limits that hold while reading; a bounded fuzz
run (malformed requests on HTTP JSON/msgpack, WebSocket and gRPC, mixed with good requests from
concurrent clients): no 5xx for a client's mistake, every good request answered; and a request the
policy itself raises on is answered alone, never failing its batch-mates.
"""

from __future__ import annotations

import concurrent.futures as cf
import json

import grpc
import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import PolicyServing, start_serve
from gauntlet.deployments.grpc_client import PolicyGrpcClient
from gauntlet.deployments.policy_deployment import PolicyReplica
from gauntlet.deployments.proto import policy_pb2, policy_pb2_grpc
from gauntlet.keys import STATE_KEY
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.registry import PolicyRef

HTTP_PORT = 18223
GRPC_PORT = 19223
KEY = "k3y-for-tests"
AUTH = {"Authorization": f"Api-Key {KEY}"}
BASE = f"http://127.0.0.1:{HTTP_PORT}"
INFER = f"{BASE}/v1/policies/random/infer"
WS_URL = f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/random/ws"
GOOD = {STATE_KEY: [0.1] * 8, "prompt": "pick up the cube"}
OVER_LIMIT = 17 * 2**20  # the servers' limit is 16 MiB


@pytest.fixture(scope="module")
def secured(ray_session):
    from ray import serve

    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    spec = PolicyServing(PolicyRef("random"), max_batch_size=8, batch_wait_timeout_s=0.01, num_cpus=0.5)
    start_serve([spec], http_port=HTTP_PORT, grpc_port=GRPC_PORT, api_key=KEY)
    yield
    serve.shutdown()


def _grpc_stub() -> tuple[grpc.Channel, policy_pb2_grpc.PolicyServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}", options=[
        ("grpc.max_send_message_length", 64 * 2**20)])  # let the client send what the server must refuse
    return channel, policy_pb2_grpc.PolicyServiceStub(channel)


def _request(state: np.ndarray) -> policy_pb2.InferRequest:
    state = np.ascontiguousarray(state)
    tensor = policy_pb2.Tensor(dtype=state.dtype.str, shape=list(state.shape), data=state.tobytes())
    return policy_pb2.InferRequest(policy="random", observation={STATE_KEY: tensor}, prompt="x")


# ------------------------------------------------------------------------------------- auth


def test_no_request_without_the_key_is_answered_on_any_protocol(secured) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    assert httpx.get(f"{BASE}/healthz").status_code == 200  # the one open route
    for headers in ({}, {"Authorization": "Api-Key wrong"}, {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}"}):
        assert httpx.post(INFER, json=GOOD, headers=headers).status_code == 401
        assert httpx.get(f"{BASE}/v1/policies/random/metadata", headers=headers).status_code == 401
        with pytest.raises(InvalidStatus):  # refused during the handshake: no metadata frame is sent
            connect(WS_URL, additional_headers=headers, open_timeout=30)
    channel, stub = _grpc_stub()
    for metadata in ((), (("authorization", "Api-Key wrong"),)):
        full = (("application", "gauntlet"), *metadata)
        for call in (lambda md=full: stub.Infer(_request(np.zeros(8, np.float32)), metadata=md, timeout=30),
                     lambda md=full: stub.Metadata(policy_pb2.MetadataRequest(policy="random"), metadata=md, timeout=30)):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()

    # ... and with it, every protocol answers.
    assert np.array(httpx.post(INFER, json=GOOD, headers=AUTH).json()["actions"]).shape == (8, 7)
    assert httpx.get(f"{BASE}/v1/policies/random/metadata", headers=AUTH).json()["action_dim"] == 7
    with connect(WS_URL, additional_headers=AUTH, open_timeout=30) as ws:
        assert msgpack_numpy.unpackb(ws.recv())["action_dim"] == 7
        ws.send(msgpack_numpy.packb({STATE_KEY: np.zeros(8, np.float32)}))
        assert msgpack_numpy.unpackb(ws.recv())["actions"].shape == (8, 7)
    client = PolicyGrpcClient(f"127.0.0.1:{GRPC_PORT}", api_key=KEY)
    assert client.infer("random", {STATE_KEY: np.zeros(8, np.float32)})["actions"].shape == (8, 7)
    assert client.policy_metadata("random")["chunk_len"] == 8
    client.close()


# -------------------------------------------------------------------------------- size limits


def test_size_limits_hold_on_every_protocol(secured) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    def chunks():  # a chunked upload: no Content-Length to refuse it by
        for _ in range(OVER_LIMIT // 2**20):
            yield b"[" * 2**20

    r = httpx.post(INFER, content=chunks(), headers={**AUTH, "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]

    with connect(WS_URL, additional_headers=AUTH, open_timeout=30, max_size=None) as ws:
        ws.recv()  # metadata
        with pytest.raises(ConnectionClosed):
            ws.send(b"\x00" * OVER_LIMIT)
            ws.recv(timeout=30)
    assert ws.close_code in (1009, 1011)  # too big (protocol layer) or the ingress's own check

    channel, stub = _grpc_stub()
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(_request(np.zeros(OVER_LIMIT // 4, np.float32)),
                   metadata=(("application", "gauntlet"), ("authorization", f"Api-Key {KEY}")), timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    channel.close()
    assert httpx.post(INFER, json=GOOD, headers=AUTH).status_code == 200


# --------------------------------------------------------------------------------------- fuzz


def _ndarray_map(data: bytes, dtype: str, shape: list) -> dict:
    return {"__ndarray__": True, "data": data, "dtype": dtype, "shape": shape}


def _bad_http_bodies(rng: np.random.Generator) -> list[tuple[bytes, str]]:
    """(body, content type) pairs, each a client's mistake."""
    good_json = json.dumps(GOOD).encode()
    good_pack = msgpack_numpy.packb({STATE_KEY: np.zeros(8, np.float32), "prompt": "x"})
    cases: list[tuple[bytes, str]] = []
    for _ in range(60):
        cases.append((rng.bytes(int(rng.integers(1, 200))), "application/json"))
        cases.append((rng.bytes(int(rng.integers(1, 200))), "application/msgpack"))
    for cut in range(1, len(good_json) - 1, 3):
        cases.append((good_json[:cut], "application/json"))
    for cut in range(1, len(good_pack) - 1, 3):
        cases.append((good_pack[:cut], "application/msgpack"))
    json_values = [
        "abc", {"a": 1}, [[1] * 8], [1] * 7, [1] * 9, [None] * 8, [True] * 7, [[1, 2], 3, 4, 5, 6, 7, 8, 9],
        [1e300] * 8, [-1e39] + [0] * 7, [float("nan")] * 8, [float("inf")] + [0] * 7, [2**70] + [0] * 7,
        ["1"] * 8, 12, None, [], [[]],
    ]
    for value in json_values:
        cases.append((json.dumps({STATE_KEY: value}, allow_nan=True).encode(), "application/json"))
    for extra in ({"prompt": 5}, {"prompt": ["a"]}, {"prompt": {"x": 1}}, {"episode_id": 3},
                  {"episode_id": ["e"]}, {"episode_id": "e" * 1000}, {"adapter": 7}, {"adapter": ["a"]},
                  {"task": 1.5}):
        cases.append((json.dumps({**GOOD, **extra}).encode(), "application/json"))
    for body in ([1, 2], "x", 3, None, {"batch": []}, {"batch": "x"}, {"batch": [1, 2]}, "[" * 100_000):
        cases.append((json.dumps(body).encode() if not isinstance(body, str) or body == "x" else body.encode(),
                      "application/json"))
    state = np.zeros(8, np.float32).tobytes()
    ndarrays = [
        _ndarray_map(state, "|O", [1]), _ndarray_map(state, "<c8", [4]), _ndarray_map(state, "V4", [8]),
        _ndarray_map(state, "nope", [8]), _ndarray_map(state, "<f4", [9]), _ndarray_map(state, "<f4", [-1, -8]),
        _ndarray_map(state, "<f4", ["8"]), _ndarray_map(state, "<f4", 8), _ndarray_map("text", "<f4", [1]),
        _ndarray_map(state, "<f4", [2**62, 2**62]), _ndarray_map(np.full(8, np.nan, np.float32).tobytes(), "<f4", [8]),
        _ndarray_map(np.full(8, 1e300).tobytes(), "<f8", [8]), _ndarray_map(state, "<f4", [2, 4]),
        {"__ndarray__": True, "dtype": "<f4", "shape": [8]}, {"__npgeneric__": True, "data": b"", "dtype": "<f4"},
    ]
    for arr in ndarrays:
        cases.append((msgpack_numpy.msgpack.packb({STATE_KEY: arr, "prompt": "x"}, use_bin_type=True),
                      "application/msgpack"))
    return cases


def _bad_grpc_requests() -> list[policy_pb2.InferRequest]:
    def tensor(dtype: str, shape: list[int], data: bytes) -> policy_pb2.InferRequest:
        t = policy_pb2.Tensor(dtype=dtype, shape=shape, data=data)
        return policy_pb2.InferRequest(policy="random", observation={STATE_KEY: t})

    ok = np.zeros(8, np.float32).tobytes()
    return [
        tensor("|O", [1], ok), tensor("nope", [8], ok), tensor("<f4", [9], ok), tensor("<f4", [2, 4], ok),
        tensor("<f4", [-8], ok), tensor("<c8", [4], ok), tensor("<f4", [8], b""),
        tensor("<f8", [8], np.full(8, 1e300).tobytes()), tensor("<f4", [8], np.full(8, np.inf, np.float32).tobytes()),
        tensor("<f8", [8], np.array([np.nan] + [0] * 7).tobytes()), tensor("<U1", [8], "abcdefgh".encode("utf-32-le")),
        policy_pb2.InferRequest(policy="random"), policy_pb2.InferRequest(policy="ghost", observation={}),
        _request(np.zeros(8, np.float32)).__class__(policy="random", observation={"x": policy_pb2.Tensor()}),
    ]


def _good_traffic(rounds: int) -> list[bool]:
    """Good requests on every protocol while the fuzz runs: True for each answered with actions."""
    from websockets.sync.client import connect

    ok = []
    client = PolicyGrpcClient(f"127.0.0.1:{GRPC_PORT}", api_key=KEY)
    with httpx.Client(headers=AUTH, timeout=60) as http, connect(WS_URL, additional_headers=AUTH) as ws:
        ws.recv()
        for i in range(rounds):
            r = http.post(INFER, json={**GOOD, STATE_KEY: [float(i)] * 8})
            ok.append(r.status_code == 200 and np.array(r.json()["actions"]).shape == (8, 7))
            ws.send(msgpack_numpy.packb({STATE_KEY: np.full(8, i, np.float32)}))
            ok.append(msgpack_numpy.unpackb(ws.recv())["actions"].shape == (8, 7))
            ok.append(client.infer("random", {STATE_KEY: np.full(8, i, np.float32)})["actions"].shape == (8, 7))
    client.close()
    return ok


def _fuzz_http(cases: list[tuple[bytes, str]]) -> list[tuple[int, bytes]]:
    """(status, body head) of every case that was not answered with a 4xx."""
    wrong = []
    with httpx.Client(headers=AUTH, timeout=60) as http:
        for body, ctype in cases:
            r = http.post(INFER, content=body, headers={"content-type": ctype})
            if r.status_code == 200 and body.startswith(b'{"batch"'):
                # A batch is answered per item: each of its bad items must carry its own 4xx.
                if all(400 <= item.get("status", 200) < 500 for item in r.json()["results"]):
                    continue
            if not 400 <= r.status_code < 500:
                wrong.append((r.status_code, body[:80]))
    return wrong


def _fuzz_ws(frames: list[bytes]) -> list[bytes]:
    """Frames that were not answered with an error text frame and a close."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    wrong = []
    for frame in frames:
        with connect(WS_URL, additional_headers=AUTH, open_timeout=30) as ws:
            ws.recv()
            ws.send(frame)
            reply = ws.recv(timeout=30)
            try:
                ws.recv(timeout=30)
                closed = False
            except ConnectionClosed:
                closed = ws.close_code == 1011
            if not (isinstance(reply, str) and closed):
                wrong.append(frame[:80])
    return wrong


def _fuzz_grpc(requests: list[policy_pb2.InferRequest]) -> list[str]:
    client_errors = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
    channel, stub = _grpc_stub()
    raw = channel.unary_unary("/gauntlet.v1.PolicyService/Infer", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
    metadata = (("application", "gauntlet"), ("authorization", f"Api-Key {KEY}"))
    wrong = []
    for request in requests:
        try:
            stub.Infer(request, metadata=metadata, timeout=30)
            wrong.append(f"OK for {str(request)[:80]}")
        except grpc.RpcError as exc:
            if exc.code() not in client_errors:
                wrong.append(f"{exc.code()} for {str(request)[:80]}: {exc.details()}")
    for seed in range(20):  # bytes that are not an InferRequest at all
        try:
            raw(np.random.default_rng(seed).bytes(40), metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.OK:
                wrong.append(f"garbage {seed} answered OK")
    channel.close()
    return wrong


@pytest.mark.slow
def test_fuzz_bad_requests_get_client_errors_and_good_ones_keep_getting_actions(secured) -> None:
    rng = np.random.default_rng(0)
    http_cases = _bad_http_bodies(rng)
    ws_frames = [body for body, ctype in http_cases if ctype == "application/msgpack"][::2]
    grpc_requests = _bad_grpc_requests()
    assert len(http_cases) + len(ws_frames) + len(grpc_requests) >= 250
    with cf.ThreadPoolExecutor(5) as pool:
        good = [pool.submit(_good_traffic, 25) for _ in range(2)]
        http_wrong = pool.submit(_fuzz_http, http_cases)
        ws_wrong = pool.submit(_fuzz_ws, ws_frames)
        grpc_wrong = pool.submit(_fuzz_grpc, grpc_requests)
        assert http_wrong.result() == []
        assert ws_wrong.result() == []
        assert grpc_wrong.result() == []
        answered = [ok for f in good for ok in f.result()]
    assert answered and all(answered)
    # The proxy and the replica are still up and serving.
    assert httpx.get(f"{BASE}/healthz").status_code == 200
    assert httpx.post(INFER, json=GOOD, headers=AUTH).status_code == 200


# ---------------------------------------------------------------------- batch isolation (2nd line)


class _PolicyThatRejectsSomeContent:
    """A real policy that raises on content its spec cannot express, as a model's own input checks
    do: state[0] == 7 is "outside the training range"; state[0] == -1 stands for a broken model."""

    def __init__(self) -> None:
        from gauntlet.policies.random_policy import RandomPolicy

        self.inner = RandomPolicy()
        self.metadata = self.inner.metadata
        self.batch_sizes: list[int] = []

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batch_sizes.append(len(batch[STATE_KEY]))
        if np.any(batch[STATE_KEY][:, 0] == -1):
            raise RuntimeError("model weights are gone")
        if np.any(batch[STATE_KEY][:, 0] == 7):
            raise ValueError("state[0] == 7 is outside what this model was trained on")
        return self.inner.infer(batch)


class _ReplicaWithThatPolicy(PolicyReplica):
    """Gauntlet's own replica (batching, isolation, error values), serving the policy above."""

    def __init__(self) -> None:
        super().__init__("random", max_batch_size=16, batch_wait_timeout_s=0.2)
        self.policy = _PolicyThatRejectsSomeContent()

    def batch_sizes(self) -> list[int]:
        return self.policy.batch_sizes


def test_a_request_the_policy_raises_on_never_fails_its_batch_mates(secured) -> None:
    import sys

    from ray import cloudpickle, serve

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the replica class lives in this test
    app = serve.deployment(_ReplicaWithThatPolicy, name="rejecting", max_ongoing_requests=64,
                           ray_actor_options={"num_cpus": 0.25}).bind()
    handle = serve.run(app, name="rejecting", route_prefix=None)
    try:
        states = [np.full(8, 7.0 if i == 5 else 0.5, np.float32) for i in range(12)]
        answers = [r.result() for r in [handle.infer.remote({STATE_KEY: s}) for s in states]]
        assert max(handle.batch_sizes.remote().result()) > 1  # they did share a batch
        assert answers[5]["status"] == 422 and "state[0] == 7" in answers[5]["error"]
        assert all(a["actions"].shape == (8, 7) for i, a in enumerate(answers) if i != 5)
        broken = handle.infer.remote({STATE_KEY: np.full(8, -1.0, np.float32)}).result()
        assert broken["status"] == 500 and broken["kind"] == "policy_error"  # the policy's fault, not the client's
    finally:
        serve.delete("rejecting")


# ------------------------------------------------------------------------------ key sources


def test_the_key_comes_from_a_file_or_the_environment_not_only_argv(tmp_path, monkeypatch) -> None:
    from gauntlet.deployments.auth import API_KEY_ENV, ApiKeyError, ApiKeyGuard, resolve_api_key
    from gauntlet.deployments.serve_cli import main as serve_main

    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert resolve_api_key(None, str(key_file)) == "from-file"  # the file wins over the environment
    assert resolve_api_key(None, None) == "from-env"
    monkeypatch.delenv(API_KEY_ENV)
    assert resolve_api_key(None, None) is None
    (tmp_path / "empty").write_text("\n")
    for bad in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(ApiKeyError, match=str(bad)):
            resolve_api_key(None, str(bad))
    # The CLI refuses an unusable key file before it starts anything, naming the flag.
    assert serve_main(["--policy", "random", "--api-key-file", str(tmp_path / "missing")]) == 2
    guard = ApiKeyGuard("k")
    assert guard.allows("Api-Key k") and not guard.allows("Api-Key K") and not guard.allows(None)
    assert guard.allows_grpc([("authorization", "Api-Key k")]) and not guard.allows_grpc([("authorization", b"x")])
    assert ApiKeyGuard(None).allows(None)
