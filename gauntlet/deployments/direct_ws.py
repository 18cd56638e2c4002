"""openpi's WebSocket protocol served by the policy replica itself, beside Serve's proxy.

Through Serve's proxy every WebSocket frame costs a Ray call from the proxy process to the replica
and one back (no-op policy at C = 1 on the 2-core CI machine: +2.9 ms per request over a bare
`websockets` server; with the `small` VLA the proxy's round trips took a third of the replica's
CPU). A replica that listens itself answers at about the cost of the bare server, and its requests
still join the same batches as handle, HTTP and gRPC callers. The protocol, the API-key rule, the
frame limit (close 1009) and the error semantics (text frame, close 1011) are the proxied route's:
the session is `PolicyRoutes.openpi_session`; this module only adapts the `websockets` library's
connections to it.

Where: `ws://HOST:PORT` (or `.../v1/policies/NAME/ws`, NAME being this replica's policy). Replica i
of the deployment on a node listens on PORT + i (the next free port if an older replica still holds
it; the replica's log line names it); HOST is 127.0.0.1 unless configured. What it
does not do: route to other replicas or policies (a client of this port talks to this replica;
several replicas mean several ports, one per replica, as openpi runs one server per GPU).
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


async def serve_direct_websocket(routes: Any, host: str, port: int) -> Any:
    """Starts listening on `host:port + local rank` on the running loop; returns the server.

    `routes` is the replica (`PolicyRoutes` with its own policy). A connection without the key, or
    for another policy, is refused during the handshake (HTTP 403, as the proxied route refuses it:
    no metadata frame is ever sent); the others are handed to `routes.openpi_session`.
    """
    import errno
    from http import HTTPStatus

    from websockets.asyncio.server import serve

    def refuse(conn: Any, request: Any) -> Any:
        name = _policy_in_path(request.path, routes.local_policy)
        refusal = routes.websocket_refusal(name, request.headers.get("authorization"))
        if refusal is None and name != routes.local_policy:
            refusal = f"this port serves {routes.local_policy!r} only; other policies: Serve's HTTP port"
        return None if refusal is None else conn.respond(HTTPStatus.FORBIDDEN, refusal + "\n")

    async def handler(conn: Any) -> None:
        await routes.openpi_session(_Connection(conn), routes.local_policy)

    # Serve renumbers a node's replica ranks as replicas come and go, so the port of rank i may still
    # be held by an older replica: the next free one is taken, and the log says which.
    first = port + _replica_rank()
    for candidate in range(first, first + 16):
        try:
            # compression off, as openpi's server: frames are msgpack'd arrays that barely compress.
            server = await serve(handler, host, candidate, compression=None, max_size=routes.max_request_bytes,
                                 process_request=refuse)
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or candidate == first + 15:
                raise
    print(f"[serve] {routes.local_policy}: openpi WebSocket on ws://{host}:{candidate}", flush=True)
    return server
