"""WebSocket Origin rule, session caps and idle timeout, on real Serve with real sockets.

Two apps: `gauntlet` (no key, default limits: 256 sessions per listener, 300 s idle, one allowed
extra Origin) and `idle` (a key, 2 sessions per listener, IDLE_S idle). Each serves openpi's WebSocket
through Serve's proxy and on its own direct port.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time

import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import (
    APP_NAME,
    GRPC_SERVICER,
    PolicyServing,
    build_app,
    deployment_name,
    ingress_max_ongoing,
)
from gauntlet.deployments.grpc_client import PolicyGrpcClient
from gauntlet.deployments.ws_guard import (
    DEFAULT_MAX_SESSIONS,
    POLICY_CLOSE_CODE,
    WebSocketPolicy,
    normalize_origin,
)
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.registry import PolicyRef

HTTP_PORT, GRPC_PORT, WS_PORT, IDLE_WS_PORT = 18621, 19621, 18622, 18623
PROXIED = f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/random/ws"
DIRECT = f"ws://127.0.0.1:{WS_PORT}"
IDLE_PROXIED = f"ws://127.0.0.1:{HTTP_PORT}/idle/v1/policies/random/ws"
IDLE_DIRECT = f"ws://127.0.0.1:{IDLE_WS_PORT}"
KEY = "idle-key"
AUTH = {"Authorization": f"Api-Key {KEY}"}
ALLOWED = "http://ui.example:3000"
STATE = "observation/state"
SOCKETS = 1100  # more than an ingress replica's request slots (1,024 with the default limits)
IDLE_S = 6.0  # the `idle` app's idle timeout: six times the gap between the sends that keep a session
SEND_EVERY_S = 1.0


@pytest.fixture(scope="module")
def apps(ray_session):
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=HTTP_PORT),
                grpc_options=gRPCOptions(port=GRPC_PORT, grpc_servicer_functions=[GRPC_SERVICER]))
    spec = PolicyServing(PolicyRef("random"), max_batch_size=8, num_cpus=0.25)
    serve.run(build_app([spec], ws_port=WS_PORT, ws_policy=WebSocketPolicy(allowed_origins=(ALLOWED,))),
              name=APP_NAME, route_prefix="/")
    assert SOCKETS > ingress_max_ongoing(WebSocketPolicy())
    idle = WebSocketPolicy(max_sessions=2, idle_timeout_s=IDLE_S)
    serve.run(build_app([spec], api_key=KEY, ws_port=IDLE_WS_PORT, ws_policy=idle), name="idle", route_prefix="/idle")
    yield serve.get_deployment_handle(deployment_name("random"), app_name=APP_NAME)
    serve.shutdown()


def _opens(url: str, headers: dict | None = None, host: str | None = None) -> int:
    """The HTTP status of the handshake: 101 when a session opened (and sent its metadata frame)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    port = int(url.split(":")[2].split("/")[0])
    sock = socket.create_connection(("127.0.0.1", port)) if host else None
    uri = url.replace("127.0.0.1", host) if host else url
    try:
        with connect(uri, additional_headers=headers, open_timeout=30, sock=sock) as ws:
            assert "action_dim" in msgpack_numpy.unpackb(ws.recv(timeout=30))
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_origin_same_origin_or_allowed_cross_site_refused(apps) -> None:
    for url, port in ((PROXIED, HTTP_PORT), (DIRECT, WS_PORT)):
        assert _opens(url) == 101  # native clients send no Origin
        assert _opens(url, {"Origin": f"http://127.0.0.1:{port}"}) == 101  # same origin
        assert _opens(url, {"Origin": ALLOWED}) == 101  # on the allow-list
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port + 1}", "http://ui.example:3001"):
            assert _opens(url, {"Origin": origin}) == 403, (url, origin)
        # DNS rebinding: a page's own name, re-pointed at 127.0.0.1, is same-origin by Host alone.
        rebound = f"http://rebind.example:{port}"
        assert _opens(url, {"Origin": rebound}, host="rebind.example") == 403
    # With a key, the right key does not let a cross-site page in either.
    for url in (IDLE_PROXIED, IDLE_DIRECT):
        assert _opens(url, AUTH) == 101
        assert _opens(url, {**AUTH, "Origin": "http://evil.example"}) == 403


def _until_opens(url: str, headers: dict | None = None, timeout_s: float = 30.0) -> int:
    """The handshake's status once a session opens, polled until `timeout_s` (the server frees a
    closed session's slot when it sees the close)."""
    deadline = time.monotonic() + timeout_s
    while (status := _opens(url, headers)) != 101 and time.monotonic() < deadline:
        time.sleep(0.1)
    return status


