"""The ingress: HTTP, openpi WebSocket and gRPC in front of the policy replicas.

(No `from __future__ import annotations` here: FastAPI must see real annotation objects through
Serve's class wrapper to recognise `Request`/`WebSocket` parameters.)

All three protocols land on the same `PolicyReplica` deployments through `DeploymentHandle`s, so a
WebSocket client and an HTTP client share batches. Bad input is answered to its sender only:
HTTP 4xx, gRPC INVALID_ARGUMENT, or (openpi's convention) a text frame and close code 1011. With an
API key set, one rule (auth.ApiKeyGuard) guards every route of every protocol but `/healthz`.
"""


import json
import time
import traceback
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from ray import serve

from gauntlet.deployments.auth import REFUSAL, ApiKeyGuard
from gauntlet.deployments.grpc_bind import MAX_REQUEST_BYTES
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.msgpack_numpy import WireFormatError

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")
MAX_BATCH_ITEMS = 1024  # observations in one HTTP {"batch": [...]} (each becomes its own replica request)
app = FastAPI(title="Gauntlet policy server")


class RequestError(Exception):
    """A client's mistake: carries the HTTP status and the message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _classify(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, message) for anything raised while answering a request."""
    if isinstance(exc, RequestError):
        return exc.status, str(exc)
    if isinstance(exc, WireFormatError):
        return 400, str(exc)
    return 500, f"{type(exc).__name__}: {exc}"


def _adapter_name(value: Any) -> str | None:
    """An adapter named in the body: a string (or nothing), never silently ignored."""
    if value is None or isinstance(value, str):
        return value or None
    raise RequestError(400, f"adapter: expected a string, got {type(value).__name__}")


def _grpc_code(status: int) -> Any:
    import grpc

    return {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
            404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
            422: grpc.StatusCode.INVALID_ARGUMENT}.get(status, grpc.StatusCode.INTERNAL)


def _grpc_refuse(grpc_context: Any, status: int, message: str) -> None:
    if grpc_context is not None:
        grpc_context.set_code(_grpc_code(status))
        grpc_context.set_details(message)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


