"""Settings of Serve's proxy processes: the gRPC bind host and the request size limit.

Size: Serve's gRPC proxy accepts messages up to 2 GiB by default, read into memory whole; the
runtime_env below lowers that to MAX_MESSAGE_BYTES (gauntlet.keys), which gRPC enforces while receiving (the
caller gets RESOURCE_EXHAUSTED and nothing past the limit is buffered). HTTP bodies are counted
while they stream in (the ingress), WebSocket frames over 16 MiB are refused by uvicorn's protocol
layer (`ws_max_size`) before their payload is read.

Bind host:
Ray Serve 2.60 binds its gRPC proxy to `[::]:PORT` and has no host option, while Gauntlet's servers
bind to 127.0.0.1 unless configured otherwise. This module is installed as the job's
`worker_process_setup_hook`, so it runs inside Serve's proxy actor before the gRPC server starts,
and rewrites the wildcard address to `GAUNTLET_GRPC_HOST` (default 127.0.0.1).
Each replica also opens an inter-deployment gRPC server on `[::]:0`, reached at its node's IP; on a
node whose IP is loopback (the embedded Ray, see gauntlet.runtime.ray_session) the hook binds it to
that IP, so it is not reachable from other hosts. On a cluster node it keeps Ray's bind.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from gauntlet.keys import MAX_MESSAGE_BYTES

HOST_ENV = "GAUNTLET_GRPC_HOST"
GRPC_MAX_MESSAGE_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"  # read by Serve's proxy when it starts


def restrict_grpc_bind() -> None:
    """The job's worker_process_setup_hook: runs in every worker of the job as it starts, before it
    knows whether it will host Serve's proxy, a replica or a task. It never raises: a hook that
    raises kills the worker, i.e. every worker of the job (LeRobot's replicas in their own Python
    environment included). A step that fails is printed to the worker's log; when the step is the
    proxy's, Serve's proxy is made to refuse to start in that process (`_refuse_to_proxy`): a proxy
    without it would answer its own endpoints without the key, or listen for gRPC on every interface."""
    try:
        from ray.serve._private import default_impl
    except Exception:  # noqa: BLE001 - no usable Serve here (e.g. a runtime_env whose protobuf it cannot load):
        return  # nothing to rebind, and no proxy can start in this process either
    steps = (("the API key on Serve's own endpoints", _guard_system_routes, True),
             ("the gRPC proxy's bind host", lambda: _restrict_proxy_bind(default_impl), True),
             ("the replica's gRPC bind host", _restrict_replica_bind, False))
    for what, step, proxys in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - see the docstring: logged, and the proxy fails closed
            print(f"[gauntlet] {what} could not be set up in this worker: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            if proxys:
                _refuse_to_proxy(what, exc)


def _guard_system_routes() -> None:
    from gauntlet.deployments.proxy_guard import guard_system_routes

    guard_system_routes()  # the API key on Serve's own /-/routes, /-/healthz, ListApplications, Healthz


def _refuse_to_proxy(what: str, cause: BaseException) -> None:
    """Serve's proxy, if this process is ever asked to host it, fails to start, naming the cause
    (Serve then reports the proxy unhealthy and retries it): nothing is served unguarded. Never raises."""
    message = (f"Gauntlet could not set up {what} in this process ({type(cause).__name__}: {cause}); Serve's "
               f"proxy refuses to start here rather than run without it")
    try:
        from ray.serve._private.proxy import GenericProxy
    except Exception:  # noqa: BLE001 - without its module no proxy can start in this process at all
        return

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError(message)

    GenericProxy.__init__ = refuse  # type: ignore[method-assign] - HTTP and gRPC proxies both start here


def _restrict_proxy_bind(default_impl: ModuleType) -> None:
    """Serve's gRPC proxy binds `[::]:PORT`; rewritten to GAUNTLET_GRPC_HOST (idempotent)."""
    if getattr(default_impl.add_grpc_address, "_gauntlet", False):
        return
    original = default_impl.add_grpc_address

    def add_grpc_address(grpc_server, server_address: str) -> None:
        host = os.environ.get(HOST_ENV, "127.0.0.1")
        if server_address.startswith("[::]:") and host not in ("", "0.0.0.0", "::"):
            port = server_address.rsplit(":", 1)[1]
            server_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        original(grpc_server, server_address)

    add_grpc_address._gauntlet = True  # type: ignore[attr-defined]
    default_impl.add_grpc_address = add_grpc_address


def _restrict_replica_bind() -> None:
    """A replica's inter-deployment gRPC server binds to its node's IP when that IP is loopback."""
    import ray
    from ray.serve._private import replica  # imported by default_impl already: no extra start-up cost

    original = replica.add_port_to_grpc_server
    if getattr(original, "_gauntlet", False):
        return

    def add_port_to_grpc_server(server, address: str) -> int:
        node_ip = ray.util.get_node_ip_address()
        if address.startswith("[::]:") and node_ip in ("127.0.0.1", "::1"):
            port = address.rsplit(":", 1)[1]
            address = f"[{node_ip}]:{port}" if ":" in node_ip else f"{node_ip}:{port}"
        return original(server, address)

    add_port_to_grpc_server._gauntlet = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_to_grpc_server


def runtime_env(host: str = "127.0.0.1") -> dict:
    """The runtime_env for `ray.init` that applies the hook in every worker (incl. Serve's proxy)."""
    return {"worker_process_setup_hook": "gauntlet.deployments.grpc_bind.restrict_grpc_bind",
            "env_vars": {HOST_ENV: host, GRPC_MAX_MESSAGE_ENV: str(MAX_MESSAGE_BYTES)}}
