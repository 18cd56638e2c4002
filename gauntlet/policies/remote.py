"""A remote endpoint that looks like a local `Policy`.

`RemotePolicy("ws://host:8000/v1/policies/vla/ws")` speaks openpi's WebSocket protocol (so it also
drives an external openpi policy server); `RemotePolicy("http://host:8000/v1/policies/vla")` uses
Gauntlet's HTTP route with msgpack bodies. Either way the evaluator calls `infer(batch)` as usual.
"""

from __future__ import annotations

import inspect
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

import numpy as np

from gauntlet.keys import PROMPT_KEY
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.base import PolicyMetadata


class RemotePolicyError(RuntimeError):
    """The remote side answered with an error (its message is included)."""


def _metadata_from(raw: dict[str, Any], url: str) -> PolicyMetadata:
    meta = PolicyMetadata.from_dict(raw, default_name=url, default_version="remote", default_needs_images=True)
    return replace(meta, extra={"remote": url, "server_metadata": raw})


def _split(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    size = len(next(iter(batch.values())))
    items = []
    for i in range(size):
        item = {}
        for key, value in batch.items():
            item[key] = str(value[i]) if key == PROMPT_KEY else np.asarray(value[i])
        items.append(item)
    return items


class RemoteConnectionError(RemotePolicyError):
    """The connection could not be made or was lost (a retry may succeed)."""


# Failures of the transport rather than answers of the server: worth another attempt.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, RemoteConnectionError)


def _ws_transport_errors() -> tuple[type[BaseException], ...]:
    from websockets.exceptions import ConnectionClosed, InvalidMessage

    # InvalidMessage: the peer closed or garbled the handshake (a server still starting up).
    return _TRANSPORT_ERRORS + (ConnectionClosed, InvalidMessage)


class RemotePolicy:
    """`connect_retry_s`: how long the constructor keeps trying to reach the server (connect and
    metadata) before RemoteConnectionError; 0 = one attempt. A refusal (HTTP 401/404, a bad URL) is
    an answer, never retried."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 60.0,
                 connect_retry_s: float = 0.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._local = threading.local()
        if not self.url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"url must start with ws://, wss://, http:// or https://, got {url!r}")
        raw = self._retrying(self._fetch_metadata, connect_retry_s)
        if not isinstance(raw, dict):
            raise RemotePolicyError(f"{self.url}: its metadata is a {type(raw).__name__}, not a map")
        self.metadata = _metadata_from(raw, self.url)

    def _fetch_metadata(self, timeout_s: float) -> dict[str, Any]:
        if self.url.startswith("ws"):
            return self._ws_connection(timeout_s)[1]
        return self._http("GET", f"{self.url}/metadata", timeout_s=timeout_s)

    def _retrying(self, fn: Any, budget_s: float) -> Any:
        """`fn(timeout_s)` until it succeeds or `budget_s` is spent (each attempt's own timeout is
        capped by what is left, so the budget bounds the whole wait even for a silent host)."""
        errors = _ws_transport_errors() if self.url.startswith("ws") else _TRANSPORT_ERRORS
        deadline = time.monotonic() + budget_s
        delay, attempts = 0.2, 0
        while True:
            attempts += 1
            try:
                return fn(max(0.5, min(self.timeout_s, deadline - time.monotonic())))
            except errors as exc:
                self._drop_connection()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RemoteConnectionError(
                        f"{self.url}: unreachable ({attempts} attempt{'s' * (attempts > 1)} in {budget_s:.0f} s): "
                        f"{type(exc).__name__}: {exc}") from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------------------- WebSocket
    def _ws_connection(self, timeout_s: float | None = None) -> tuple[Any, dict]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            from websockets.exceptions import InvalidStatus
            from websockets.sync.client import connect

            timeout_s = self.timeout_s if timeout_s is None else timeout_s
            headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
            # websockets >= 16 warns unless a connection held outside a `with` block says so (`legacy`).
            legacy = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
            try:
                conn = connect(self.url, compression=None, max_size=None, additional_headers=headers,
                               open_timeout=timeout_s, **legacy)
            except InvalidStatus as exc:  # the server answered: 401 (API key), 404 (path) ...
                raise RemotePolicyError(f"{self.url}: the server refused the connection: HTTP "
                                        f"{exc.response.status_code}") from None
            self._local.conn = conn
            self._local.meta = msgpack_numpy.unpackb(conn.recv(timeout=timeout_s))
        return conn, self._local.meta

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is already broken; the next call reconnects
                pass

    def _ws_infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        try:
            conn, _ = self._ws_connection()
            conn.send(msgpack_numpy.packb(obs))
            reply = conn.recv(timeout=self.timeout_s)
        except (ConnectionClosed, OSError) as exc:  # the next call reconnects
            self._drop_connection()
            raise RemoteConnectionError(f"{self.url}: connection lost: {type(exc).__name__}: {exc}") from None
        if isinstance(reply, str):  # openpi: an error arrives as text, then the server closes
            self._drop_connection()
            raise RemotePolicyError(f"{self.url}: {reply.strip().splitlines()[0] if reply.strip() else reply}")
        return msgpack_numpy.unpackb(reply)

    # ------------------------------------------------------------------------------------ HTTP
    def _http(self, method: str, url: str, body: bytes | None = None, timeout_s: float | None = None) -> Any:
        headers = {"Accept": "application/msgpack"}
        if body is not None:
            headers["Content-Type"] = "application/msgpack"
        if self.api_key:
            headers["Authorization"] = f"Api-Key {self.api_key}"
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s if timeout_s is None else timeout_s) as resp:
                data = resp.read()
                ctype = resp.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            data, ctype = exc.read(), exc.headers.get("content-type", "")
            payload = msgpack_numpy.unpackb(data) if "msgpack" in ctype else {"error": data.decode(errors="replace")}
            raise RemotePolicyError(f"{url}: HTTP {exc.code}: {payload.get('error', payload)}") from None
        if "msgpack" in ctype:
            return msgpack_numpy.unpackb(data)
        import json

        return json.loads(data)

    # ------------------------------------------------------------------------------------ Policy
    def infer_one(self, obs: dict[str, Any]) -> Any:
        """The server's whole answer to one observation, unchecked (the evaluator checks it)."""
        if self.url.startswith("ws"):
            return self._ws_infer(obs)
        reply = self._http("POST", f"{self.url}/infer", msgpack_numpy.packb(obs))
        if isinstance(reply, dict) and "error" in reply:
            raise RemotePolicyError(f"{self.url}: {reply['error']}")
        return reply

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = _split(batch)
        if self.url.startswith("ws"):
            outs = [self._ws_infer(o) for o in items]
        else:
            reply = self._http("POST", f"{self.url}/infer", msgpack_numpy.packb({"batch": items}))
            outs = reply["results"]
            errors = [o["error"] for o in outs if "error" in o]
            if errors:
                raise RemotePolicyError(f"{self.url}: {errors[0]}")
        actions = np.stack([np.asarray(o["actions"], dtype=np.float32) for o in outs])  # (B, H, D)
        return {"actions": actions}

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self._drop_connection()
