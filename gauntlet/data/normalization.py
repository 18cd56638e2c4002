"""Normalisation statistics for policy inputs and outputs, stored as JSON (never pickle).

Policies apply these inside `infer`: clients send raw states and receive raw-scale actions, so a
client never needs to know which statistics a checkpoint was trained with.

Two modes, as in openpi:
- "zscore":   (x - mean) / std
- "quantile": map [q01, q99] to [-1, 1] (robust to outliers such as a gripper that is almost
  always open; values outside the range are not clipped so unnormalise stays exact).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gauntlet.keys import ACTION_DIM, ACTIONS_KEY, STATE_DIM, STATE_KEY
from gauntlet.runtime.manifests import read_json, write_json

NORM_STATS_VERSION = 1
NormMode = Literal["zscore", "quantile"]
NORM_MODES: tuple[str, ...] = ("zscore", "quantile")

# A dimension that never varied in the data (std 0, q01 == q99: e.g. an unused gripper joint) gets
# unit scale instead of a tiny denominator: dividing by ~0 would turn any deviation at inference
# into a huge input, or inf/NaN that poisons the whole batch.
_EPS = 1e-6


class NormStatsError(ValueError):
    """Statistics that cannot be used: a bad file, a missing key, a wrong dimension."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = str(path) if path is not None else None
        self.message = message


@dataclass(frozen=True)
class FieldStats:
    """Per-dimension statistics of one key (each a (D,) float32 array)."""

    mean: np.ndarray  # (D,) mean
    std: np.ndarray  # (D,) standard deviation
    min: np.ndarray  # (D,) minimum
    max: np.ndarray  # (D,) maximum
    q01: np.ndarray  # (D,) 1st percentile
    q99: np.ndarray  # (D,) 99th percentile

    def __post_init__(self) -> None:
        dims = set()
        for name in ("mean", "std", "min", "max", "q01", "q99"):
            arr = np.asarray(getattr(self, name), dtype=np.float32).reshape(-1)
            if not np.all(np.isfinite(arr)):
                raise NormStatsError(f"{name}: contains NaN or inf")
            object.__setattr__(self, name, arr)
            dims.add(arr.shape[0])
        if len(dims) != 1:
            raise NormStatsError(f"statistics have different lengths {sorted(dims)}")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def compute(cls, values: np.ndarray) -> FieldStats:
        """Statistics over every leading axis of `values` (..., D)."""
        arr = np.asarray(values, dtype=np.float64)
        arr = arr.reshape(-1, arr.shape[-1])
        if arr.shape[0] == 0:
            raise NormStatsError("cannot compute statistics of zero samples")
        return cls(
            mean=arr.mean(0), std=arr.std(0), min=arr.min(0), max=arr.max(0),
            q01=np.quantile(arr, 0.01, axis=0), q99=np.quantile(arr, 0.99, axis=0),
        )

    @classmethod
    def identity(cls, dim: int) -> FieldStats:
        """Stats under which both modes are (close to) the identity on [-1, 1]."""
        zeros, ones = np.zeros(dim), np.ones(dim)
        return cls(mean=zeros, std=ones, min=-ones, max=ones, q01=-ones, q99=ones)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).astype(float).tolist() for k in ("mean", "std", "min", "max", "q01", "q99")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldStats:
        missing = [k for k in ("mean", "std", "min", "max", "q01", "q99") if k not in data]
        if missing:
            raise NormStatsError(f"missing statistics {missing}")
        return cls(**{k: np.asarray(data[k], dtype=np.float32) for k in ("mean", "std", "min", "max", "q01", "q99")})

    def _scale(self, mode: NormMode) -> np.ndarray:
        if mode == "zscore":
            return np.where(self.std < _EPS, 1.0, self.std).astype(np.float32)
        if mode == "quantile":
            span = self.q99 - self.q01
            return np.where(span < _EPS, 2.0, span).astype(np.float32)  # half-span 1: unit scale
        raise NormStatsError(f"mode: expected one of {NORM_MODES}, got {mode!r}")

    def normalize(self, x: np.ndarray, mode: NormMode) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if mode == "zscore":
            return (x - self.mean) / self._scale(mode)
        return 2.0 * (x - self.q01) / self._scale(mode) - 1.0

    def unnormalize(self, x: np.ndarray, mode: NormMode) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if mode == "zscore":
            return x * self._scale(mode) + self.mean
        return (x + 1.0) * 0.5 * self._scale(mode) + self.q01


@dataclass(frozen=True)
class NormStats:
    """Statistics per key: `observation/state` and `actions` (others allowed)."""

    fields: dict[str, FieldStats] = field(default_factory=dict)  # key -> per-dimension statistics

    def __getitem__(self, key: str) -> FieldStats:
        if key not in self.fields:
            raise NormStatsError(f"no statistics for {key!r} (have {sorted(self.fields)})")
        return self.fields[key]

    def __contains__(self, key: object) -> bool:
        return key in self.fields

    @classmethod
    def compute(cls, data: Mapping[str, np.ndarray]) -> NormStats:
        """e.g. `NormStats.compute({"observation/state": (N, 8), "actions": (N, H, 7)})`."""
        return cls({k: FieldStats.compute(v) for k, v in data.items()})

    @classmethod
    def identity(cls, state_dim: int = STATE_DIM, action_dim: int = ACTION_DIM) -> NormStats:
        return cls({STATE_KEY: FieldStats.identity(state_dim), ACTIONS_KEY: FieldStats.identity(action_dim)})

    def normalize(self, key: str, x: np.ndarray, mode: NormMode = "quantile") -> np.ndarray:
        return self[key].normalize(x, mode)

    def unnormalize(self, key: str, x: np.ndarray, mode: NormMode = "quantile") -> np.ndarray:
        return self[key].unnormalize(x, mode)

    def check_dims(self, dims: Mapping[str, int], path: str | Path | None = None) -> None:
        """Raise NormStatsError unless every key in `dims` is present with that dimension."""
        for key, dim in dims.items():
            if key not in self.fields:
                raise NormStatsError(f"no statistics for {key!r}", path)
            if self.fields[key].dim != dim:
                raise NormStatsError(f"{key!r} has dimension {self.fields[key].dim}, expected {dim}", path)

    def to_dict(self) -> dict[str, Any]:
        return {"version": NORM_STATS_VERSION, "norm_stats": {k: v.to_dict() for k, v in self.fields.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | Path | None = None) -> NormStats:
        if not isinstance(data, Mapping) or "norm_stats" not in data:
            raise NormStatsError("expected an object with a 'norm_stats' key", path)
        version = data.get("version", NORM_STATS_VERSION)
        if version != NORM_STATS_VERSION:
            raise NormStatsError(f"unsupported norm stats version {version} (this code reads {NORM_STATS_VERSION})", path)
        try:
            return cls({k: FieldStats.from_dict(v) for k, v in data["norm_stats"].items()})
        except NormStatsError as exc:
            raise NormStatsError(exc.message, path) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise NormStatsError(f"malformed statistics ({exc})", path) from None

    def save(self, path: str | Path) -> Path:
        """Writes the statistics as JSON, atomically (a reader never sees half a file)."""
        return write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        path = Path(path)
        data = read_json(path, "normalisation statistics", error=lambda p, problem: NormStatsError(problem, p))
        return cls.from_dict(data, path)

    def allclose(self, other: NormStats) -> bool:
        if set(self.fields) != set(other.fields):
            return False
        names = ("mean", "std", "min", "max", "q01", "q99")
        return all(
            np.allclose(getattr(self.fields[k], n), getattr(other.fields[k], n)) for k in self.fields for n in names
        )
