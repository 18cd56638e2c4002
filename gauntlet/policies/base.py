"""The Policy contract: everything that serves or evaluates a policy talks to this and nothing else.

A policy is batched by construction: `infer` takes a dict of arrays with a leading batch dimension
(`prompt` as a (B,) string array) and returns at least `{"actions": (B, H, D)}`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gauntlet.keys import (
    IMAGE_KEY,
    OBJECT_STATE_KEY,
    OPTIONAL_STR_KEYS,
    PROMPT_KEY,
    STATE_KEY,
    WRIST_IMAGE_KEY,
)


@dataclass(frozen=True)
class FieldSpec:
    """Shape (without the batch dimension) and dtype of one observation key."""

    shape: tuple[int, ...]  # e.g. (8,) for the proprio state, (H, W, 3) for an image
    dtype: str  # NumPy dtype name: "float32", "uint8", "str"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class PolicyMetadata:
    """What a client needs to know to talk to a policy."""

    name: str  # registry name, e.g. "vla"
    version: str  # model/checkpoint version string
    action_dim: int  # D
    chunk_len: int  # H: actions returned per request
    observation_spec: dict[str, FieldSpec] = field(default_factory=dict)  # required keys
    needs_images: bool = False  # whether clients must render cameras for it
    privileged: bool = False  # whether it reads `observation/object_state`
    extra: dict[str, Any] = field(default_factory=dict)  # free-form (e.g. adapters, sizes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["observation_spec"] = {k: v.to_dict() for k, v in self.observation_spec.items()}
        return out


@runtime_checkable
class Policy(Protocol):
    metadata: PolicyMetadata

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batched inference: inputs with leading dim B -> {"actions": (B, H, D), ...}."""
        ...

    def reset(self) -> None:
        """Clears any per-episode state (most policies have none)."""
        ...


def state_spec(privileged: bool = False, object_state_dim: int | None = None) -> dict[str, FieldSpec]:
    spec = {STATE_KEY: FieldSpec((8,), "float32"), PROMPT_KEY: FieldSpec((), "str")}
    if privileged:
        spec[OBJECT_STATE_KEY] = FieldSpec((object_state_dim if object_state_dim else -1,), "float32")
    return spec


def image_spec(image_size: int, wrist: bool = True) -> dict[str, FieldSpec]:
    spec = {IMAGE_KEY: FieldSpec((image_size, image_size, 3), "uint8")}
    if wrist:
        spec[WRIST_IMAGE_KEY] = FieldSpec((image_size, image_size, 3), "uint8")
    return spec


def stack_observations(observations: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A list of single observations -> one batch (leading dim B). Keys must agree."""
    if not observations:
        raise ValueError("cannot stack an empty list of observations")
    keys = list(dict.fromkeys(k for obs in observations for k in obs))
    batch: dict[str, np.ndarray] = {}
    for key in keys:
        if isinstance(observations[0].get(key), dict):
            batch[key] = [obs[key] for obs in observations]  # maps (e.g. sim states) stay a list
        elif key in OPTIONAL_STR_KEYS:
            # A request without the key gets "" (no prompt / stateless) rather than failing its batch.
            batch[key] = np.array([str(obs.get(key, "")) for obs in observations])
        else:
            batch[key] = np.array([obs[key] for obs in observations])
    return batch
