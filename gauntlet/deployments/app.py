"""Typed app builders: policies -> batched policy deployments, the first of them also the ingress."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gauntlet.deployments.batcher import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_SIZE
from gauntlet.deployments.ws_guard import INGRESS_OTHER_SLOTS, WebSocketPolicy
from gauntlet.keys import MAX_MESSAGE_BYTES
from gauntlet.policies.registry import (
    PolicyRef,
    ServingOptions,
    check_checkpoint,
    check_in_replica_env,
    plugin_env_vars,
    policy_family,
    runtime_env_for,
    serving_kwargs,
)
from gauntlet.policies.vla.config import DEFAULT_PRESET

# Serve names, defined once: whoever deploys and whoever looks a deployment up agree through these.
APP_NAME = "gauntlet"  # the app `gauntlet serve` runs (what `--policy serve=NAME` targets, gRPC metadata)
EVAL_APP = "gauntlet-eval"  # the app `gauntlet eval` deploys its policies under and deletes at the end
GRPC_SERVICER = "gauntlet.deployments.proto.policy_pb2_grpc.add_PolicyServiceServicer_to_server"


def deployment_name(policy: str) -> str:
    """The Serve deployment serving `policy` (one per policy name in an app)."""
    return f"policy-{policy}"


@dataclass(frozen=True)
class PolicyServing:
    """How one policy is deployed."""

    ref: PolicyRef  # which policy (and checkpoint)
    replicas: int = 1  # Serve replicas
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # largest batch one infer call sees
    # How long a partial batch waits for company (only while requests overlap).
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S
    # Requests a replica queues behind its running batch; more are answered 503 at once
    # (0: batcher.default_max_queued(max_batch_size)).
    max_queued: int = 0
    num_cpus: float = 1.0  # CPUs reserved per replica
    num_gpus: float = 0.0  # GPUs per replica
    policy_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments
    adapters_dir: str | None = None  # directory of LoRA adapters (one sub-directory per adapter)
    # Ray runtime_env of the replicas: set for policy families that need other library versions than
    # Gauntlet's (LeRobot); Ray builds it on each node that hosts a replica. None: Gauntlet's own env.
    runtime_env: dict[str, Any] | None = None

    def actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        return options

    @property
    def max_ongoing_requests(self) -> int:
        # Serve's default (5) would silently cap every batch at 5; leave room for a full batch in
        # flight plus one queued behind it.
        from gauntlet.deployments.policy_deployment import ONGOING_PER_BATCH_SLOT

        return max(8, self.max_batch_size * ONGOING_PER_BATCH_SLOT)


def ingress_max_ongoing(ws_policy: WebSocketPolicy) -> int:
    """Serve's max_ongoing_requests of an ingress replica: its WebSocket sessions (one slot each, for
    the session's life) plus the slots no WebSocket can take (1,024 with the defaults)."""
    return ws_policy.max_sessions + INGRESS_OTHER_SLOTS


