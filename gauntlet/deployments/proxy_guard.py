"""The API key on Serve's own endpoints: HTTP `/-/routes`, `/-/healthz`, gRPC `ListApplications`, `Healthz`.

Serve's proxy answers these itself, before any Gauntlet code runs; they reveal the route prefixes
and application names (`{"/": "gauntlet"}`) and whether the proxy is ready (`success`). Gauntlet's
worker setup hook (`grpc_bind.restrict_grpc_bind`, which runs in the proxy process too) calls
`guard_system_routes`, which wraps the proxy's handler of these four so that they need the same
`Authorization: Api-Key KEY` header (gRPC: `authorization` metadata) as every Gauntlet route, as
soon as any application has a key; `/healthz` (Gauntlet's own) stays the one open route.

How the proxy learns the key: each ingress replica publishes the SHA-256 of the header it expects
in Ray's internal key-value store (the GCS, which only Ray-authenticated callers reach), one entry
per replica, removed when the replica shuts down. The proxy reads the entries at most once a
second (REFRESH_S). A replica that crashed leaves its entry behind: the endpoints then keep requiring
that key (fail closed) until Ray is restarted.

Not covered:
- The first REFRESH_S after a keyed app starts: a proxy that read the (then empty) entries just
  before the replica published its key answers these endpoints without the key until its next read,
  at most REFRESH_S later. What they reveal then is what they always say: route prefixes, app names,
  and whether the proxy is ready.
- With a key, `/-/healthz` needs it too, so an external load balancer's unauthenticated health probe
  of `/-/healthz` fails: point such probes at Gauntlet's `/healthz`, which stays open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import time
from typing import Any

from gauntlet.deployments.auth import REFUSAL, SCHEME
from gauntlet.deployments.error_values import UNAUTHORIZED_KIND, error_value

KV_NAMESPACE = "gauntlet"
KV_PREFIX = b"serve-key/"  # + "<app>/<replica id>" -> hex SHA-256 of "Api-Key KEY"
REFRESH_S = 1.0  # how stale the proxy's copy of the published keys may be


def _digest(header_value: str) -> str:
    return hashlib.sha256(header_value.encode()).hexdigest()


def publish_key(api_key: str | None) -> bytes | None:
    """Called by an ingress replica as it starts: publishes its key's digest (nothing without a
    key). Returns the entry's name, for `withdraw_key`; None outside a Serve replica."""
    from ray import serve
    from ray.experimental.internal_kv import _internal_kv_put

    if not api_key:
        return None
    try:
        context = serve.get_replica_context()
    except Exception:  # noqa: BLE001 - not in a replica (a class built directly)
        return None
    entry = KV_PREFIX + f"{context.app_name}/{context.replica_id.unique_id}".encode()
    _internal_kv_put(entry, _digest(f"{SCHEME} {api_key}").encode(), overwrite=True, namespace=KV_NAMESPACE)
    return entry


def withdraw_key(entry: bytes | None) -> None:
    """Removes a replica's entry (its graceful shutdown); never raises."""
    if entry is None:
        return
    try:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(entry, namespace=KV_NAMESPACE)
    except Exception:  # noqa: BLE001 - Ray may already be going away
        pass


class _PublishedKeys:
    """The proxy's cached copy of the published digests."""

    def __init__(self) -> None:
        self.digests: frozenset[str] = frozenset()
        self.read_at = -REFRESH_S

    def _read(self) -> frozenset[str]:
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

        values = (_internal_kv_get(k, namespace=KV_NAMESPACE) for k in _internal_kv_list(KV_PREFIX, namespace=KV_NAMESPACE))
        return frozenset(v.decode() for v in values if v)

    async def current(self) -> frozenset[str]:
        if time.monotonic() - self.read_at >= REFRESH_S:
            self.digests = await asyncio.to_thread(self._read)  # GCS calls, off the proxy's event loop
            self.read_at = time.monotonic()
        return self.digests


def _authorization(proxy_request: Any) -> str | None:
    """The request's Authorization header (HTTP) or `authorization` metadata (gRPC), if exactly one."""
    if hasattr(proxy_request, "context"):  # gRPCProxyRequest
        values = [v for k, v in proxy_request.context.invocation_metadata() if k == "authorization"]
    else:  # ASGIProxyRequest
        values = [v.decode("latin-1") for k, v in proxy_request.headers if k.lower() == b"authorization"]
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def allowed(authorization: str | None, digests: frozenset[str]) -> bool:
    """Whether the header passes: anything when no key is published, else one of the keys."""
    if not digests:
        return True
    presented = _digest(authorization or "")
    # Every digest is compared (no early exit): the time taken does not say which key matched.
    return sum(hmac.compare_digest(presented, d) for d in digests) > 0


def guard_system_routes() -> None:
    """Wraps Serve's proxy so that its system endpoints need a published key (idempotent)."""
    import grpc
    from ray.serve._private.http_util import convert_object_to_asgi_messages
    from ray.serve._private.proxy import GenericProxy, gRPCProxy
    from ray.serve._private.proxy_request_response import ResponseStatus

    original = GenericProxy._get_health_or_routes_reponse
    if getattr(original, "_gauntlet", False):
        return
    keys = _PublishedKeys()

    def refusal(grpc_proxy: bool) -> Any:
        if grpc_proxy:
            return ResponseStatus(code=grpc.StatusCode.UNAUTHENTICATED, is_error=True, message=REFUSAL)
        return ResponseStatus(code=401, is_error=True, message=REFUSAL)

    def guarded(self: Any, proxy_request: Any) -> Any:
        info = original(self, proxy_request)
        authorization = _authorization(proxy_request)
        grpc_proxy = isinstance(self, gRPCProxy)

        async def respond() -> Any:
            if allowed(authorization, await keys.current()):
                async for message in info.response_generator:
                    yield message
                return
            await info.response_generator.aclose()
            if not grpc_proxy:
                for message in convert_object_to_asgi_messages(error_value(UNAUTHORIZED_KIND, 401, REFUSAL), status_code=401):
                    yield message
            yield refusal(grpc_proxy)

        return dataclasses.replace(info, response_generator=respond())

    guarded._gauntlet = True  # type: ignore[attr-defined]
    GenericProxy._get_health_or_routes_reponse = guarded
