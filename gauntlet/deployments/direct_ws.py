"""openpi's WebSocket protocol served by the policy replica itself, beside Serve's proxy.

Through Serve's proxy every WebSocket frame costs a Ray call from the proxy process to the replica
and one back (no-op policy at C = 1 on the 2-core CI machine: +2.9 ms per request over a bare
`websockets` server; with the `small` VLA the proxy's round trips took a third of the replica's
CPU). A replica that listens itself answers at about the cost of the bare server, and its requests
still join the same batches as handle, HTTP and gRPC callers. The protocol, the API-key rule, the
frame limit (close 1009) and the error semantics (text frame, close 1011) are the proxied route's:
the session is `PolicyRoutes.openpi_session`; this module only adapts the `websockets` library's
connections to it.

Where: `ws://HOST:PORT` (or `.../v1/policies/NAME/ws`, NAME being this replica's policy). The
replica of local rank i (its rank among the deployment's replicas on its node) listens on exactly
PORT + i; HOST is 127.0.0.1 unless configured. A port that is taken fails the replica with an error
naming it, never a silent move to another port (a process squatting the port would otherwise
receive the clients' `Api-Key` headers). Serve frees a rank only once its replica has stopped, so a
replacement replica finds its port free; the exception is `serve deploy` scaling a deployment down
and up again, which can renumber live replicas (documented, not handled: each keeps the port it
bound). What it does not do: route to other replicas or policies (a client of this port talks to
this replica; several replicas mean several ports, one per replica, as openpi runs one server per GPU).

The Origin rule, the session cap (HTTP 503 during the handshake) and the idle timeout are the
proxied route's (`ws_guard`); this port has its own count of sessions.
"""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocketDisconnect

from gauntlet.policies.msgpack_numpy import WireFormatError


class _Connection:
    """A `websockets` server connection with the Starlette WebSocket methods the session uses."""

    def __init__(self, conn: Any):
        self.conn = conn

    async def receive_bytes(self) -> bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            data = await self.conn.recv()
        except ConnectionClosed:
            raise WebSocketDisconnect() from None
        if isinstance(data, str):
            raise WireFormatError("expected a binary msgpack frame, got a text frame")
        return data

    async def send_bytes(self, data: bytes) -> None:
        await self.conn.send(data)

    async def send_text(self, text: str) -> None:
        await self.conn.send(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.conn.close(code, reason)


def _policy_in_path(path: str, local_policy: str) -> str:
    """The policy a connection asks for: its path's NAME, or the replica's own for `/`."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if len(parts) == 4 and parts[:2] == ["v1", "policies"] and parts[3] == "ws":
        return parts[2]
    return local_policy if not parts else "/" + "/".join(parts)


def _replica_rank() -> int:
    """This replica's rank among the deployment's replicas on its node (0 outside Serve)."""
    from ray import serve

    try:
        rank = serve.get_replica_context().rank
    except Exception:  # noqa: BLE001 - not in a replica (tests that build the class directly)
        return 0
    return int(getattr(rank, "local_rank", rank) or 0)


class WebSocketPortInUse(OSError):
    """The direct WebSocket port of this replica is held by another process."""


async def serve_direct_websocket(routes: Any, host: str, port: int) -> Any:
    """Starts listening on `host:port + local rank` on the running loop; returns the server.

    `routes` is the replica (`PolicyRoutes` with its own policy). A connection from another origin,
    without the key, or for another policy is refused during the handshake (HTTP 403, as the proxied
    route refuses it: no metadata frame is ever sent), one over the session cap with HTTP 503; the
    others are handed to `routes.openpi_session`.
    """
    import errno
    from http import HTTPStatus

    from websockets.asyncio.server import serve

    from gauntlet.deployments.ws_guard import SessionSlots

    slots = SessionSlots(routes.ws_policy.max_sessions)  # this port's own sessions

    def admit(conn: Any, request: Any) -> Any:
        name = _policy_in_path(request.path, routes.local_policy)
        refusal = routes.websocket_refusal(name, request.headers)
        if refusal is None and name != routes.local_policy:
            refusal = f"this port serves {routes.local_policy!r} only; other policies: Serve's HTTP port"
        if refusal is not None:
            return conn.respond(HTTPStatus.FORBIDDEN, refusal + "\n")
        if not slots.try_take():
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, slots.refusal + "\n")
        # Given back when the TCP connection ends, whether or not the handshake completed.
        conn.connection_lost_waiter.add_done_callback(lambda _: slots.give_back())
        return None

    async def handler(conn: Any) -> None:
        await routes.openpi_session(_Connection(conn), routes.local_policy)

    rank = _replica_rank()
    try:
        # compression off, as openpi's server: frames are msgpack'd arrays that barely compress.
        server = await serve(handler, host, port + rank, compression=None, max_size=routes.max_request_bytes,
                             process_request=admit)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        taken = WebSocketPortInUse(f"ws_port: {host}:{port + rank} (--ws-port {port} + replica rank {rank}) is "
                                   "already in use by another process; free it or choose another --ws-port")
        taken.errno = exc.errno
        raise taken from None
    print(f"[serve] {routes.local_policy}: openpi WebSocket on ws://{host}:{port + rank}", flush=True)
    return server
