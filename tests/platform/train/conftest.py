"""Fixtures of the training tests: a small learnable dataset and a TrainConfig sized for a test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gauntlet.data.dataset_format import DatasetWriter
from gauntlet.data.stats import main as stats_main
from gauntlet.platform.train.config import TrainConfig
from gauntlet.policies.vla.config import get_config

IMAGE_SIZE = get_config("tiny").image_size  # the tiny VLA's: its tests train on these images


def _write_demo_dataset(root: Path, *, episodes: int = 4, length: int = 24, action_dim: int = 7, seed: int = 0,
                       nan_at: tuple[int, int] | None = None, stats: bool = True) -> Path:
    """A small dataset whose actions are a fixed function of the state (learnable), with images."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, action_dim)).astype(np.float32) * 0.5
    names = None if action_dim == 7 else [f"a{i}" for i in range(action_dim)]
    with DatasetWriter(root, source={"kind": "test"}, action_dim=action_dim, action_names=names) as writer:
        for ep in range(episodes):
            states = rng.normal(size=(length, 8)).astype(np.float32)
            actions = np.tanh(states @ w).astype(np.float32)
            images = {cam: rng.integers(0, 256, size=(length, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
                      for cam in ("agentview", "wrist")}
            writer.add_episode(states, actions, task="lift", variant="D0", prompt="pick up the red cube",
                               success=True, images=images, split="train", seed=ep)
    if nan_at is not None:
        # The writer refuses NaN; a dataset from elsewhere may still hold one on disk.
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = root / "data" / "chunk-000" / f"episode_{nan_at[0]:06d}.parquet"
        table = pq.read_table(path)
        col = table.column("observation.state").to_pylist()
        col[nan_at[1]][2] = float("nan")
        idx = table.schema.get_field_index("observation.state")
        table = table.set_column(idx, table.schema.field(idx), pa.array(col, type=table.schema.field(idx).type))
        pq.write_table(table, path)
    if stats:
        assert stats_main([str(root)]) == 0
    return root


def _train_config(dataset: Path, out: Path, **kw: Any) -> TrainConfig:
    """A TrainConfig sized for a test (small batches, a few steps, one loader worker); `kw` overrides."""
    base = dict(dataset=str(dataset), out=str(out), batch_size=8, steps=4, checkpoint_every=2, log_every=1,
                warmup_steps=2, cpus_per_worker=0.5, loader_workers=1, decode_workers=1, prefetch_depth=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def write_demo_dataset() -> Callable[..., Path]:
    """`write_demo_dataset(root, *, episodes=4, length=24, action_dim=7, seed=0, nan_at=None, stats=True)`."""
    return _write_demo_dataset


@pytest.fixture(scope="session")
def train_config() -> Callable[..., TrainConfig]:
    """`train_config(dataset, out, **overrides)`."""
    return _train_config
