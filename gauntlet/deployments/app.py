"""Typed app builders: policies -> batched policy deployments, the first of them also the ingress."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from gauntlet.policies.registry import PolicyRef, check_checkpoint, runtime_env_for

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
    max_batch_size: int = 32  # largest batch one infer call sees
    batch_wait_timeout_s: float = 0.005  # how long a partial batch waits for company (only while requests overlap)
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


INGRESS_MAX_ONGOING = 1024  # an ingress holds one slot per open WebSocket for the connection's lifetime


def build_app(policies: list[PolicyServing], api_key: str | None = None,
              max_request_bytes: int = 16 * 2**20, ws_port: int | None = None, ws_host: str = "127.0.0.1") -> Any:
    """The Serve application (not yet running): `serve.run(build_app(...))`.

    The first policy that runs in Gauntlet's own environment is the app's ingress itself
    (`ingress.PolicyIngress`): its HTTP, WebSocket and gRPC requests join its batches in-process,
    with no second deployment hop. The other policies are plain replicas it reaches by handle; an
    app whose policies all need their own runtime_env gets a routes-only `Gateway` in front.
    `ws_port`: the ingress policy's replicas also serve openpi's WebSocket themselves on
    ws_host:ws_port (+ replica rank), without Serve's proxy in between (`direct_ws`).
    """
    from ray import serve

    from gauntlet.deployments.ingress import Gateway, PolicyIngress
    from gauntlet.deployments.policy_deployment import PolicyReplica

    names = [p.ref.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"each policy may be served once; got {names}")
    front = next((p for p in policies if _in_gauntlets_env(p)), None)
    others = {p.ref.name: _bind_policy(serve, PolicyReplica, p) for p in policies if p is not front}
    api_key = api_key or os.environ.get("GAUNTLET_API_KEY")
    if front is None:
        if ws_port:
            raise ValueError("ws_port: a direct WebSocket needs a policy that runs in Gauntlet's own environment")
        gateway = serve.deployment(Gateway, name="gateway", num_replicas=1, max_ongoing_requests=INGRESS_MAX_ONGOING,
                                   ray_actor_options={"num_cpus": 0})
        return gateway.bind(others, api_key=api_key, max_request_bytes=max_request_bytes)
    return _bind_policy(serve, PolicyIngress, front, max_ongoing_requests=INGRESS_MAX_ONGOING, others=others,
                        api_key=api_key, max_request_bytes=max_request_bytes, ws_port=ws_port or None, ws_host=ws_host)


def _in_gauntlets_env(p: PolicyServing) -> bool:
    """Whether the policy's replicas run Gauntlet's own Python environment (a runtime_env that only
    sets variables), so that they can also run the ingress code."""
    return not set(p.runtime_env or {}) - {"env_vars", "config"}


def _bind_policy(serve: Any, cls: type, p: PolicyServing, max_ongoing_requests: int = 0, **extra: Any) -> Any:
    from gauntlet.deployments.policy_deployment import REPLICA_ENV_VARS

    options = p.actor_options()
    env = dict(options.get("runtime_env") or {})  # Ray merges these env_vars with the job's, key by key
    env["env_vars"] = {**REPLICA_ENV_VARS, **env.get("env_vars", {})}
    deployment = serve.deployment(
        cls,
        name=deployment_name(p.ref.name),
        num_replicas=p.replicas,
        max_ongoing_requests=max(p.max_ongoing_requests, max_ongoing_requests),
        ray_actor_options={**options, "runtime_env": env},
        user_config={"max_batch_size": p.max_batch_size, "batch_wait_timeout_s": p.batch_wait_timeout_s,
                     "max_queued": p.max_queued},
        health_check_period_s=5,
        health_check_timeout_s=60,
    )
    return deployment.bind(
        policy=p.ref.name, checkpoint=p.ref.checkpoint, policy_kwargs=p.policy_kwargs,
        adapters_dir=p.adapters_dir, max_batch_size=p.max_batch_size,
        batch_wait_timeout_s=p.batch_wait_timeout_s, max_queued=p.max_queued, **extra,
    )


def start_serve(policies: list[PolicyServing], host: str = "127.0.0.1", http_port: int = 8000,
                grpc_port: int | None = 9000, api_key: str | None = None, blocking: bool = False,
                ws_port: int | None = None) -> Any:
    """Starts Serve's proxies (HTTP on host:http_port, gRPC on grpc_port) and deploys the app;
    `ws_port`: the first policy's replicas also serve openpi's WebSocket on host:ws_port themselves."""
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    grpc_options = gRPCOptions(port=grpc_port, grpc_servicer_functions=[GRPC_SERVICER]) if grpc_port else None
    serve.start(http_options=HTTPOptions(host=host, port=http_port), grpc_options=grpc_options)
    return serve.run(build_app(policies, api_key=api_key, ws_port=ws_port, ws_host=host), name=APP_NAME,
                     route_prefix="/", blocking=blocking)


def specs_from_names(policies: list[str], *, replicas: int = 1, max_batch_size: int = 32,
                     batch_wait_timeout_s: float = 0.005, vla_size: str = "tiny",
                     adapters_dir: str | None = None, num_gpus: float = 0.0, max_queued: int = 0) -> list[PolicyServing]:
    """`NAME[=CHECKPOINT]` strings -> serving specs (shared by `gauntlet serve` and config files)."""
    specs = []
    for text in policies:
        ref = PolicyRef.parse(str(text))
        kwargs = {"config_name": vla_size} if ref.name == "vla" and not ref.checkpoint else {}
        if ref.name == "lerobot" and num_gpus:
            kwargs = {"device": "cuda"}  # LeRobot places the model and its processors on this device
        ref = check_checkpoint(ref)  # a checkpoint that cannot fit the environment is refused before deploying
        specs.append(PolicyServing(ref=ref, replicas=replicas, max_batch_size=max_batch_size,
                                   batch_wait_timeout_s=batch_wait_timeout_s, num_gpus=num_gpus, max_queued=max_queued,
                                   policy_kwargs=kwargs, adapters_dir=adapters_dir if ref.name == "vla" else None,
                                   runtime_env=runtime_env_for(ref.name)))
    return specs


def app_from_args(args: dict[str, Any]) -> Any:
    """Builder for `serve run`/`serve deploy` config files (`applications[].args`)."""
    specs = specs_from_names(
        args.get("policies") or ["random"], replicas=int(args.get("replicas", 1)),
        max_batch_size=int(args.get("max_batch_size", 32)),
        batch_wait_timeout_s=float(args.get("batch_wait_timeout_s", 0.005)),
        vla_size=str(args.get("vla_size", "tiny")), adapters_dir=args.get("adapters_dir"),
        max_queued=int(args.get("max_queued", 0)),
    )
    return build_app(specs, api_key=args.get("api_key"), ws_port=int(args.get("ws_port", 0)) or None,
                     ws_host=str(args.get("ws_host", "127.0.0.1")))