def build_app(policies: list[PolicyServing], api_key: str | None = None,
              max_request_bytes: int = MAX_MESSAGE_BYTES, ws_port: int | None = None, ws_host: str = "127.0.0.1",
              ws_policy: WebSocketPolicy | None = None) -> Any:
    """The Serve application (not yet running): `serve.run(build_app(...))`.

    The first policy that runs in Gauntlet's own environment is the app's ingress itself
    (`ingress.PolicyIngress`): its HTTP, WebSocket and gRPC requests join its batches in-process,
    with no second deployment hop. The other policies are plain replicas it reaches by handle; an
    app whose policies all need their own runtime_env gets a routes-only `Gateway` in front.
    `ws_port`: the ingress policy's replicas also serve openpi's WebSocket themselves on
    ws_host:ws_port (+ replica rank), without Serve's proxy in between (`direct_ws`).
    `api_key`: the key every route but /healthz requires (None: none); it is not read from the
    environment here, because this runs wherever Serve builds the app. `ws_policy`: the WebSocket
    Origin rule, session cap and idle timeout (default: same-origin only, 256 sessions, 300 s).
    """
    import ray
    from ray import serve

    from gauntlet.deployments.ingress import Gateway, PolicyIngress
    from gauntlet.deployments.policy_deployment import PolicyReplica

    if ray.is_initialized():  # (Serve's build task, or a driver about to serve.run)
        for p in policies:  # a checkpoint a replica's own environment cannot load is refused here
            check_in_replica_env(p.ref, p.runtime_env)
    names = [p.ref.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"each policy may be served once; got {names}")
    front = next((p for p in policies if _in_gauntlets_env(p)), None)
    others = {p.ref.name: _bind_policy(serve, PolicyReplica, p) for p in policies if p is not front}
    ws_policy = ws_policy or WebSocketPolicy(serving_host=ws_host)
    slots = ingress_max_ongoing(ws_policy)
    if front is None:
        if ws_port:
            raise ValueError("ws_port: a direct WebSocket needs a policy that runs in Gauntlet's own environment")
        gateway = serve.deployment(Gateway, name="gateway", num_replicas=1, max_ongoing_requests=slots,
                                   ray_actor_options={"num_cpus": 0})
        return gateway.bind(others, api_key=api_key, max_request_bytes=max_request_bytes, ws_policy=ws_policy)
    return _bind_policy(serve, PolicyIngress, front, max_ongoing_requests=slots, others=others, api_key=api_key,
                        max_request_bytes=max_request_bytes, ws_port=ws_port or None, ws_host=ws_host,
                        ws_policy=ws_policy)


def _in_gauntlets_env(p: PolicyServing) -> bool:
    """Whether the policy's replicas run Gauntlet's own Python environment (a runtime_env that only
    sets variables), so that they can also run the ingress code."""
    return not set(p.runtime_env or {}) - {"env_vars", "config"}


def _bind_policy(serve: Any, cls: type, p: PolicyServing, max_ongoing_requests: int = 0, **extra: Any) -> Any:
    from gauntlet.deployments.policy_deployment import REPLICA_ENV_VARS
    from gauntlet.deployments.session_router import request_router_config

    options = p.actor_options()
    env = dict(options.get("runtime_env") or {})  # Ray merges these env_vars with the job's, key by key
    # The plugin modules go with the replicas: they look the family up in their own process.
    env["env_vars"] = {**REPLICA_ENV_VARS, **plugin_env_vars(), **env.get("env_vars", {})}
    deployment = serve.deployment(
        cls,
        name=deployment_name(p.ref.name),
        num_replicas=p.replicas,
        max_ongoing_requests=max(p.max_ongoing_requests, max_ongoing_requests),
        ray_actor_options={**options, "runtime_env": env},
        # Requests naming a session (clients of policies with per-episode memory) stick to one
        # replica; the others are balanced as by Serve's default router.
        request_router_config=request_router_config(),
        user_config={"max_batch_size": p.max_batch_size, "batch_wait_timeout_s": p.batch_wait_timeout_s,
                     "max_queued": p.max_queued},
        health_check_period_s=5,
        health_check_timeout_s=60,
    )
    return deployment.bind(
        policy_name=p.ref.name, checkpoint=p.ref.checkpoint, policy_kwargs=p.policy_kwargs,
        adapters_dir=p.adapters_dir, max_batch_size=p.max_batch_size,
        batch_wait_timeout_s=p.batch_wait_timeout_s, max_queued=p.max_queued, **extra,
    )


def start_serve(policies: list[PolicyServing], host: str = "127.0.0.1", http_port: int = 8000,
                grpc_port: int | None = 9000, api_key: str | None = None, ws_port: int | None = None,
                ws_policy: WebSocketPolicy | None = None) -> Any:
    """Starts Serve's proxies (HTTP on host:http_port, gRPC on grpc_port), deploys the app and
    returns its handle once it runs. `ws_port`: the first policy's replicas also serve openpi's
    WebSocket on host:ws_port themselves.

    A replica that fails to start ends the start: DeployFailed with the replica's error, and the
    app is deleted. Serve alone would retry it forever once another replica of the deployment runs
    (e.g. replica 1 of 2 whose --ws-port + 1 another process holds)."""
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    # gRPC reflection (on in Serve by default) is answered by the proxy itself, past any key check:
    # with a key it is off, so that no gRPC surface answers without the key.
    grpc_options = gRPCOptions(port=grpc_port, grpc_servicer_functions=[GRPC_SERVICER],
                               enable_reflection=not api_key) if grpc_port else None
    serve.start(http_options=HTTPOptions(host=host, port=http_port), grpc_options=grpc_options)
    _check_http_bind(host, http_port)
    app = build_app(policies, api_key=api_key, ws_port=ws_port, ws_host=host, ws_policy=ws_policy)
    handle = serve.run_many([serve.RunTarget(app, name=APP_NAME, route_prefix="/")],
                            wait_for_applications_running=False)[0]
    _wait_until_running(serve, APP_NAME)
    return handle


