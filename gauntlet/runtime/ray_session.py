"""Starting or joining Ray, the same way for every entry point.

`RAY_ADDRESS` set: join that cluster. Unset: start an embedded local Ray with `address="local"`, so a
stray cluster that a `ray start` left on this machine is never joined by accident. Every worker gets
the loopback gRPC hook (Serve 2.60's gRPC proxy has no host option) and `MUJOCO_GL`, so an actor
that renders works the same whichever entry point started the cluster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_MUJOCO_GL = "egl"  # CPU rendering through Mesa; a GPU machine may set MUJOCO_GL itself


def worker_runtime_env(serve_host: str = "127.0.0.1") -> dict[str, Any]:
    """The runtime_env every Gauntlet job runs its workers with."""
    from gauntlet.deployments.grpc_bind import runtime_env

    env = runtime_env(serve_host)
    env["env_vars"]["MUJOCO_GL"] = os.environ.get("MUJOCO_GL", DEFAULT_MUJOCO_GL)
    return env


def start_ray(label: str, *, num_cpus: int | None = None, serve_host: str = "127.0.0.1",
              log_to_driver: bool = True) -> bool:
    """Joins `RAY_ADDRESS` or starts an embedded local Ray; True when this call connected (so the
    caller shuts it down), False when Ray was already up in this process (a test session, a demo).

    `num_cpus` sizes an embedded Ray only (a joined cluster has its own); `label` prefixes the log line.
    """
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    env = worker_runtime_env(serve_host)
    if address:
        print(f"[{label}] connecting to Ray at {address}", file=sys.stderr, flush=True)
        ray.init(address=address, runtime_env=env, log_to_driver=log_to_driver)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=env,
                 log_to_driver=log_to_driver)
    return True


@contextmanager
def ray_session(label: str, **kwargs: Any) -> Iterator[bool]:
    """`start_ray` for the length of a `with` block; shuts down only a Ray this block started."""
    import ray

    started = start_ray(label, **kwargs)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
