"""The Ray runtime environment LeRobot replicas run in.

lerobot 0.4.x pins `torch<2.11` (and imports a `torchvision` built for that torch); Gauntlet runs on
its own torch. Rather than bend Gauntlet's stack, each LeRobot replica gets its own virtualenv from
Ray's per-deployment `runtime_env`: Ray builds it on every node that hosts a replica (so a multi-node
cluster needs nothing installed by hand), caches it per runtime_env hash for the Ray session, and
clones Gauntlet's venv first, so Gauntlet itself (and Ray) stay importable inside it.

The installer is uv (Ray's `uv` runtime_env plugin) with its cache on: the first start downloads the
wheels once per machine, later Ray sessions link them from the cache in seconds.
"""

from __future__ import annotations

import os
from typing import Any

LEROBOT_VERSION = "0.4.4"  # the release this adapter was written and tested against (Python 3.11)
# Extra requirements, space separated (e.g. "lerobot[smolvla]==0.4.4" pulls transformers for the
# language policies; a pinned torch wheel index for a CUDA version goes in GAUNTLET_LEROBOT_UV_OPTIONS).
REQUIREMENTS_ENV = "GAUNTLET_LEROBOT_REQUIREMENTS"
UV_OPTIONS_ENV = "GAUNTLET_LEROBOT_UV_OPTIONS"  # extra `uv pip install` options, space separated
# Threads per replica for torch: replicas share cores with rollout actors; one batched call per
# batch is the parallelism that matters.
TORCH_THREADS_ENV = "GAUNTLET_LEROBOT_TORCH_THREADS"


# lerobot's dependencies (wandb) cap protobuf below 7, and uv downgrades the clone's protobuf to 6.x;
# Ray Serve imports grpc_reflection in every replica, and the grpcio-reflection Gauntlet's venv has was
# generated for protobuf 7 (VersionError at import). 1.76 is the newest generated for protobuf 6.
PROTOBUF_COMPAT = ["protobuf>=6.31,<7", "grpcio-reflection>=1.73,<1.77"]


def requirements() -> list[str]:
    """What the replica's virtualenv installs on top of a clone of Gauntlet's venv."""
    extra = os.environ.get(REQUIREMENTS_ENV, "").split()
    return (extra or [f"lerobot=={LEROBOT_VERSION}"]) + PROTOBUF_COMPAT


def runtime_env() -> dict[str, Any]:
    """The `runtime_env` of a LeRobot deployment (and of any task that must import LeRobot)."""
    options = os.environ.get(UV_OPTIONS_ENV, "").split()
    # An empty option list keeps uv's cache on (Ray's default passes --no-cache).
    env: dict[str, Any] = {"uv": {"packages": requirements(), "uv_pip_install_options": options}}
    env["env_vars"] = {"OMP_NUM_THREADS": os.environ.get(TORCH_THREADS_ENV, "1"),
                       # LeRobot must never reach a model hub from a replica: the directory is local.
                       "HF_HUB_OFFLINE": "1"}
    # The first start on a machine downloads torch and its CUDA libraries (GBs): Ray's default 10 min
    # setup timeout is too short on a slow link.
    env["config"] = {"setup_timeout_seconds": 1800}
    return env
