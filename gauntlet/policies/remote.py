"""A remote endpoint that looks like a local `Policy`.

`RemotePolicy("ws://host:8000/v1/policies/vla/ws")` speaks openpi's WebSocket protocol (so it also
drives an external openpi policy server); `RemotePolicy("http://host:8000/v1/policies/vla")` uses
Gauntlet's HTTP route with msgpack bodies. Either way the evaluator calls `infer(batch)` as usual.

The server is not trusted with the client's memory or its key: no message larger than
`max_reply_bytes` is read (WebSocket frames and HTTP bodies alike, refused from their declared
length, before the payload arrives), the metadata's declared shapes are checked against the limits
below before anything is sized from them (`check_declared`), and the API key never follows a
redirect to another origin (scheme, host and port).

A policy with per-episode memory (PolicyMetadata.episode_memory) keeps it in the replica that
answered the episode. With several replicas behind Serve's proxy, the proxy's router sends a request
to the replica its Serve session is pinned to (deployments/session_router), and the proxy takes the
session from the `SESSION_HEADER` request header. So, for such a policy, this client sends that
header: an HTTP request for one observation names its episode id, every other request (an HTTP
batch of several episodes, each WebSocket handshake) this client's own session id, so that all of
its connections reach one replica. Other clients of a stateful policy served with `--replicas > 1`
must do the same (gRPC: the `session_id` metadata key), or their episodes lose their memory, which
the answers' `episode_calls` then show.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import replace
from http import HTTPStatus
from typing import Any

import numpy as np

from gauntlet.deployments.ws_guard import DEFAULT_PORTS, OVERLOADED_FRAME_PREFIX
from gauntlet.keys import ACTIONS_KEY, EPISODE_ID_KEY, MAX_MESSAGE_BYTES, PROMPT_KEY
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.base import PolicyMetadata

# The request header Serve's proxy (Ray 2.60) turns into the request's Serve session id: Ray's
# default for RAY_SERVE_SESSION_ID_HEADER_KEY, which Gauntlet's servers leave unset.
SESSION_HEADER = "x-session-id"
# Largest size a server may declare for one dimension of an observation field (an image's side),
# for action_dim and for chunk_len.
MAX_DECLARED_SIZE = 4096
MAX_DECLARED_NDIM = 4  # dimensions of one declared field (an image has 3)
MAX_DECLARED_FIELDS = 64  # fields of a declared observation_spec
# Elements of one observation over all its declared fields (two 4096 x 4096 RGB images fit): what a
# probe request and every rendered observation allocate.
MAX_DECLARED_ELEMENTS = 2**27
# Headers that carry credentials: never sent on to another origin by a redirect.
CREDENTIAL_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")


class RemotePolicyError(RuntimeError):
    """The remote side answered with an error (its message is included)."""


class RemoteLimitError(RemotePolicyError):
    """A server sent or declared more than the client accepts; the message names the field or limit."""


def _is_whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_dtype(where: str, dtype: Any) -> None:
    """"str" (a prompt) or a plain numeric dtype: the ones the wire carries as arrays."""
    if dtype == "str":
        return
    try:
        ok = isinstance(dtype, str) and len(dtype) <= 16 and np.dtype(dtype).kind in "biuf"
    except Exception:  # noqa: BLE001 - TypeError, SyntaxError (np.dtype(",")), ...: not a dtype name
        ok = False
    if not ok:
        raise RemoteLimitError(f"{where}.dtype: expected \"str\" or a numeric dtype name, got {dtype!r:.40}")


def check_declared(raw: dict[str, Any]) -> None:
    """RemoteLimitError naming the field (`metadata.observation_spec['observation/image'].shape`, ...)
    if the metadata declares a malformed size or one past the limits above. Called before anything is
    sized from it: a server declaring a 100000 x 100000 image is refused, not allocated."""
    for name in ("action_dim", "chunk_len"):
        value = raw.get(name)
        if value is not None and not (_is_whole(value) and 0 <= value <= MAX_DECLARED_SIZE):
            raise RemoteLimitError(f"metadata.{name}: expected a whole number in [0, {MAX_DECLARED_SIZE}], "
                                   f"got {value!r:.40}")
    spec = raw.get("observation_spec")
    if spec is None:
        return
    if not isinstance(spec, dict) or len(spec) > MAX_DECLARED_FIELDS:
        raise RemoteLimitError(f"metadata.observation_spec: expected a map of at most {MAX_DECLARED_FIELDS} "
                               f"fields, got {type(spec).__name__} of {len(spec) if isinstance(spec, dict) else '?'}")
    total = 0
    for key, field in spec.items():
        if not isinstance(field, dict) or "shape" not in field:
            continue  # not a field spec: PolicyMetadata.from_dict leaves it out
        where = f"metadata.observation_spec[{str(key)[:80]!r}]"
        shape = field["shape"]
        if not (isinstance(shape, (list, tuple)) and len(shape) <= MAX_DECLARED_NDIM
                and all(_is_whole(d) and -1 <= d <= MAX_DECLARED_SIZE for d in shape)):
            raise RemoteLimitError(f"{where}.shape: expected at most {MAX_DECLARED_NDIM} whole numbers in "
                                   f"[-1, {MAX_DECLARED_SIZE}] (-1: any size), got {shape!r:.80}")
        _check_dtype(where, field.get("dtype", "float32"))
        total += math.prod(max(1, int(d)) for d in shape)
    if total > MAX_DECLARED_ELEMENTS:
        raise RemoteLimitError(f"metadata.observation_spec: its fields hold {total} elements in all; the limit "
                               f"is {MAX_DECLARED_ELEMENTS}")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(parts.scheme.lower())


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but carries credentials only within their origin: urllib's own handler
    copies every header, the API key included, to wherever a redirect points."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            # urllib stores names `.capitalize()`d ("Proxy-authorization"): compared case-insensitively.
            credentials = {name.lower() for name in CREDENTIAL_HEADERS}
            for name in [*new.headers, *new.unredirected_hdrs]:
                if name.lower() in credentials:
                    new.remove_header(name)
        return new


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


class RemoteBusyError(RemoteConnectionError):
    """HTTP 503: the server is overloaded for now (a Gauntlet replica's full queue); worth a retry."""


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
                 connect_retry_s: float = 0.0, max_reply_bytes: int = MAX_MESSAGE_BYTES):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_reply_bytes = max_reply_bytes
        self._local = threading.local()
        self._opener = urllib.request.build_opener(_SameOriginCredentials)
        self._session: str | None = None  # SESSION_HEADER's value, once the policy says it has memory
        if not self.url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"url must start with ws://, wss://, http:// or https://, got {url!r}")
        raw = self._retrying(self._fetch_metadata, connect_retry_s)
        if not isinstance(raw, dict):
            raise RemotePolicyError(f"{self.url}: its metadata is a {type(raw).__name__}, not a map")
        try:
            check_declared(raw)
        except RemoteLimitError as exc:
            raise RemoteLimitError(f"{self.url}: {exc}") from None
        self.metadata = _metadata_from(raw, self.url)
        if self.metadata.episode_memory:
            self._session = f"remote-{uuid.uuid4().hex}"
            self._drop_connection()  # opened before the session was known: the next one names it

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
            headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else {}
            if self._session:
                headers[SESSION_HEADER] = self._session
            # websockets >= 16 warns unless a connection held outside a `with` block says so (`legacy`).
            legacy = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
            try:
                # A redirect to another origin is followed without the Authorization header (websockets).
                conn = connect(self.url, compression=None, max_size=self.max_reply_bytes, additional_headers=headers or None,
                               open_timeout=timeout_s, **legacy)
            except InvalidStatus as exc:  # the server answered: 401 (API key), 404 (path) ...
                raise RemotePolicyError(f"{self.url}: the server refused the connection: HTTP "
                                        f"{exc.response.status_code}") from None
            try:
                meta = msgpack_numpy.unpackb(self._recv(conn, timeout_s))
            except BaseException:
                conn.close()
                raise
            self._local.conn, self._local.meta = conn, meta
        return conn, self._local.meta

    def _recv(self, conn: Any, timeout_s: float) -> Any:
        """The next message; RemoteLimitError (not a transport error, never retried) for one past
        `max_reply_bytes`, which websockets refuses from its header (close 1009) without reading it."""
        from websockets.exceptions import ConnectionClosed
        from websockets.frames import CloseCode

        try:
            return conn.recv(timeout=timeout_s)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                raise RemoteLimitError(f"{self.url}: the server sent a message over the client's limit of "
                                       f"{self.max_reply_bytes} bytes (max_reply_bytes)") from None
            raise

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
            reply = self._recv(conn, self.timeout_s)
        except RemoteLimitError:
            self._drop_connection()
            raise
        except (ConnectionClosed, OSError) as exc:  # the next call reconnects
            self._drop_connection()
            raise RemoteConnectionError(f"{self.url}: connection lost: {type(exc).__name__}: {exc}") from None
        if isinstance(reply, str) and reply.startswith(OVERLOADED_FRAME_PREFIX):  # the session goes on
            raise RemoteBusyError(f"{self.url}: {reply.removeprefix(OVERLOADED_FRAME_PREFIX)}")
        if isinstance(reply, str):  # openpi: an error arrives as text, then the server closes
            self._drop_connection()
            raise RemotePolicyError(f"{self.url}: {reply.strip().splitlines()[0] if reply.strip() else reply}")
        return msgpack_numpy.unpackb(reply)

    # ------------------------------------------------------------------------------------ HTTP
    def _http(self, method: str, url: str, body: bytes | None = None, timeout_s: float | None = None,
              session: str | None = None) -> Any:
        headers = {"Accept": "application/msgpack"}
        if body is not None:
            headers["Content-Type"] = "application/msgpack"
        if self.api_key:
            headers["Authorization"] = f"Api-Key {self.api_key}"
        if session:
            headers[SESSION_HEADER] = session
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout_s if timeout_s is None else timeout_s) as resp:
                data = self._read_body(resp, url)
                ctype = resp.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            data, ctype = self._read_body(exc, url), exc.headers.get("content-type", "")
            payload = msgpack_numpy.unpackb(data) if "msgpack" in ctype else {"error": data.decode(errors="replace")}
            error = RemoteBusyError if exc.code == HTTPStatus.SERVICE_UNAVAILABLE else RemotePolicyError
            raise error(f"{url}: HTTP {exc.code}: {payload.get('error', payload)}") from None
        if "msgpack" in ctype:
            return msgpack_numpy.unpackb(data)
        import json

        return json.loads(data)

    def _read_body(self, resp: Any, url: str) -> bytes:
        """At most `max_reply_bytes` of a response: refused from its Content-Length, or once more arrives."""
        declared = resp.headers.get("content-length", "")
        size = int(declared) if declared.strip().isdigit() else 0
        data = b"" if size > self.max_reply_bytes else resp.read(self.max_reply_bytes + 1)
        if size > self.max_reply_bytes or len(data) > self.max_reply_bytes:
            raise RemoteLimitError(f"{url}: the server sent a body over the client's limit of "
                                   f"{self.max_reply_bytes} bytes (max_reply_bytes)")
        return data

    def _session_of(self, obs: Any) -> str | None:
        """SESSION_HEADER for one observation: its episode id, else this client's session (None for
        a policy without per-episode memory)."""
        episode = obs.get(EPISODE_ID_KEY) if self._session and isinstance(obs, dict) else None
        text = str(np.asarray(episode).item()) if episode is not None and np.ndim(episode) == 0 else ""
        # A header value is printable ASCII; any other id keeps the client's session (still one replica).
        return text if text and text.isascii() and text.isprintable() and len(text) <= 256 else self._session

    # ------------------------------------------------------------------------------------ Policy
    def infer_one(self, obs: dict[str, Any]) -> Any:
        """The server's whole answer to one observation, unchecked (the evaluator checks it)."""
        if self.url.startswith("ws"):
            return self._ws_infer(obs)
        reply = self._http("POST", f"{self.url}/infer", msgpack_numpy.packb(obs), session=self._session_of(obs))
        if isinstance(reply, dict) and "error" in reply:
            raise RemotePolicyError(f"{self.url}: {reply['error']}")
        return reply

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = _split(batch)
        if self.url.startswith("ws"):
            outs = [self._ws_infer(o) for o in items]
        else:
            reply = self._http("POST", f"{self.url}/infer", msgpack_numpy.packb({"batch": items}), session=self._session)
            outs = reply["results"]
            errors = [o["error"] for o in outs if "error" in o]
            if errors:
                raise RemotePolicyError(f"{self.url}: {errors[0]}")
        actions = np.stack([np.asarray(o[ACTIONS_KEY], dtype=np.float32) for o in outs])  # (B, H, D)
        return {ACTIONS_KEY: actions}

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self._drop_connection()
