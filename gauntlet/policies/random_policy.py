"""A policy that samples uniform actions: the floor every other policy must beat."""

from __future__ import annotations

import numpy as np

from gauntlet.keys import ACTION_DIM, ACTIONS_KEY, STATE_KEY
from gauntlet.policies.base import PolicyMetadata, state_spec


class RandomPolicy:
    def __init__(self, action_dim: int = ACTION_DIM, chunk_len: int = 8, seed: int = 0, scale: float = 1.0):
        self.metadata = PolicyMetadata(
            name="random", version="1", action_dim=action_dim, chunk_len=chunk_len,
            observation_spec={STATE_KEY: state_spec()[STATE_KEY]},
        )
        self._seed = seed
        self._scale = scale
        self._rng = np.random.default_rng(seed)

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b = int(np.asarray(batch[STATE_KEY]).shape[0])
        m = self.metadata
        actions = self._rng.uniform(-self._scale, self._scale, size=(b, m.chunk_len, m.action_dim))
        return {ACTIONS_KEY: actions.astype(np.float32)}

    def reset(self) -> None:
        self._rng = np.random.default_rng(self._seed)