def test_origin_rule_without_serve() -> None:
    policy = WebSocketPolicy(allowed_origins=("HTTP://UI.example",), serving_host="gpu-box.lan")
    assert policy.allowed_origins == ("http://ui.example:80",)
    assert policy.origin_refusal("http://ui.example", "anything") is None
    assert policy.origin_refusal("http://gpu-box.lan:8000", "gpu-box.lan:8000") is None  # the serving host
    assert policy.origin_refusal("http://[::1]:8000", "[::1]:8000") is None
    assert policy.origin_refusal("http://other.lan:8000", "other.lan:8000") is not None
    assert policy.origin_refusal("http://localhost:8000", "localhost:8001") is not None
    for host in ("[::1", "[::1]:port", "127.0.0.1:99999"):  # malformed Host: refused (403), never an error
        assert policy.origin_refusal("http://[::1]:8000", host) is not None
    assert normalize_origin("wss://a.example") == "wss://a.example:443"
    for bad in ("ui.example", "ftp://a", "http://a/path", "http://user@a"):
        with pytest.raises(ValueError, match="not an origin"):
            normalize_origin(bad)
    with pytest.raises(ValueError, match="ws_max_sessions"):
        WebSocketPolicy(max_sessions=0)
    with pytest.raises(ValueError, match="ws_idle_timeout_s"):
        WebSocketPolicy(idle_timeout_s=0)


def test_sessions_over_the_cap_are_refused_at_the_handshake(apps) -> None:
    from websockets.sync.client import connect

    for url in (IDLE_PROXIED, IDLE_DIRECT):
        with connect(url, additional_headers=AUTH, open_timeout=30) as first:
            first.recv(timeout=30)
            with connect(url, additional_headers=AUTH, open_timeout=30) as second:
                second.recv(timeout=30)
                assert _opens(url, AUTH) == 503, url
            assert _until_opens(url, AUTH) == 101, url


def test_an_idle_session_is_closed(apps) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    for url in (IDLE_PROXIED, IDLE_DIRECT):
        with connect(url, additional_headers=AUTH, open_timeout=30) as ws:
            ws.recv(timeout=30)
            kept_s = 0.0
            while kept_s < IDLE_S + 2 * SEND_EVERY_S:  # a session that keeps sending outlives the timeout
                time.sleep(SEND_EVERY_S)
                kept_s += SEND_EVERY_S
                ws.send(msgpack_numpy.packb({STATE: np.full(8, kept_s, np.float32)}))
                assert msgpack_numpy.unpackb(ws.recv(timeout=30))["actions"].shape == (8, 7)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=IDLE_S + 60)  # nothing sent: closed after IDLE_S (the wait's deadline is generous)
        assert closed.value.rcvd.code == POLICY_CLOSE_CODE and "idle" in closed.value.rcvd.reason, url


async def _open_idle(url: str, count: int) -> tuple[list, list[int]]:
    """`count` sessions opened (at most 100 handshakes at once); (open connections, refused statuses)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    gate = asyncio.Semaphore(100)

    async def one() -> object:
        async with gate:
            try:
                ws = await connect(url, open_timeout=120)
            except InvalidStatus as refused:
                return refused.response.status_code
            await ws.recv()  # the metadata frame: the session is open
            return ws

    results = await asyncio.gather(*(one() for _ in range(count)))
    return [r for r in results if not isinstance(r, int)], [r for r in results if isinstance(r, int)]


def _other_callers_answered(handle) -> list[bool]:
    obs = {STATE: [0.5] * 8, "prompt": "x"}
    r = httpx.post(f"http://127.0.0.1:{HTTP_PORT}/v1/policies/random/infer", json=obs, timeout=30)
    handle_answer = handle.infer.remote({STATE: np.zeros(8, np.float32)}).result(timeout_s=30)
    client = PolicyGrpcClient(f"127.0.0.1:{GRPC_PORT}", timeout_s=30)
    grpc_answer = client.infer("random", {STATE: np.zeros(8, np.float32)})
    client.close()
    return [r.status_code == 200 and len(r.json()["actions"]) == 8, handle_answer["actions"].shape == (8, 7),
            grpc_answer["actions"].shape == (8, 7)]


@pytest.mark.slow
def test_1100_idle_sockets_leave_http_grpc_and_handle_calls_answered(apps) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))

    async def scenario() -> None:
        proxied, refused = await _open_idle(PROXIED, SOCKETS)
        direct, direct_refused = await _open_idle(DIRECT, DEFAULT_MAX_SESSIONS + 44)
        try:
            assert len(proxied) == DEFAULT_MAX_SESSIONS and refused == [503] * (SOCKETS - DEFAULT_MAX_SESSIONS)
            assert len(direct) == DEFAULT_MAX_SESSIONS and direct_refused == [503] * 44
            # Answered while every session is held (generous timeouts: the point is that they are answered).
            assert await asyncio.to_thread(_other_callers_answered, apps) == [True, True, True]
        finally:
            await asyncio.gather(*(ws.close() for ws in proxied + direct))

    asyncio.run(scenario())
    # Once the replica has seen the closes, its slots are free again.
    assert _until_opens(PROXIED, timeout_s=60) == 101 and _until_opens(DIRECT, timeout_s=60) == 101
