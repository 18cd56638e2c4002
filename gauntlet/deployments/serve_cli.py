"""`gauntlet serve`: policies on Ray Serve behind HTTP, gRPC and openpi WebSocket endpoints."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from gauntlet.deployments.auth import resolve_api_key
from gauntlet.deployments.batcher import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_BATCH_SIZE,
    MIN_QUEUED,
    QUEUED_BATCHES,
    check_limits,
)
from gauntlet.deployments.ws_guard import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_SESSIONS,
    INGRESS_OTHER_SLOTS,
    WebSocketPolicy,
)
from gauntlet.policies.registry import families_help
from gauntlet.policies.vla.config import DEFAULT_PRESET
from gauntlet.runtime.config_args import option, parse_config, require_at_least, run_command


@dataclass(frozen=True)
class ServeCLIConfig:
    """Serves one or more policies until interrupted (uses RAY_ADDRESS if set, else a local Ray)."""

    policy: tuple[str, ...] = option(help=lambda: f"NAME[=CHECKPOINT], repeatable; NAME one of: {families_help()}")
    host: str = option("127.0.0.1", help="HTTP bind address (use 0.0.0.0 only on a trusted network)")
    http_port: int = option(8000, help="HTTP/WebSocket port")
    grpc_port: int = option(9000, help="gRPC port (0 disables gRPC)")
    ws_port: int = option(0, help="also serve openpi's WebSocket from the first policy's replica itself on this port "
                                  "(replica i: port + i), skipping Serve's proxy: what openpi clients should use "
                                  "for speed (0: only ws://HOST:HTTP_PORT/v1/policies/NAME/ws); a port that is "
                                  "taken fails the start, naming it")
    ws_max_sessions: int = option(DEFAULT_MAX_SESSIONS, help="open WebSocket sessions per replica on the proxied "
                                  "route, and per direct port; more are refused at the handshake (HTTP 503). Each "
                                  "proxied one holds an ingress request slot; HTTP, gRPC and handle callers keep "
                                  f"{INGRESS_OTHER_SLOTS} slots besides")
    ws_idle_timeout_s: float = option(DEFAULT_IDLE_TIMEOUT_S, help="close a WebSocket session that sends nothing "
                                      "for this long (close code 1008)")
    ws_allowed_origins: tuple[str, ...] = option((), help="browser Origins (scheme://host[:port]) allowed to open "
                                                 "WebSockets besides same-origin pages; a handshake from any other "
                                                 "Origin is refused (403). Clients that send no Origin (openpi's) "
                                                 "are not affected")
    max_batch_size: int = option(DEFAULT_MAX_BATCH_SIZE, help="largest batch one replica runs")
    batch_wait_timeout_s: float = option(DEFAULT_BATCH_WAIT_S, help="how long a partial batch waits for more "
                                         "requests while requests overlap (a lone request never waits)")
    max_queued: int = option(0, help="requests a replica queues behind its running batch; more are answered HTTP 503 "
                                     f"/ gRPC UNAVAILABLE at once (0: {QUEUED_BATCHES} batches' worth, at least "
                                     f"{MIN_QUEUED})")
    replicas: int = option(1, help="replicas per policy")
    num_gpus: float = option(0.0, help="GPUs per replica")
    vla_size: str = option(DEFAULT_PRESET, help="VLA preset when no checkpoint is given")
    adapters_dir: str | None = option(None, help=lambda: "directory of LoRA adapters served by name (for "
                                      f"{families_help(lambda f: f.serves_adapters, summaries=False)})")
    api_key: str | None = option(None, help="require `Authorization: Api-Key KEY` on every protocol; visible in the "
                                            "process list, so prefer --api-key-file or GAUNTLET_API_KEY")
    api_key_file: str | None = option(None, help="read the API key from this file's first line")

    def __post_init__(self) -> None:
        if not self.policy:
            raise ValueError("policy: name at least one policy")
        require_at_least(self, 1, "max_batch_size", "replicas")
        check_limits(self.max_batch_size, self.batch_wait_timeout_s, self.max_queued)
        if not 0 <= self.ws_port <= 65535:
            raise ValueError(f"ws_port: expected a port in [0, 65535], got {self.ws_port}")
        self.ws_policy()  # the WebSocket settings are checked here, before anything starts

    def ws_policy(self) -> WebSocketPolicy:
        return WebSocketPolicy(max_sessions=self.ws_max_sessions, idle_timeout_s=self.ws_idle_timeout_s,
                               allowed_origins=self.ws_allowed_origins, serving_host=self.host)


def serving_specs(cfg: ServeCLIConfig) -> list:
    """The deployment specs of `--policy` (raises ValueError for a policy that cannot be served)."""
    from gauntlet.deployments.app import specs_from_names

    return specs_from_names(list(cfg.policy), replicas=cfg.replicas, max_batch_size=cfg.max_batch_size,
                            batch_wait_timeout_s=cfg.batch_wait_timeout_s, vla_size=cfg.vla_size,
                            adapters_dir=cfg.adapters_dir, num_gpus=cfg.num_gpus, max_queued=cfg.max_queued)


def serve_until_interrupted(cfg: ServeCLIConfig) -> int:
    """Starts (or joins) Ray, deploys the policies and blocks until Ctrl-C."""
    specs = serving_specs(cfg)  # a bad --policy fails here, before Ray starts
    api_key = resolve_api_key(cfg.api_key, cfg.api_key_file)  # and an unreadable key file
    from gauntlet.deployments.app import start_serve
    from gauntlet.runtime.ray_session import start_ray

    start_ray("serve", serve_host=cfg.host)
    start_serve(specs, host=cfg.host, http_port=cfg.http_port, grpc_port=cfg.grpc_port or None,
                api_key=api_key, ws_port=cfg.ws_port or None, ws_policy=cfg.ws_policy())
    names = ", ".join(s.ref.name for s in specs)
    message = (f"[serve] serving {names}: http://{cfg.host}:{cfg.http_port}/v1/policies/NAME/infer, "
               f"ws://{cfg.host}:{cfg.http_port}/v1/policies/NAME/ws"
               + (f", gRPC :{cfg.grpc_port}" if cfg.grpc_port else "")
               + (f", openpi WebSocket ws://{cfg.host}:{cfg.ws_port} (the first policy in Gauntlet's env)" if cfg.ws_port else ""))
    print(message, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    from gauntlet.deployments.app import DeployFailed

    cfg = parse_config(ServeCLIConfig, argv, prog="gauntlet serve", description=ServeCLIConfig.__doc__)
    # ValueError: a policy name or checkpoint that cannot be served (UnknownNameError, ...);
    # DeployFailed: Serve could not start the app (e.g. a --ws-port that another process holds).
    return run_command("gauntlet serve", lambda: serve_until_interrupted(cfg), {ValueError: 2, DeployFailed: 1})


if __name__ == "__main__":
    sys.exit(main())
