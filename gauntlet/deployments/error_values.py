"""Errors as values: the one shape of an answer that refuses a request.

A replica answers a request it cannot serve with an error value rather than raising, so that one
caller's mistake never fails its batch-mates, and an error crosses a Ray call as plain data. Every
surface sends the same map: the replica to handle callers, the ingress as its HTTP body (JSON or
msgpack) and per item of an HTTP batch, Serve's own endpoints (`proxy_guard`) for a missing key.
The status is an HTTP status; gRPC and WebSocket callers get it mapped once (`grpc_code`, and the
ingress's text frame). This module imports nothing heavy: Serve's proxy process loads it too.
"""

from __future__ import annotations

from typing import Any

# Kinds of refusals the serving layer itself makes (a replica's own kinds are written where it refuses).
BAD_REQUEST_KIND = "bad_request"  # 400: malformed body, frame, adapter name or batch
UNAUTHORIZED_KIND = "unauthorized"  # 401: the API key is missing or wrong
NOT_FOUND_KIND = "not_found"  # 404: a policy this app does not serve
TOO_LARGE_KIND = "too_large"  # 413: a body over the size limit, a batch over its item limit
BUSY_KIND = "busy"  # 503 at the handshake: every WebSocket session slot is taken
INTERNAL_KIND = "internal_error"  # 500: a failure that is no one's request's fault
_KIND_OF_STATUS = {400: BAD_REQUEST_KIND, 401: UNAUTHORIZED_KIND, 404: NOT_FOUND_KIND, 413: TOO_LARGE_KIND}


def error_value(kind: str, status: int, message: str, **extra: Any) -> dict[str, Any]:
    """`{"error": message, "status": status, "kind": kind, **extra}`: `message` names what was wrong
    for the caller (never a host path), `kind` is a stable word a program can branch on, and `extra`
    adds fields such as the observation key at fault (`field=...`)."""
    return {"error": message, "status": status, "kind": kind, **extra}


def is_error_value(answer: Any) -> bool:
    """Whether an answer is an error value rather than a result."""
    return isinstance(answer, dict) and "error" in answer


class RequestError(Exception):
    """A refusal raised while answering one request: an error value as an exception, so that code
    deep in a request's path can refuse it and the route answers it in its protocol."""

    def __init__(self, status: int, message: str, kind: str | None = None, **extra: Any):
        super().__init__(message)
        self.status = status  # HTTP status
        self.kind = kind or _KIND_OF_STATUS.get(status, INTERNAL_KIND)
        self.extra = extra  # further fields of the error value

    @classmethod
    def of_value(cls, value: dict[str, Any]) -> RequestError:
        """An error value a replica answered, raised again at the ingress with all its fields."""
        extra = {k: v for k, v in value.items() if k not in ("error", "status", "kind")}
        return cls(int(value.get("status", 500)), str(value["error"]), value.get("kind"), **extra)

    def value(self) -> dict[str, Any]:
        return error_value(self.kind, self.status, str(self), **self.extra)


def refusal_of(exc: BaseException) -> RequestError:
    """Anything raised while answering a request, as the refusal its caller gets: the caller's own
    mistakes (a malformed body or frame, an invalid adapter name) are 400, anything else 500."""
    from gauntlet.deployments.adapters import AdapterNameError
    from gauntlet.policies.msgpack_numpy import WireFormatError

    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, (WireFormatError, AdapterNameError)):
        return RequestError(400, str(exc))
    return RequestError(500, f"{type(exc).__name__}: {exc}")


def grpc_code(status: int) -> Any:
    """The gRPC status code of an error value's HTTP status (503 stays retryable: UNAVAILABLE)."""
    import grpc

    return {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
            404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
            422: grpc.StatusCode.INVALID_ARGUMENT,
            503: grpc.StatusCode.UNAVAILABLE}.get(status, grpc.StatusCode.INTERNAL)