def _check_http_bind(host: str, http_port: int) -> None:
    """ValueError when Serve already ran in this Ray with HTTP elsewhere: `serve.start` then keeps the
    old proxy and only logs a warning, so the app would answer on a port nobody asked for."""
    from ray.serve.context import _get_global_client

    running = _get_global_client().http_config
    if (running.host, running.port) != (host, http_port):
        raise ValueError(f"http_port: Serve already runs in this Ray with HTTP on {running.host}:{running.port}, "
                         f"so it cannot listen on {host}:{http_port}; use that address or stop Serve first "
                         "(`serve shutdown`)")


class DeployFailed(RuntimeError):
    """Serve could not start the app's replicas (the message is the replica's error)."""


REPLICA_START_FAILED = "A replica failed to start"  # how Serve 2.60's deployment status reports one


def _wait_until_running(serve: Any, app_name: str) -> None:
    """Returns once `app_name` runs; DeployFailed (the app deleted) as soon as a replica fails to start."""
    while True:
        status = serve.status().applications.get(app_name)
        if status is not None and status.status == "RUNNING":
            return
        messages = [] if status is None else [d.message for d in status.deployments.values()
                                              if d.message.startswith(REPLICA_START_FAILED)]
        if status is not None and (status.status == "DEPLOY_FAILED" or messages):
            serve.delete(app_name)  # not left retrying in a cluster that outlives this process
            raise DeployFailed(f"deploying {app_name!r} failed: {_last_error_line((messages or [status.message])[0])}")
        time.sleep(0.5)


def _last_error_line(serve_message: str) -> str:
    """The replica's own error out of Serve's status text (a status line, then a traceback)."""
    lines = [line.strip() for line in serve_message.splitlines() if line.strip()]
    errors = [line for line in lines if line.split(":", 1)[0].endswith(("Error", "Exception", "InUse"))]
    if not errors:
        return lines[-1] if lines else serve_message
    kind, message = errors[-1].split(":", 1)
    return f"{kind.rsplit('.', 1)[-1]}:{message}"  # the exception's own name, without its module


def specs_from_names(policies: list[str], *, replicas: int = 1, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                     batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, vla_size: str = DEFAULT_PRESET,
                     adapters_dir: str | None = None, num_gpus: float = 0.0, max_queued: int = 0) -> list[PolicyServing]:
    """`NAME[=CHECKPOINT]` strings -> serving specs (shared by `gauntlet serve` and config files); each
    family's entry says what its replicas are built with (`policies/registry.PolicyFamily`)."""
    options = ServingOptions(preset=vla_size, num_gpus=num_gpus)
    specs = []
    for text in policies:
        ref = PolicyRef.parse(str(text))
        family = policy_family(ref.name)
        kwargs = serving_kwargs(ref, options)
        ref = check_checkpoint(ref)  # a checkpoint that cannot fit the environment is refused before deploying
        specs.append(PolicyServing(ref=ref, replicas=replicas, max_batch_size=max_batch_size,
                                   batch_wait_timeout_s=batch_wait_timeout_s, num_gpus=num_gpus, max_queued=max_queued,
                                   policy_kwargs=kwargs, adapters_dir=adapters_dir if family.serves_adapters else None,
                                   runtime_env=runtime_env_for(ref.name, ref.release)))
    return specs


# The job runtime_env the YAML path needs (`serve run --runtime-env THIS serve_config.yaml`): Serve's
# proxy inherits the runtime_env of the job that starts Serve, and a config file cannot set it.
SERVE_RUNTIME_ENV_FILE = Path(__file__).with_name("serve_runtime_env.yaml")


