"""Shared test set-up: headless rendering, one Ray per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

# Logical CPUs for the test Ray: more than the 2 physical cores so that Serve replicas, rollout
# actors and Tune trials can coexist; the work itself is small.
TEST_RAY_CPUS = 4


@pytest.fixture(scope="session")
def ray_session():
    """Ray starts once per test session (starting it per test costs seconds each on 2 cores)."""
    import ray

    from gauntlet.deployments.grpc_bind import runtime_env

    env = runtime_env("127.0.0.1")  # keeps Serve's gRPC proxy on loopback, as `gauntlet serve` does
    env["env_vars"].update({"MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"})
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=TEST_RAY_CPUS, include_dashboard=False, log_to_driver=False,
                 runtime_env=env)
    yield ray
    ray.shutdown()
