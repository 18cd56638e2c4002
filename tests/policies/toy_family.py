"""Toy policy families registered from outside the package, in this one place: a plugin module that
`GAUNTLET_POLICY_PLUGINS=tests.policies.toy_family` makes every process (CLI, Serve replicas, rollout
actors) import. Nothing else in the repository names them."""

from __future__ import annotations

from typing import Any

import numpy as np

from gauntlet.keys import ACTION_DIM, ACTIONS_KEY, STATE_KEY
from gauntlet.policies.base import PolicyMetadata, state_spec
from gauntlet.policies.registry import PolicyFamily, register_family

TOY = "toy"  # deployed on Serve by `gauntlet eval`, like any family that does not say otherwise
TOY_LOCAL = "toy_local"  # run in the rollout actors by default
GAIN = 0.5  # action = -GAIN * the state's first ACTION_DIM values: checkable from outside
CHUNK_LEN = 4


class ToyPolicy:
    """Stateless and batched: each row's action depends on its own state only."""

    def __init__(self, name: str = TOY, chunk_len: int = CHUNK_LEN):
        self.metadata = PolicyMetadata(name=name, version="1", action_dim=ACTION_DIM, chunk_len=chunk_len,
                                       observation_spec={STATE_KEY: state_spec()[STATE_KEY]})

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        action = -GAIN * np.asarray(batch[STATE_KEY], np.float32)[:, :ACTION_DIM]
        return {ACTIONS_KEY: np.repeat(action[:, None, :], self.metadata.chunk_len, axis=1)}

    def reset(self) -> None:
        pass


def build(checkpoint: str | None, **kwargs: Any) -> ToyPolicy:
    return ToyPolicy(TOY, **kwargs)


def build_local(checkpoint: str | None, **kwargs: Any) -> ToyPolicy:
    return ToyPolicy(TOY_LOCAL, **kwargs)


register_family(PolicyFamily(name=TOY, summary="toy linear policy from a plugin", factory=f"{__name__}:build"))
register_family(PolicyFamily(name=TOY_LOCAL, summary="toy linear policy run in the actors",
                             factory=f"{__name__}:build_local", local_by_default=True))
