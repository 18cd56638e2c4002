"""Validation of one observation against a policy's `observation_spec`, before it joins a batch.

One malformed request must fail alone with a message that names the field, never poison the batch
it would have joined. JSON bodies arrive as nested lists, msgpack bodies as arrays; both end up as
arrays of the spec's dtype here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gauntlet.policies.base import EPISODE_ID_KEY, PROMPT_KEY, FieldSpec

MAX_PROMPT_CHARS = 2048
MAX_EPISODE_ID_CHARS = 256


class ObservationError(ValueError):
    """A request that does not match the policy's observation spec."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _shape_matches(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(actual) == len(expected) and all(e < 0 or a == e for a, e in zip(actual, expected, strict=True))


def validate_observation(obs: Any, spec: dict[str, FieldSpec]) -> dict[str, Any]:
    """A typed copy of `obs` holding the spec's keys, or ObservationError naming the bad field."""
    if not isinstance(obs, dict):
        raise ObservationError("<body>", f"expected an object of observation keys, got {type(obs).__name__}")
    missing = [k for k in spec if k not in obs]
    if missing:
        raise ObservationError(missing[0], f"missing (required keys: {sorted(spec)})")
    out: dict[str, Any] = {}
    for key, field in spec.items():
        value = obs[key]
        if field.dtype == "str":
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value.item()
            if not isinstance(value, str):
                raise ObservationError(key, f"expected a string, got {type(value).__name__}")
            if len(value) > MAX_PROMPT_CHARS:
                raise ObservationError(key, f"longer than {MAX_PROMPT_CHARS} characters")
            out[key] = value
            continue
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise ObservationError(key, f"not an array ({exc})") from None
        if arr.dtype.kind not in "biuf":
            raise ObservationError(key, f"expected numbers of dtype {field.dtype}, got dtype {arr.dtype}")
        if not _shape_matches(arr.shape, field.shape):
            raise ObservationError(key, f"expected shape {list(field.shape)}, got {list(arr.shape)}")
        target = np.dtype(field.dtype)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ObservationError(key, "contains NaN or inf")
        if target.kind in "ui":
            info = np.iinfo(target)
            if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
                raise ObservationError(key, f"expected integers ({field.dtype}), got fractional values")
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise ObservationError(key, f"values outside the {field.dtype} range [{info.min}, {info.max}]")
        out[key] = arr.astype(target, copy=False)
    if PROMPT_KEY in obs and PROMPT_KEY not in out and isinstance(obs[PROMPT_KEY], str):
        out[PROMPT_KEY] = obs[PROMPT_KEY][:MAX_PROMPT_CHARS]
    # Optional: recurrent policies key their per-episode memory by it (see bc_rnn/policy.py).
    if EPISODE_ID_KEY in obs:
        episode = obs[EPISODE_ID_KEY]
        if not isinstance(episode, str) or len(episode) > MAX_EPISODE_ID_CHARS:
            raise ObservationError(EPISODE_ID_KEY, f"expected a string of at most {MAX_EPISODE_ID_CHARS} characters")
        out[EPISODE_ID_KEY] = episode
    return out