@serve.ingress(app)
class Gateway:
    """Ingress deployment. `policies` maps names to the bound `PolicyReplica` deployments."""

    def __init__(self, policies: dict[str, Any], api_key: str | None = None,
                 max_request_bytes: int = MAX_REQUEST_BYTES):
        self.policies = policies
        self.guard = ApiKeyGuard(api_key)
        self.max_request_bytes = max_request_bytes
        self._metadata_cache: dict[str, dict] = {}

    # ------------------------------------------------------------------------------ helpers
    def _handle(self, name: str) -> Any:
        handle = self.policies.get(name)
        if handle is None:
            raise RequestError(404, f"unknown policy {name!r}; serving: {sorted(self.policies)}")
        return handle

    async def _metadata(self, name: str) -> dict:
        if name not in self._metadata_cache:
            self._metadata_cache[name] = await self._handle(name).metadata.remote()
        return self._metadata_cache[name]

    async def _infer_one(self, name: str, obs: Any, adapter: str | None) -> dict:
        handle = self._handle(name)
        if adapter:
            handle = handle.options(multiplexed_model_id=adapter)
        out = await handle.infer.remote(obs, adapter)
        if "error" in out:
            raise RequestError(int(out.get("status", 500)), str(out["error"]))
        return out

    def _check_grpc_auth(self, grpc_context: Any) -> bool:
        metadata = grpc_context.invocation_metadata() if grpc_context is not None else None
        if self.guard.allows_grpc(metadata):
            return True
        _grpc_refuse(grpc_context, 401, REFUSAL)
        return False

    async def _read_body(self, request: Request) -> bytes:
        """The body, counted as it streams in: a chunked upload past the limit is refused without
        reading (or holding) the rest of it."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise RequestError(400, f"malformed Content-Length {declared[:40]!r}")
            if int(declared) > self.max_request_bytes:
                raise RequestError(413, f"body of {declared} bytes exceeds the limit of {self.max_request_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_request_bytes:
                raise RequestError(413, f"body exceeds the limit of {self.max_request_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # --------------------------------------------------------------------------------- HTTP
    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "policies": sorted(self.policies)}

    @app.get("/v1/policies/{name}/metadata")
    async def http_metadata(self, name: str, request: Request) -> Response:
        if not self.guard.allows(request.headers.get("authorization")):
            return JSONResponse({"error": REFUSAL}, status_code=401)
        try:
            return JSONResponse(_jsonable(await self._metadata(name)))
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.post("/v1/policies/{name}/infer")
    async def http_infer(self, name: str, request: Request) -> Response:
        if not self.guard.allows(request.headers.get("authorization")):
            return JSONResponse({"error": REFUSAL}, status_code=401)
        use_msgpack = request.headers.get("content-type", "").split(";")[0].strip() in MSGPACK_TYPES
        wants_msgpack = use_msgpack or request.headers.get("accept", "") in MSGPACK_TYPES

        def reply(payload: dict, status: int = 200) -> Response:
            if wants_msgpack:
                return Response(msgpack_numpy.packb(payload), status_code=status, media_type=MSGPACK_TYPES[0])
            return JSONResponse(_jsonable(payload), status_code=status)

        try:
            body = await self._read_body(request)
            if use_msgpack:
                payload = msgpack_numpy.unpackb(body)
            else:
                try:
                    payload = json.loads(body)
                except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, too deep
                    raise RequestError(400, f"malformed JSON: {type(exc).__name__}: {exc}") from None
            if not isinstance(payload, dict):
                raise RequestError(400, "body must be an observation object or {\"batch\": [...]}")
            self._handle(name)
            adapter = request.query_params.get("adapter") or request.headers.get("x-gauntlet-adapter")
            if "adapter" in payload:
                adapter = _adapter_name(payload.pop("adapter"))
            if "batch" in payload:
                items = payload["batch"]
                if not isinstance(items, list) or not items:
                    raise RequestError(400, "batch must be a non-empty list of observations")
                if len(items) > MAX_BATCH_ITEMS:
                    raise RequestError(413, f"batch of {len(items)} observations exceeds {MAX_BATCH_ITEMS}")
                import asyncio

                outs = await asyncio.gather(*(self._infer_one(name, o, adapter) for o in items),
                                            return_exceptions=True)
                results = []
                for out in outs:
                    if isinstance(out, BaseException):
                        status, message = _classify(out)
                        results.append({"error": message, "status": status})
                    else:
                        results.append(out)
                return reply({"results": results})
            return reply(await self._infer_one(name, payload, adapter))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a response, never a crash
            status, message = _classify(exc)
            return reply({"error": message}, status)

    # ---------------------------------------------------------------------- openpi WebSocket
    @app.websocket("/v1/policies/{name}/ws")
    async def websocket(self, ws: WebSocket, name: str) -> None:
        """openpi's policy-server protocol: metadata frame, then obs in / actions out."""
        if not self.guard.allows(ws.headers.get("authorization")):
            await ws.close(code=1008, reason=REFUSAL)
            return
        if name not in self.policies:
            await ws.close(code=1008, reason=f"unknown policy {name!r}")
            return
        await ws.accept()
        await ws.send_bytes(msgpack_numpy.packb(_jsonable(await self._metadata(name))))
        prev_total_ms: float | None = None
        while True:
            try:
                start = time.perf_counter()
                data = await ws.receive_bytes()
                if len(data) > self.max_request_bytes:
                    raise WireFormatError(f"frame of {len(data)} bytes exceeds the limit of {self.max_request_bytes}")
                obs = msgpack_numpy.unpackb(data)
                adapter = _adapter_name(obs.pop("adapter", None)) if isinstance(obs, dict) else None
                infer_start = time.perf_counter()
                out = await self._infer_one(name, obs, adapter)
                timing = dict(out.get("server_timing", {}))
                timing["infer_ms"] = (time.perf_counter() - infer_start) * 1e3
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                out["server_timing"] = timing
                await ws.send_bytes(msgpack_numpy.packb(out))
                prev_total_ms = (time.perf_counter() - start) * 1e3
            except WebSocketDisconnect:
                return
            except Exception as exc:  # noqa: BLE001 - openpi: error text frame, then close 1011
                _, message = _classify(exc)
                try:
                    await ws.send_text(f"{message}\n{traceback.format_exc(limit=2)}")
                    await ws.close(code=1011, reason="Internal server error")
                except Exception:  # noqa: BLE001 - the client may already be gone
                    pass
                return

    # --------------------------------------------------------------------------------- gRPC
    async def Infer(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 - RPC name

        from gauntlet.deployments.proto import policy_pb2
        from gauntlet.deployments.tensors import from_tensor, to_tensor

        if not self._check_grpc_auth(grpc_context):
            return policy_pb2.InferResponse()
        try:
            obs: dict[str, Any] = {k: from_tensor(t, k) for k, t in request.observation.items()}
            if request.prompt:
                obs["prompt"] = request.prompt
            out = await self._infer_one(request.policy, obs, request.adapter or None)
            return policy_pb2.InferResponse(
                actions=to_tensor(np.asarray(out["actions"], dtype=np.float32), policy_pb2.Tensor),
                server_timing={k: float(v) for k, v in out.get("server_timing", {}).items()},
            )
        except Exception as exc:  # noqa: BLE001 - mapped to a gRPC status for this caller
            _grpc_refuse(grpc_context, *_classify(exc))
            return policy_pb2.InferResponse()

    async def Metadata(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 - RPC name
        from gauntlet.deployments.proto import policy_pb2

        if not self._check_grpc_auth(grpc_context):
            return policy_pb2.MetadataResponse()
        try:
            return policy_pb2.MetadataResponse(json=json.dumps(_jsonable(await self._metadata(request.policy))))
        except RequestError as exc:
            _grpc_refuse(grpc_context, exc.status, str(exc))
            return policy_pb2.MetadataResponse()
