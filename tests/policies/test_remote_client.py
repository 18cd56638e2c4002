"""The remote policy client against real local servers that redirect or send too much.

The API key goes only where the user sent it: a redirect to another origin (here: another port on
127.0.0.1) arrives without `Authorization`, over HTTP (urllib) and WebSocket alike, while a redirect
within the origin keeps it. An HTTP body past the client's limit is refused, by its declared length
or as it streams in.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from gauntlet.policies import msgpack_numpy
from gauntlet.policies.remote import CREDENTIAL_HEADERS, RemoteLimitError, RemotePolicy

KEY = "s3cret-key"
AUTH = f"Api-Key {KEY}"
OBS = {"observation/state": np.zeros(8, np.float32), "prompt": "lift"}


class Recorder:
    """A local HTTP server: `route(handler, path)` answers; every request's (method, path, Authorization)
    is recorded."""

    def __init__(self, route: Callable[[BaseHTTPRequestHandler, str], None]):
        self.seen: list[tuple[str, str, str | None]] = []
        self.credentials: list[dict[str, str]] = []  # per request: the credential headers it carried
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                recorder.seen.append((self.command, self.path, self.headers.get("Authorization")))
                recorder.credentials.append({h: self.headers[h] for h in CREDENTIAL_HEADERS if h in self.headers})
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                route(self, self.path)

            do_GET = do_POST = _any  # noqa: N815 - http.server's names

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _answer(handler: BaseHTTPRequestHandler, path: str) -> None:
    """What a Gauntlet-like server answers: `{}` metadata (JSON), a zero chunk for /infer (msgpack)."""
    if path.endswith("/metadata"):
        body, ctype = json.dumps({}).encode(), "application/json"
    else:
        body, ctype = msgpack_numpy.packb({"actions": np.zeros((4, 7), np.float32)}), "application/msgpack"
    handler.send_response(200)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _redirect(handler: BaseHTTPRequestHandler, location: str) -> None:
    handler.send_response(HTTPStatus.FOUND)
    handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


@pytest.fixture
def recorders() -> Iterator[Callable[..., Recorder]]:
    started: list[Recorder] = []

    def start(route: Callable[[BaseHTTPRequestHandler, str], None]) -> Recorder:
        started.append(Recorder(route))
        return started[-1]

    yield start
    for r in started:
        r.close()


def test_http_redirects_carry_the_key_within_the_origin_only(recorders) -> None:
    elsewhere = recorders(_answer)
    origin: Recorder

    def route(handler: BaseHTTPRequestHandler, path: str) -> None:
        if path.startswith("/moved/"):  # another origin: another port
            _redirect(handler, elsewhere.base + path.removeprefix("/moved"))
        elif path.startswith("/here/"):  # the same origin, another path
            _redirect(handler, path.removeprefix("/here"))
        else:
            _answer(handler, path)

    origin = recorders(route)
    moved = RemotePolicy(f"{origin.base}/moved/v1/policies/x", api_key=KEY, timeout_s=30)
    assert moved.infer_one(OBS)["actions"].shape == (4, 7)  # POST 302 -> GET, as urllib follows it
    assert [a for _, _, a in origin.seen] == [AUTH, AUTH]
    assert [(m, p, a) for m, p, a in elsewhere.seen] == [("GET", "/v1/policies/x/metadata", None),
                                                         ("GET", "/v1/policies/x/infer", None)]
    origin.seen.clear()
    here = RemotePolicy(f"{origin.base}/here/v1/policies/x", api_key=KEY, timeout_s=30)
    assert here.infer_one(OBS)["actions"].shape == (4, 7)
    assert [p for _, p, _ in origin.seen] == ["/here/v1/policies/x/metadata", "/v1/policies/x/metadata",
                                              "/here/v1/policies/x/infer", "/v1/policies/x/infer"]
    assert {a for _, _, a in origin.seen} == {AUTH}  # kept within the origin
    assert len(elsewhere.seen) == 2

    # Every credential header, as urllib stores it ("Proxy-authorization" when ProxyHandler adds
    # a proxy's credentials), through the client's own opener: dropped only on leaving the origin.
    sent = {"Authorization": AUTH, "Cookie": "session=1", "Proxy-Authorization": "Basic dTpw"}
    origin.credentials.clear()
    elsewhere.credentials.clear()
    for path in ("/moved/v1/policies/x/metadata", "/here/v1/policies/x/metadata"):
        request = urllib.request.Request(origin.base + path)
        request.add_header("Authorization", AUTH)
        request.add_header("Cookie", "session=1")
        request.add_header("Proxy-authorization", "Basic dTpw")  # as urllib's ProxyHandler names it
        with moved._opener.open(request, timeout=30) as reply:
            assert reply.status == 200
    assert elsewhere.credentials == [{}]
    assert origin.credentials == [sent, sent, sent]  # /moved, /here and where /here led


def test_a_websocket_redirect_to_another_origin_drops_the_key() -> None:
    from websockets.datastructures import Headers
    from websockets.sync.server import serve

    seen: list[tuple[str, str | None]] = []

    def openpi(ws: Any) -> None:
        seen.append(("elsewhere", ws.request.headers.get("Authorization")))
        ws.send(msgpack_numpy.packb({}))
        for _ in ws:
            ws.send(msgpack_numpy.packb({"actions": np.zeros((4, 7), np.float32)}))

    elsewhere = serve(openpi, "127.0.0.1", 0, compression=None)
    target = f"ws://127.0.0.1:{elsewhere.socket.getsockname()[1]}/ws"

    def redirect(connection: Any, request: Any) -> Any:
        seen.append(("origin", request.headers.get("Authorization")))
        response = connection.respond(HTTPStatus.FOUND, "")
        response.headers = Headers([*response.headers.raw_items(), ("Location", target)])
        return response

    origin = serve(openpi, "127.0.0.1", 0, compression=None, process_request=redirect)
    for server in (elsewhere, origin):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = RemotePolicy(f"ws://127.0.0.1:{origin.socket.getsockname()[1]}/ws", api_key=KEY, timeout_s=30)
        assert policy.infer_one(OBS)["actions"].shape == (4, 7)
        policy.close()
    finally:
        origin.shutdown()
        elsewhere.shutdown()
    assert seen == [("origin", AUTH), ("elsewhere", None)]


@pytest.mark.parametrize("declared", [True, False])
def test_an_http_body_past_the_limit_is_refused(recorders, declared: bool) -> None:
    """Refused from its Content-Length (before reading it), or once more than the limit has arrived."""

    def route(handler: BaseHTTPRequestHandler, path: str) -> None:
        if path.endswith("/metadata"):
            return _answer(handler, path)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/msgpack")
        if declared:
            handler.send_header("Content-Length", str(2**40))
        handler.end_headers()
        handler.wfile.write(b"\x00" * 4096)  # without a length the body ends when the connection closes
        handler.close_connection = True

    server = recorders(route)
    policy = RemotePolicy(f"{server.base}/v1/policies/x", timeout_s=30, max_reply_bytes=1024)
    with pytest.raises(RemoteLimitError, match="over the client's limit of 1024 bytes"):
        policy.infer_one(OBS)


def test_an_overloaded_http_server_is_retried_by_the_rollout_source(recorders) -> None:
    """HTTP 503 (a Gauntlet replica's full queue) is transient: the actors' source sends again within
    its retry budget instead of failing the episode; any other error status is an answer, not retried."""
    from gauntlet.platform.eval.openpi import RemoteOptions
    from gauntlet.platform.eval.sources import RemoteSource
    from gauntlet.policies.remote import RemotePolicyError

    busy_for = {"n": 2}

    def route(handler: BaseHTTPRequestHandler, path: str) -> None:
        if path.endswith("/infer") and busy_for["n"] > 0:
            busy_for["n"] -= 1
            body = json.dumps({"error": "the replica's queue is full", "status": 503}).encode()
            handler.send_response(503)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        elif path.endswith("/infer") and busy_for["n"] < 0:
            handler.send_response(500)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            _answer(handler, path)

    server = recorders(route)
    source = RemoteSource(f"{server.base}/v1/policies/x", RemoteOptions(connect_s=30, timeout_s=30))
    assert source.next_chunk(OBS).shape == (4, 7)
    assert [p for _, p, _ in server.seen].count("/v1/policies/x/infer") == 3  # two 503s, then the answer
    busy_for["n"] = -1
    with pytest.raises(RemotePolicyError, match="HTTP 500"):
        source.next_chunk(OBS)
    assert [p for _, p, _ in server.seen].count("/v1/policies/x/infer") == 4  # a 500 is not retried
