"""What a WebSocket must pass before its session starts, and how long a session may stay.

Origin: a browser sends `Origin` with every WebSocket handshake, and no key is set by default, so
without a check any web page the operator opens could drive `ws://127.0.0.1:PORT`. A handshake that
sends an Origin must be same-origin or on the allow-list; native clients (openpi's, `websockets`)
send none and are not affected. Same-origin means: the Origin's host:port is the request's Host,
and that host is an IP literal, `localhost` or the serving host. A DNS name that merely resolves to
this machine is not enough (DNS rebinding: a page's own name, re-pointed at 127.0.0.1, would
otherwise pass as same-origin); allow such a name with `--ws-allowed-origins`.

Bounds: each open session holds an ingress request slot for its whole life (proxied route) or a
socket and a task (direct port). `max_sessions` caps them per listener (the proxied route of one
replica; one direct port), so handle, HTTP and gRPC callers always keep the rest of the ingress's
slots; a session that sends nothing for `idle_timeout_s` is closed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_MAX_SESSIONS = 256  # per listener
# Request slots of an ingress replica that no WebSocket can hold: an ingress gets max_sessions plus
# these, so HTTP, gRPC and handle callers (the rollout actors) always have them.
INGRESS_OTHER_SLOTS = 768
DEFAULT_IDLE_TIMEOUT_S = 300.0
# Policy violation: a handshake refused before it is accepted (the client sees HTTP 403), and a
# session that sent nothing for idle_timeout_s.
POLICY_CLOSE_CODE = 1008
BUSY_CLOSE_CODE = 1013  # try again later: used where an HTTP 503 cannot be sent during the handshake
# The text frame of an answer refused because the replica's queue is full (HTTP 503's): the session
# stays open and the client may send again. Every other error frame is followed by close 1011
# (openpi's convention), so a client tells the two apart by this prefix.
OVERLOADED_FRAME_PREFIX = "overloaded: "
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}  # of URLs and Origins without a port


def normalize_origin(origin: str) -> str:
    """`scheme://host:port`, lower-case, default port filled in; ValueError for anything else."""
    parts = urlsplit(origin.strip())
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{origin[:100]!r} is not an origin (scheme://host[:port], scheme http or https)")
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS[scheme]
    host = parts.hostname.lower()
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def _host_port(authority: str, default_port: int) -> tuple[str, int] | None:
    """(host, port) of a Host header or an Origin's authority; None if it is malformed (an
    unclosed `[::1`, a port that is not a number): refused, never an error."""
    try:
        parts = urlsplit(f"//{authority.strip()}")
        return (parts.hostname or "").lower(), parts.port or default_port
    except ValueError:
        return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class WebSocketPolicy:
    """The WebSocket rules of one app; the same for the proxied route and the direct port."""

    max_sessions: int = DEFAULT_MAX_SESSIONS  # open sessions per listener; more are refused (503 / 1013)
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S  # a session silent this long is closed (POLICY_CLOSE_CODE)
    allowed_origins: tuple[str, ...] = ()  # Origins accepted besides same-origin (normalized on construction)
    serving_host: str = "127.0.0.1"  # the host the servers bind: a same-origin Host may name it

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"ws_max_sessions: expected >= 1, got {self.max_sessions}")
        if not self.idle_timeout_s > 0:
            raise ValueError(f"ws_idle_timeout_s: expected > 0, got {self.idle_timeout_s}")
        try:
            normalized = tuple(normalize_origin(o) for o in self.allowed_origins)
        except ValueError as exc:
            raise ValueError(f"ws_allowed_origins: {exc}") from None
        object.__setattr__(self, "allowed_origins", normalized)

    def origin_refusal(self, origin: str | None, host_header: str | None) -> str | None:
        """Why a handshake with this Origin and Host is refused (403), or None to let it on."""
        if origin is None:
            return None  # not a browser: native clients send no Origin
        refusal = f"cross-origin WebSocket from {origin[:100]!r} refused (allow it with --ws-allowed-origins)"
        try:
            normalized = normalize_origin(origin)
        except ValueError:
            return refusal  # "null" (sandboxed pages, file://) and anything malformed
        if normalized in self.allowed_origins:
            return None
        scheme, authority = normalized.split("://", 1)
        origin_hp = _host_port(authority, DEFAULT_PORTS[scheme])
        host_hp = _host_port(host_header or "", 80)
        if origin_hp is None or origin_hp != host_hp:
            return refusal
        host = origin_hp[0].strip("[]")
        if _is_ip(host) or host == "localhost" or host == self.serving_host.lower():
            return None
        return refusal


class SessionSlots:
    """Open sessions of one listener, at most `limit` (single event loop: no lock needed)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0

    def try_take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1

    @property
    def refusal(self) -> str:
        return f"too many WebSocket sessions (limit {self.limit} per listener); try again later"