def check_serve_runtime_env() -> None:
    """Raises RuntimeError unless the job that runs Serve's controller (hence its proxies) carries
    the runtime_env `gauntlet serve` gives its own: the gRPC loopback hook and message limit.

    Runs in Serve's build task, which belongs to the controller's job: that job's runtime_env (not
    the application's, which never reaches the proxy) is what the proxies inherited."""
    import ray

    from gauntlet.deployments.grpc_bind import GRPC_MAX_MESSAGE_ENV, HOST_ENV, runtime_env

    if not ray.is_initialized():
        raise RuntimeError("app_from_args is Serve's builder for config files: it runs inside `serve run` or "
                           "`serve deploy`, which connect to Ray (use build_app from Python)")
    # The job's own runtime_env (Ray's private accessor; the public runtime_context merges in the task's).
    job_config = ray._private.worker.global_worker.core_worker.get_job_config()
    job_env = json.loads(job_config.runtime_env_info.serialized_runtime_env or "{}")
    expected = runtime_env()
    env_vars = job_env.get("env_vars") or {}
    missing = [what for what, ok in (
        ("worker_process_setup_hook", job_env.get("worker_process_setup_hook") == expected["worker_process_setup_hook"]),
        (f"env_vars.{HOST_ENV}", HOST_ENV in env_vars),
        (f"env_vars.{GRPC_MAX_MESSAGE_ENV}",
         str(env_vars.get(GRPC_MAX_MESSAGE_ENV, "")).isdigit()
         and int(env_vars[GRPC_MAX_MESSAGE_ENV]) <= MAX_MESSAGE_BYTES),
    ) if not ok]
    if missing:
        raise RuntimeError(
            f"Serve was started without Gauntlet's proxy settings ({', '.join(missing)}): its gRPC proxy would "
            f"listen on every interface and accept 2 GiB messages. Start it with `serve run --runtime-env "
            f"{SERVE_RUNTIME_ENV_FILE} CONFIG` (a Serve that is already running keeps its settings: `serve "
            f"shutdown` first), or use `gauntlet serve`.")


def app_from_args(args: dict[str, Any]) -> Any:
    """Builder for `serve run`/`serve deploy` config files (`applications[].args`).

    Refuses to build unless Serve runs with `gauntlet serve`'s proxy settings (see
    `check_serve_runtime_env`). `serve deploy` (a REST deploy) passes that check only into a Serve
    that was first started with serve_runtime_env.yaml (e.g. by `serve run --runtime-env`): a REST
    deploy carries no job runtime_env, and a Serve it starts itself has none. The API key comes from `api_key_file`, read here, i.e. in Serve's
    build task on the cluster (the head node), not in the shell that ran `serve run`; a key in the
    config itself is refused (`serve status` and the dashboard show the args)."""
    from gauntlet.deployments.auth import read_api_key_file

    check_serve_runtime_env()
    if "api_key" in args:
        raise ValueError("api_key: a key written in the config is shown by `serve status`; put it in a file on "
                         "the head node and name the file with api_key_file")
    specs = specs_from_names(
        args.get("policies") or ["random"], replicas=int(args.get("replicas", 1)),
        max_batch_size=int(args.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
        batch_wait_timeout_s=float(args.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_S)),
        vla_size=str(args.get("vla_size", DEFAULT_PRESET)), adapters_dir=args.get("adapters_dir"),
        max_queued=int(args.get("max_queued", 0)),
    )
    ws_host = str(args.get("ws_host", "127.0.0.1"))
    ws_policy = WebSocketPolicy(
        max_sessions=int(args.get("ws_max_sessions", WebSocketPolicy.max_sessions)),
        idle_timeout_s=float(args.get("ws_idle_timeout_s", WebSocketPolicy.idle_timeout_s)),
        allowed_origins=tuple(args.get("ws_allowed_origins") or ()), serving_host=ws_host)
    api_key = read_api_key_file(args["api_key_file"], "api_key_file") if args.get("api_key_file") else None
    return build_app(specs, api_key=api_key, ws_port=int(args.get("ws_port", 0)) or None, ws_host=ws_host,
                     ws_policy=ws_policy)
