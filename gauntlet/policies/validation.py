"""Validation of one observation against a policy's `observation_spec`, before it joins a batch.

One malformed request must fail alone with a message that names the field, never poison the batch
it would have joined. JSON bodies arrive as nested lists, msgpack bodies as arrays; both end up as
arrays of the spec's dtype here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gauntlet.keys import EPISODE_ID_KEY, PROMPT_KEY, TASK_KEY
from gauntlet.policies.base import FieldSpec

MAX_PROMPT_CHARS = 2048
MAX_EPISODE_ID_CHARS = 256
MAX_STATE_ENTRIES = 512
MAX_STATE_ELEMENTS = 100_000


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
        if field.dtype == "state_dict":
            out[key] = _validate_state_dict(key, value)
            continue
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
    # Optional strings: recurrent policies key per-episode memory by `episode_id` (bc_rnn, scripted);
    # `task` names the task where the prompt does not.
    for key in (EPISODE_ID_KEY, TASK_KEY):
        if key in obs and key not in out:
            value = obs[key]
            if not isinstance(value, str) or len(value) > MAX_EPISODE_ID_CHARS:
                raise ObservationError(key, f"expected a string of at most {MAX_EPISODE_ID_CHARS} characters")
            out[key] = value
    return out


def _validate_state_dict(key: str, value: Any) -> dict[str, np.ndarray]:
    """A simulator state map {name: array} (the scripted oracle's privileged input)."""
    if not isinstance(value, dict) or not value:
        raise ObservationError(key, "expected a non-empty map of arrays (GauntletEnv.get_state())")
    if len(value) > MAX_STATE_ENTRIES:
        raise ObservationError(key, f"more than {MAX_STATE_ENTRIES} entries")
    out: dict[str, np.ndarray] = {}
    total = 0
    for name, arr in value.items():
        if not isinstance(name, str):
            raise ObservationError(key, f"entry names must be strings, got {type(name).__name__}")
        try:
            a = np.asarray(arr)
        except (ValueError, TypeError) as exc:
            raise ObservationError(f"{key}/{name}", f"not an array ({exc})") from None
        if a.dtype.kind not in "biufU":
            raise ObservationError(f"{key}/{name}", f"dtype {a.dtype} is not allowed")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ObservationError(f"{key}/{name}", "contains NaN or inf")
        total += a.size
        out[name] = a
    if total > MAX_STATE_ELEMENTS:
        raise ObservationError(key, f"{total} values exceed the limit of {MAX_STATE_ELEMENTS}")
    return out
