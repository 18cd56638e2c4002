"""The ingress: HTTP, openpi WebSocket and gRPC, answered by the policy replica itself where it can.

`PolicyRoutes` is the one definition of the surface. It runs in one of two Serve ingress classes:

- `PolicyIngress`: a policy replica that is also the app's ingress. Requests for its own policy go
  straight into its batcher, in-process: no second deployment hop (a Serve handle call costs more
  than a small model's inference on a CPU). Other policies of the same app are reached through
  their DeploymentHandles. `app.build_app` uses it whenever a policy runs in Gauntlet's own env.
- `Gateway`: routes only, every policy through handles (an app whose policies all run in their own
  runtime_env, e.g. LeRobot, whose environment is not Gauntlet's).

WebSocket clients, HTTP clients and handle callers (rollout actors) share batches either way. Bad
input is answered to its sender only: HTTP 4xx, gRPC INVALID_ARGUMENT, or (openpi's convention) a
text frame and close code 1011; a full queue (503) is a text frame too, but the session stays open.
A policy with per-episode memory reached by handle gets the episode id as its Serve session
(`_episode_session`), so its router keeps each episode on one replica. With an API key set, one rule (auth.ApiKeyGuard) guards every route
of every protocol but `/healthz` (which lists the policy names, nothing else), and Serve's own
endpoints too (`proxy_guard`). Adapter names are checked at this edge on every protocol
(`adapters`); WebSockets pass the Origin rule and the session cap and are closed when idle
(`ws_guard`). Routes are plain Starlette (FastAPI's per-request dependency resolution buys nothing
here), built per replica by `__serve_build_asgi_app__`.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from typing import Any

import numpy as np
from ray import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gauntlet.deployments.adapters import check_adapter_name
from gauntlet.deployments.auth import REFUSAL, ApiKeyGuard
from gauntlet.deployments.batcher import OVERLOADED_STATUS
from gauntlet.deployments.error_values import (
    BUSY_KIND,
    UNAUTHORIZED_KIND,
    RequestError,
    error_value,
    grpc_code,
    is_error_value,
    refusal_of,
)
from gauntlet.deployments.policy_deployment import PolicyReplica
from gauntlet.deployments.proxy_guard import publish_key, withdraw_key
from gauntlet.deployments.ws_guard import (
    BUSY_CLOSE_CODE,
    OVERLOADED_FRAME_PREFIX,
    POLICY_CLOSE_CODE,
    SessionSlots,
    WebSocketPolicy,
)
from gauntlet.keys import ACTIONS_KEY, EPISODE_ID_KEY, MAX_MESSAGE_BYTES, PROMPT_KEY, SERVER_TIMING_KEY
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.msgpack_numpy import WireFormatError
from gauntlet.runtime.manifests import jsonable

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")
MAX_BATCH_ITEMS = 1024  # observations in one HTTP {"batch": [...]} (each becomes its own replica request)


def _grpc_refuse(grpc_context: Any, refusal: RequestError) -> None:
    if grpc_context is not None:
        grpc_context.set_code(grpc_code(refusal.status))
        grpc_context.set_details(str(refusal))


async def _refuse_busy(ws: WebSocket, reason: str) -> None:
    """Over the session cap: HTTP 503 during the handshake where the server can send one (ASGI's
    denial-response extension; uvicorn, hence Serve's proxy, has it), else accept and close 1013."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse(error_value(BUSY_KIND, 503, reason), status_code=503))
    else:
        await ws.accept()
        await ws.close(code=BUSY_CLOSE_CODE, reason=reason[:120])


class PolicyRoutes:
    """HTTP, openpi WebSocket and gRPC over `_infer_one` / `_metadata`: requests for `local_policy`
    run in this replica (`self.infer`, `self.metadata` of PolicyReplica), others via `remote` handles."""

    local_policy: str | None = None

    def _init_routes(self, remote: dict[str, Any], api_key: str | None, max_request_bytes: int,
                     ws_policy: WebSocketPolicy | None) -> None:
        self.remote_policies = remote
        self.guard = ApiKeyGuard(api_key)
        self.max_request_bytes = max_request_bytes
        self.ws_policy = ws_policy or WebSocketPolicy()
        self.ws_slots = SessionSlots(self.ws_policy.max_sessions)  # sessions through Serve's proxy
        self._published_key: bytes | None = None  # set last in __init__ (see `_publish_key`)
        self._metadata_cache: dict[str, dict] = {}
        self.policy_names = sorted({*remote, *([self.local_policy] if self.local_policy else [])})

    def _publish_key(self, api_key: str | None) -> None:
        """Serve's proxy guards its own endpoints with the key (`proxy_guard`). Called as the last
        step of __init__, so a replica that fails to start leaves no entry behind."""
        self._published_key = publish_key(api_key)

    def __del__(self) -> None:
        """Serve calls this as the replica shuts down gracefully."""
        withdraw_key(getattr(self, "_published_key", None))

    def __serve_build_asgi_app__(self) -> Starlette:
        return Starlette(routes=[
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/v1/policies/{name}/metadata", self.http_metadata, methods=["GET"]),
            Route("/v1/policies/{name}/infer", self.http_infer, methods=["POST"]),
            WebSocketRoute("/v1/policies/{name}/ws", self.websocket),
        ])

    # ------------------------------------------------------------------------------ helpers
    def _check_name(self, name: str) -> None:
        if name != self.local_policy and name not in self.remote_policies:
            raise RequestError(404, f"unknown policy {name!r}; serving: {self.policy_names}")

    async def _metadata(self, name: str) -> dict:
        self._check_name(name)
        if name == self.local_policy:
            return self.metadata()  # type: ignore[attr-defined] - PolicyReplica's
        if name not in self._metadata_cache:
            self._metadata_cache[name] = await self.remote_policies[name].metadata.remote()
        return self._metadata_cache[name]

    async def _infer_one(self, name: str, obs: Any, adapter: str | None) -> dict:
        self._check_name(name)
        if name == self.local_policy:
            out = await self.infer(obs, adapter)  # type: ignore[attr-defined] - PolicyReplica's
        else:
            handle = self.remote_policies[name]
            if adapter:
                handle = handle.options(multiplexed_model_id=adapter)
            session = await self._episode_session(name, obs)
            if session:
                handle = handle.options(session_id=session)
            out = await handle.infer.remote(obs, adapter)
        if is_error_value(out):
            raise RequestError.of_value(out)
        return out

    async def _episode_session(self, name: str, obs: Any) -> str:
        """The Serve session of a request for policy `name` reached by handle: its episode id when
        the policy keeps per-episode memory (PolicyMetadata.episode_memory), so that the policy's
        router (session_router) sends every call of the episode to the replica holding its memory;
        "" otherwise (load balanced). Pins live in this replica's router: an episode must keep
        reaching the same ingress replica too, which a client of a multi-replica ingress gets by
        sending Serve's session header (`policies.remote.SESSION_HEADER`)."""
        episode = obs.get(EPISODE_ID_KEY) if isinstance(obs, dict) else None
        if episode is None or not (await self._metadata(name)).get("episode_memory"):
            return ""
        return str(episode.item() if isinstance(episode, np.ndarray) and episode.ndim == 0 else episode)

    def _check_grpc_auth(self, grpc_context: Any) -> bool:
        metadata = grpc_context.invocation_metadata() if grpc_context is not None else None
        if self.guard.allows_grpc(metadata):
            return True
        _grpc_refuse(grpc_context, RequestError(401, REFUSAL))
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
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "policies": self.policy_names})

    async def http_metadata(self, request: Request) -> Response:
        if not self.guard.allows(request.headers.get("authorization")):
            return JSONResponse(error_value(UNAUTHORIZED_KIND, 401, REFUSAL), status_code=401)
        try:
            return JSONResponse(jsonable(await self._metadata(request.path_params["name"])))
        except RequestError as exc:
            return JSONResponse(exc.value(), status_code=exc.status)

    async def http_infer(self, request: Request) -> Response:
        if not self.guard.allows(request.headers.get("authorization")):
            return JSONResponse(error_value(UNAUTHORIZED_KIND, 401, REFUSAL), status_code=401)
        use_msgpack = request.headers.get("content-type", "").split(";")[0].strip() in MSGPACK_TYPES
        wants_msgpack = use_msgpack or request.headers.get("accept", "") in MSGPACK_TYPES

        def reply(payload: dict, status: int = 200) -> Response:
            if wants_msgpack:
                return Response(msgpack_numpy.packb(payload), status_code=status, media_type=MSGPACK_TYPES[0])
            return JSONResponse(jsonable(payload), status_code=status)

        try:
            name = request.path_params["name"]
            payload = self._decode_body(await self._read_body(request), use_msgpack)
            self._check_name(name)
            adapter = check_adapter_name(request.query_params.get("adapter") or request.headers.get("x-gauntlet-adapter"))
            if "adapter" in payload:
                adapter = check_adapter_name(payload.pop("adapter"))
            if "batch" in payload:
                return reply({"results": await self._infer_items(name, payload["batch"], adapter)})
            return reply(await self._infer_one(name, payload, adapter))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a response, never a crash
            refusal = refusal_of(exc)
            return reply(refusal.value(), refusal.status)

    @staticmethod
    def _decode_body(body: bytes, use_msgpack: bool) -> dict:
        if use_msgpack:
            payload = msgpack_numpy.unpackb(body)
        else:
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, too deep
                raise RequestError(400, f"malformed JSON: {type(exc).__name__}: {exc}") from None
        if not isinstance(payload, dict):
            raise RequestError(400, "body must be an observation object or {\"batch\": [...]}")
        return payload

    async def _infer_items(self, name: str, items: Any, adapter: str | None) -> list[dict]:
        """`{"batch": [...]}`: each item its own request (they share replica batches), answered alone."""
        if not isinstance(items, list) or not items:
            raise RequestError(400, "batch must be a non-empty list of observations")
        if len(items) > MAX_BATCH_ITEMS:
            raise RequestError(413, f"batch of {len(items)} observations exceeds {MAX_BATCH_ITEMS}")
        outs = await asyncio.gather(*(self._infer_one(name, o, adapter) for o in items), return_exceptions=True)
        return [refusal_of(out).value() if isinstance(out, BaseException) else out for out in outs]

    # ---------------------------------------------------------------------- openpi WebSocket
    async def websocket(self, ws: WebSocket) -> None:
        """openpi's policy-server protocol through Serve's proxy (see `openpi_session`)."""
        name = ws.path_params["name"]
        refusal = self.websocket_refusal(name, ws.headers)
        if refusal is not None:
            await ws.close(code=POLICY_CLOSE_CODE, reason=refusal)  # before accepting: the client sees HTTP 403
            return
        if not self.ws_slots.try_take():
            await _refuse_busy(ws, self.ws_slots.refusal)
            return
        try:
            await ws.accept()
            await self.openpi_session(ws, name)
        finally:
            self.ws_slots.give_back()

    def websocket_refusal(self, name: str, headers: Any) -> str | None:
        """Why a WebSocket for `name` is refused before its metadata frame (HTTP 403), or None.
        `headers`: the handshake's, with a case-insensitive `get` (Starlette's or websockets')."""
        refusal = self.ws_policy.origin_refusal(headers.get("origin"), headers.get("host"))
        if refusal is not None:
            return refusal
        if not self.guard.allows(headers.get("authorization")):
            return REFUSAL
        if name != self.local_policy and name not in self.remote_policies:
            return f"unknown policy {name!r}"
        return None

    async def openpi_session(self, ws: Any, name: str) -> None:
        """An accepted connection: metadata frame, then obs in / actions out until it closes.

        `ws` has Starlette's WebSocket methods (`receive_bytes` raising WebSocketDisconnect,
        `send_bytes`, `send_text`, `close`); the replica's own listener adapts its connections to them.
        """
        await ws.send_bytes(msgpack_numpy.packb(jsonable(await self._metadata(name))))
        prev_total_ms: float | None = None
        while True:
            try:
                start = time.perf_counter()  # openpi's server_timing: total includes the wait for the frame
                try:
                    data = await asyncio.wait_for(ws.receive_bytes(), self.ws_policy.idle_timeout_s)
                except TimeoutError:
                    await ws.close(code=POLICY_CLOSE_CODE, reason=f"idle for {self.ws_policy.idle_timeout_s:g} s")
                    return
                if len(data) > self.max_request_bytes:
                    raise WireFormatError(f"frame of {len(data)} bytes exceeds the limit of {self.max_request_bytes}")
                obs = msgpack_numpy.unpackb(data)
                adapter = check_adapter_name(obs.pop("adapter", None)) if isinstance(obs, dict) else None
                infer_start = time.perf_counter()
                out = await self._infer_one(name, obs, adapter)
                timing = dict(out.get(SERVER_TIMING_KEY, {}))
                timing["infer_ms"] = (time.perf_counter() - infer_start) * 1e3
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                out[SERVER_TIMING_KEY] = timing
                await ws.send_bytes(msgpack_numpy.packb(out))
                prev_total_ms = (time.perf_counter() - start) * 1e3
            except WebSocketDisconnect:
                return
            except Exception as exc:  # noqa: BLE001 - openpi: error text frame, then close 1011
                if not await self._answer_ws_error(ws, exc):
                    return

    @staticmethod
    async def _answer_ws_error(ws: Any, exc: Exception) -> bool:
        """Sends the error's text frame; True if the session goes on. Overloaded (503: the queue is
        full) is transient: the frame starts with OVERLOADED_FRAME_PREFIX and the client may send
        again on the same session. Anything else ends it with close 1011 (openpi's convention)."""
        refusal = refusal_of(exc)
        if refusal.status == 500:  # the traceback goes to the replica's log: it names files of this host
            traceback.print_exc()
        try:
            if refusal.status == OVERLOADED_STATUS:
                await ws.send_text(OVERLOADED_FRAME_PREFIX + str(refusal))
                return True
            await ws.send_text(str(refusal))
            await ws.close(code=1011, reason="Internal server error")
        except Exception:  # noqa: BLE001 - the client may already be gone
            pass
        return False

    # --------------------------------------------------------------------------------- gRPC
    async def Infer(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 - RPC name
        from gauntlet.deployments.proto import policy_pb2
        from gauntlet.deployments.tensors import from_tensor, to_tensor

        if not self._check_grpc_auth(grpc_context):
            return policy_pb2.InferResponse()
        try:
            obs: dict[str, Any] = {k: from_tensor(t, k) for k, t in request.observation.items()}
            if request.prompt:
                obs[PROMPT_KEY] = request.prompt
            out = await self._infer_one(request.policy, obs, check_adapter_name(request.adapter))
            return policy_pb2.InferResponse(
                actions=to_tensor(np.asarray(out[ACTIONS_KEY], dtype=np.float32), policy_pb2.Tensor),
                server_timing={k: float(v) for k, v in out.get(SERVER_TIMING_KEY, {}).items()},
            )
        except Exception as exc:  # noqa: BLE001 - mapped to a gRPC status for this caller
            _grpc_refuse(grpc_context, refusal_of(exc))
            return policy_pb2.InferResponse()

    async def Metadata(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 - RPC name
        from gauntlet.deployments.proto import policy_pb2

        if not self._check_grpc_auth(grpc_context):
            return policy_pb2.MetadataResponse()
        try:
            return policy_pb2.MetadataResponse(json=json.dumps(jsonable(await self._metadata(request.policy))))
        except RequestError as exc:
            _grpc_refuse(grpc_context, exc)
            return policy_pb2.MetadataResponse()


@serve.ingress()
class Gateway(PolicyRoutes):
    """Ingress deployment without a policy of its own: `policies` maps names to bound deployments."""

    def __init__(self, policies: dict[str, Any], api_key: str | None = None,
                 max_request_bytes: int = MAX_MESSAGE_BYTES, ws_policy: WebSocketPolicy | None = None):
        self._init_routes(policies, api_key, max_request_bytes, ws_policy)
        self._publish_key(api_key)


@serve.ingress()
class PolicyIngress(PolicyReplica, PolicyRoutes):
    """A policy replica that is also the app's ingress (see the module docstring). With `ws_port`,
    it also serves openpi's WebSocket protocol itself (`direct_ws`), beside Serve's proxy."""

    async def __init__(self, policy_name: str, *, others: dict[str, Any] | None = None, api_key: str | None = None,
                       max_request_bytes: int = MAX_MESSAGE_BYTES, ws_port: int | None = None,
                       ws_host: str = "127.0.0.1", ws_policy: WebSocketPolicy | None = None,
                       **replica_kwargs: Any):
        PolicyReplica.__init__(self, policy_name, **replica_kwargs)
        self.local_policy = policy_name
        self._init_routes(others or {}, api_key, max_request_bytes, ws_policy)
        self.direct_ws = None
        if ws_port:
            from gauntlet.deployments.direct_ws import serve_direct_websocket

            # Bound before the replica reports healthy: a port in use fails the deployment, named.
            self.direct_ws = await serve_direct_websocket(self, ws_host, ws_port)
        self._publish_key(api_key)
