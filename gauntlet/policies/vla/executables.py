"""Bucketed batch sizes and the process-wide cache of ahead-of-time compiled VLA executables."""

from __future__ import annotations

from typing import Any

from gauntlet.policies.vla.config import VLAConfig

# Executables shared by every policy in the process with the same config: params are arguments,
# not constants, so two checkpoints of one architecture (or a reloaded one) reuse each other's
# compiles. Keyed by (config, variant, bucket).
SHARED_EXECUTABLES: dict[tuple[VLAConfig, str, int], Any] = {}


def clear_executable_cache() -> None:
    """Drop the process-wide executables (policies keep the ones they already hold)."""
    SHARED_EXECUTABLES.clear()


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below max_batch_size, then max_batch_size itself (never a bigger bucket)."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size: must be >= 1, got {max_batch_size}")
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)
