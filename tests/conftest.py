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

    from gauntlet.runtime.ray_session import worker_runtime_env

    env = worker_runtime_env()  # what every entry point's workers get (loopback gRPC, limits, MUJOCO_GL)
    env["env_vars"]["OMP_NUM_THREADS"] = "1"
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=TEST_RAY_CPUS, include_dashboard=False, log_to_driver=False,
                 runtime_env=env)
    yield ray
    ray.shutdown()
