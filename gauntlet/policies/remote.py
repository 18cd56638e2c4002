"""A remote endpoint that looks like a local `Policy`.

`RemotePolicy("ws://host:8000/v1/policies/vla/ws")` speaks openpi's WebSocket protocol (so it also
drives an external openpi policy server); `RemotePolicy("http://host:8000/v1/policies/vla")` uses
Gauntlet's HTTP route with msgpack bodies. Either way the evaluator calls `infer(batch)` as usual.
"""

from __future__ import annotations

import threading
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


class RemotePolicy:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._local = threading.local()
        if self.url.startswith(("ws://", "wss://")):
            raw = self._ws_connection()[1]
        elif self.url.startswith(("http://", "https://")):
            raw = self._http("GET", f"{self.url}/metadata")
        else:
            raise ValueError(f"url must start with ws://, wss://, http:// or https://, got {url!r}")
        self.metadata = _metadata_from(raw, self.url)

    # ------------------------------------------------------------------------------- WebSocket
    def _ws_connection(self) -> tuple[Any, dict]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            from websockets.sync.client import connect

            headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
            conn = connect(self.url, compression=None, max_size=None, additional_headers=headers,
                           open_timeout=self.timeout_s)
            self._local.conn = conn
            self._local.meta = msgpack_numpy.unpackb(conn.recv(timeout=self.timeout_s))
        return conn, self._local.meta

    def _ws_infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        conn, _ = self._ws_connection()
        conn.send(msgpack_numpy.packb(obs))
        reply = conn.recv(timeout=self.timeout_s)
        if isinstance(reply, str):  # openpi: an error arrives as text, then the server closes
            self._local.conn = None
            raise RemotePolicyError(f"{self.url}: {reply.strip().splitlines()[0] if reply.strip() else reply}")
        return msgpack_numpy.unpackb(reply)

    # ------------------------------------------------------------------------------------ HTTP
    def _http(self, method: str, url: str, body: bytes | None = None) -> Any:
        headers = {"Accept": "application/msgpack"}
        if body is not None:
            headers["Content-Type"] = "application/msgpack"
        if self.api_key:
            headers["Authorization"] = f"Api-Key {self.api_key}"
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
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
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
