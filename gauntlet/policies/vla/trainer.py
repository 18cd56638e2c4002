"""VLATrainer: in-process training of a VLAPolicy (LoRA or full) without Ray, for notebooks and tests.

`gauntlet train` does not use it: its workers run the shared loop in `gauntlet.platform.train`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import optax

from gauntlet.data.normalization import NormStats
from gauntlet.policies.vla import lora as lora_lib
from gauntlet.policies.vla.policy import Tree, VLAPolicy
from gauntlet.policies.vla.train import TrainMode, init_train_state, make_loss_step


class VLATrainer:
    """Owns a TrainState; `step(raw_batch)` normalises with the trainer's stats and updates."""

    def __init__(self, policy: VLAPolicy, mode: TrainMode, optimizer: optax.GradientTransformation,
                 variables: Tree, norm_stats: NormStats):
        self.policy = policy
        self.mode = mode
        self.norm_stats = norm_stats
        self.state = init_train_state(variables, mode, optimizer)
        self._step = make_loss_step(policy.train_loss, optimizer)

    def step(self, batch: Mapping[str, Any], rng: np.random.Generator | int | None = None) -> dict[str, float]:
        """One optimizer step on a raw batch (with `actions`); rng seeds noise and t (default: the step)."""
        x = self.policy.prepare_train_batch(batch, int(self.state.step) if rng is None else rng, self.norm_stats)
        self.state, metrics = self._step(self.state, x)
        return {k: float(v) for k, v in metrics.items()}

    @property
    def variables(self) -> Tree:
        return {**self.state.frozen, **self.state.trainable}

    @property
    def adapter_params(self) -> Tree:
        if self.mode != "lora":
            raise ValueError("adapter_params: only in mode='lora'")
        return self.state.trainable["lora"]

    @property
    def trainable_param_count(self) -> int:
        return lora_lib.count_params(self.state.trainable)

    def loss(self, batch: Mapping[str, Any], rng: np.random.Generator | int = 0) -> float:
        return self.policy.loss(self.variables, batch, rng, self.norm_stats)
