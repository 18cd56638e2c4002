"""Shared test set-up: headless rendering, one Ray per test session, small real scene databases."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

# Logical CPUs for the test Ray: more than the 2 physical cores so that Serve replicas, rollout
# actors and Tune trials can coexist; the work itself is small.
TEST_RAY_CPUS = 4


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """Ray starts once per test session (starting it per test costs seconds each on 2 cores), hardened
    as every entry point's embedded Ray is: listeners on 127.0.0.1, token auth on. Its token lives in
    the session's temporary directory (not the developer's ~/.ray); `RAY_AUTH_TOKEN_PATH` and
    `RAY_AUTH_MODE` stay in the environment, so subprocesses that join it with RAY_ADDRESS authenticate."""
    import ray

    from gauntlet.runtime.ray_session import AUTH_TOKEN_PATH_ENV, init_local_ray, worker_runtime_env

    env = worker_runtime_env()  # what every entry point's workers get (loopback gRPC, limits, MUJOCO_GL)
    env["env_vars"]["OMP_NUM_THREADS"] = "1"
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault(AUTH_TOKEN_PATH_ENV, str(tmp_path_factory.mktemp("ray_auth") / "auth_token"))
        init_local_ray("tests", num_cpus=TEST_RAY_CPUS, runtime_env=env, log_to_driver=False)
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    yield ray
    ray.shutdown()
    if started:  # the LeRobot environments' venv clones (7-12 GB each), which Ray leaves behind
        shutil.rmtree(session_dir / "runtime_resources", ignore_errors=True)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]  # all bound at once, so the n ports are distinct
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="session")
def free_ports() -> Callable[[int], list[int]]:
    """`free_ports(n)`: n distinct TCP ports free on 127.0.0.1 now (for servers a test starts)."""
    return _free_ports


@pytest.fixture(scope="session")
def generate_scenes() -> Callable[..., Path]:
    """`generate_scenes(out, variants=..., error_types=..., workers=...)`: a lift scene DB via the CLI."""
    from gauntlet.platform.cli import main as cli

    def generate(out: Path, *, variants: str, error_types: str, workers: int = 2) -> Path:
        assert cli(["scenes", "generate", "--out", str(out), "--tasks", "lift", "--variants", variants,
                    "--error-types", error_types, "--workers", str(workers), "--no-validate"]) == 0
        return out

    return generate
