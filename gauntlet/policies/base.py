"""The Policy contract: everything that serves or evaluates a policy talks to this and nothing else.

A policy is batched by construction: `infer` takes a dict of arrays with a leading batch dimension
(`prompt` as a (B,) string array) and returns at least `{"actions": (B, H, D)}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from gauntlet.keys import (
    IMAGE_KEY,
    OBJECT_STATE_KEY,
    OPTIONAL_STR_KEYS,
    PROMPT_KEY,
    STATE_DIM,
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldSpec:
        """The inverse of `to_dict`; a missing dtype means float32 (what openpi servers send)."""
        return cls(tuple(int(s) for s in data["shape"]), str(data.get("dtype", "float32")))

    @property
    def is_image(self) -> bool:
        return self.dtype == "uint8" and len(self.shape) == 3


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
    # Whether it keeps memory per `episode_id` across calls (recurrent state, a scripted expert's
    # timers): an episode's requests must then all reach the replica that holds it, and each answer
    # carries EPISODE_CALLS_KEY so that a client sees when that memory was lost.
    episode_memory: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # free-form (e.g. adapters, sizes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["observation_spec"] = {k: v.to_dict() for k, v in self.observation_spec.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, default_name: str = "", default_version: str = "",
                  default_needs_images: bool = False) -> PolicyMetadata:
        """The inverse of `to_dict`, tolerant of what other servers send: missing fields take the
        defaults given, and spec entries without a shape are dropped."""
        spec = {str(k): FieldSpec.from_dict(v) for k, v in (data.get("observation_spec") or {}).items()
                if isinstance(v, dict) and "shape" in v}
        return cls(
            name=str(data.get("name") or default_name), version=str(data.get("version") or default_version),
            action_dim=int(data.get("action_dim") or 0), chunk_len=int(data.get("chunk_len") or 0),
            observation_spec=spec, needs_images=bool(data.get("needs_images", default_needs_images)),
            privileged=bool(data.get("privileged", False)), episode_memory=bool(data.get("episode_memory", False)),
            extra=dict(data.get("extra") or {}),
        )


@runtime_checkable
class Policy(Protocol):
    metadata: PolicyMetadata

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batched inference: inputs with leading dim B -> {"actions": (B, H, D), ...}."""
        ...

    def reset(self) -> None:
        """Clears any per-episode state (most policies have none)."""
        ...


# ---------------------------------------------------------------------------------------------
# Serving: optional abilities the replica uses when a policy has them (checked with isinstance).


@runtime_checkable
class WarmsUp(Protocol):
    """Compiles ahead of traffic, so that no request waits on a compile (JAX policies)."""

    def warmup(self, max_batch_size: int | None = None) -> Any:
        """Compiles every batch bucket up to `max_batch_size`."""
        ...


@runtime_checkable
class ServesAdapters(Protocol):
    """Serves LoRA adapters by name on one base: `infer(batch, adapter=name)` once loaded."""

    def load_adapter(self, name: str, adapter_dir: Any) -> None:
        """Loads the adapter checkpoint in `adapter_dir` under `name`."""
        ...

    def remove_adapter(self, name: str) -> None:
        """Unloads `name` (no error when it is not loaded)."""
        ...


@runtime_checkable
class CountsCompiles(Protocol):
    """Says how many executables it has compiled: flat after start-up means no request waited on one."""

    @property
    def compile_count(self) -> int: ...


def state_spec(privileged: bool = False, object_state_dim: int | None = None) -> dict[str, FieldSpec]:
    spec = {STATE_KEY: FieldSpec((STATE_DIM,), "float32"), PROMPT_KEY: FieldSpec((), "str")}
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


# ---------------------------------------------------------------------------------------------
# Training: optional abilities of the policy families `gauntlet train` can fine-tune.

ConfigT = TypeVar("ConfigT", bound="ModelConfig")


class ModelConfig(Protocol):
    """A policy family's model configuration as training and checkpoints see it: a frozen dataclass
    that round-trips through JSON and says which of its fields define the weights.

    Families subclass it explicitly to inherit the four methods (one definition for every family).
    """

    non_architecture_fields: ClassVar[tuple[str, ...]]  # left out of fingerprints (e.g. serving knobs)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples as lists)."""
        body = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in body.items()}

    def architecture_dict(self) -> dict[str, Any]:
        """The fields that define the parameters and the function (what a fingerprint covers)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.non_architecture_fields}

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
        """The inverse of `to_dict`; an unknown field is refused by name (a newer or foreign config)."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown {cls.__name__} field (known: {sorted(known)})")
        return cls(**data)

    def replace(self: ConfigT, **changes: Any) -> ConfigT:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@runtime_checkable
class TrainablePolicy(Protocol):
    """Optional ability: a policy `gauntlet train` can fine-tune.

    As a LeRobot policy's `forward()` returns its loss, the policy owns what one step computes (batch
    preparation and loss); the platform owns the loop, the optimizer, distribution and checkpoints.
    """

    def train_weights(self, mode: str, seed: int) -> Any:
        """What a step differentiates: the JAX variable tree (mode "lora" adds a fresh adapter drawn
        from `seed`) or the torch module."""
        ...

    def prepare_train_batch(self, batch: Mapping[str, Any], rng: np.random.Generator | int,
                            norm_stats: Any = None) -> dict[str, np.ndarray]:
        """A raw batch in dataset units -> model inputs (normalised), every random draw from `rng`."""
        ...

    def train_loss(self, weights: Any, batch: Mapping[str, Any]) -> Any:
        """The scalar loss of a prepared batch (framework arrays), differentiable in `weights`."""
        ...


def masked_chunk_mse(pred: Any, target: Any, valid: Any = None) -> Any:
    """Mean squared error over the real positions of action chunks, for NumPy, JAX and torch alike.

    pred/target (..., L, D); valid (..., L) 1.0 for a real action, 0.0 for padding past an episode's
    end (`action_is_pad`). Padding repeats the last action and says nothing about what to do next, so
    it is left out of the mean rather than learned; no valid position at all gives 0.
    """
    sq = (pred - target) ** 2
    if valid is None:
        return sq.mean()
    count = valid.sum() * sq.shape[-1]
    return (sq * valid[..., None]).sum() / count.clip(min=1.0)
