"""The Ray runtime environment LeRobot replicas run in, one per LeRobot release.

Each LeRobot replica gets its own virtualenv from Ray's per-deployment `runtime_env`: Ray builds it
on every node that hosts a replica (so a multi-node cluster needs nothing installed by hand), caches
it per runtime_env hash for the Ray session, and clones Gauntlet's venv first, so Gauntlet itself
(and Ray) stay importable inside it. Gauntlet's own torch (2.11) is one lerobot 0.6.1 accepts, so the
default environment keeps it; an older release that pins another torch (0.4.x: `torch<2.11`) makes uv
install that torch into its clone.

The installer is uv (Ray's `uv` runtime_env plugin) with its cache on: the first start downloads the
wheels once per machine, later Ray sessions link them from the cache in seconds.
"""

from __future__ import annotations

import os
from typing import Any

LEROBOT_VERSION = "0.6.1"  # the default release (`lerobot=DIR`); `lerobot@RELEASE=DIR` picks another
# Releases this adapter was tested against, newest first: what a config check suggests instead.
TESTED_RELEASES = ("0.6.1", "0.4.4")
# Extra requirements, space separated (e.g. "lerobot[smolvla]==0.6.1" pulls transformers for the
# language policies); they replace the release's own requirement. A pinned torch wheel index for a
# CUDA version goes in GAUNTLET_LEROBOT_UV_OPTIONS.
REQUIREMENTS_ENV = "GAUNTLET_LEROBOT_REQUIREMENTS"
UV_OPTIONS_ENV = "GAUNTLET_LEROBOT_UV_OPTIONS"  # extra `uv pip install` options, space separated
# Threads per replica for torch: replicas share cores with rollout actors; one batched call per
# batch is the parallelism that matters.
TORCH_THREADS_ENV = "GAUNTLET_LEROBOT_TORCH_THREADS"
# From 0.5 on, LeRobotDataset (Gauntlet's export is checked with it), Diffusion's `diffusers` and the
# language families' `transformers` (pi0, pi0.5, SmolVLA) are extras; one environment holds them all so
# that `lerobot=DIR` serves any family. 0.4.x installs the first two with the package and has no
# installable `[pi]`.
EXTRAS_SINCE = ((0, 5), "[dataset,diffusion,pi,smolvla]")

# lerobot 0.4.x's dependencies (wandb) cap protobuf below 7, and uv downgrades the clone's protobuf to
# 6.x; Ray Serve imports grpc_reflection in every replica, and the grpcio-reflection Gauntlet's venv has
# was generated for protobuf 7 (VersionError at import). 1.76 is the newest generated for protobuf 6.
# 0.5+ no longer depends on wandb (only its `[training]` extra does).
PROTOBUF_COMPAT = ["protobuf>=6.31,<7", "grpcio-reflection>=1.73,<1.77"]


def _before_0_5(release: str) -> bool:
    numbers = [int(part) for part in release.split(".")[:2] if part.isdigit()]
    return tuple(numbers) < EXTRAS_SINCE[0]


def requirements(release: str | None = None) -> list[str]:
    """What the replica's virtualenv installs on top of a clone of Gauntlet's venv."""
    release = release or LEROBOT_VERSION
    extra = os.environ.get(REQUIREMENTS_ENV, "").split()
    if _before_0_5(release):
        return (extra or [f"lerobot=={release}"]) + PROTOBUF_COMPAT
    return extra or [f"lerobot{EXTRAS_SINCE[1]}=={release}"]


def runtime_env(release: str | None = None) -> dict[str, Any]:
    """The `runtime_env` of a LeRobot deployment (and of any task that must import LeRobot) running
    `release` (None: LEROBOT_VERSION)."""
    options = os.environ.get(UV_OPTIONS_ENV, "").split()
    # An empty option list keeps uv's cache on (Ray's default passes --no-cache).
    env: dict[str, Any] = {"uv": {"packages": requirements(release), "uv_pip_install_options": options}}
    env["env_vars"] = {"OMP_NUM_THREADS": os.environ.get(TORCH_THREADS_ENV, "1"),
                       # LeRobot must never reach a model hub from a replica: the directory is local.
                       "HF_HUB_OFFLINE": "1"}
    # The first start on a machine may download torch and its CUDA libraries (GBs): Ray's default
    # 10 min setup timeout is too short on a slow link.
    env["config"] = {"setup_timeout_seconds": 1800}
    return env
