"""Validation of one observation against a policy's `observation_spec`, before it joins a batch.

One malformed request must fail alone with a message that names the field, never poison the batch
it would have joined. JSON bodies arrive as nested lists, msgpack bodies as arrays; both end up as
arrays of the spec's dtype here. Checks run on the values the policy will see: a finite float64 such
as 1e300 becomes inf in float32, so the range of the target dtype is checked before the cast.
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
# Simulator states are positions, velocities and counters; anything this large is not a state, and
# MuJoCo would turn it into inf/NaN mid-step rather than reject it.
MAX_STATE_ABS = 1e9


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
        out[key] = _validate_array(key, value, field)
    if PROMPT_KEY in obs and PROMPT_KEY not in out:
        prompt = obs[PROMPT_KEY]
        if isinstance(prompt, np.ndarray) and prompt.ndim == 0 and prompt.dtype.kind == "U":
            prompt = prompt.item()
        if not isinstance(prompt, str):
            raise ObservationError(PROMPT_KEY, f"expected a string, got {type(prompt).__name__}")
        out[PROMPT_KEY] = prompt[:MAX_PROMPT_CHARS]
    # Optional strings: recurrent policies key per-episode memory by `episode_id` (bc_rnn, scripted);
    # `task` names the task where the prompt does not.
    for key in (EPISODE_ID_KEY, TASK_KEY):
        if key in obs and key not in out:
            value = obs[key]
            if not isinstance(value, str) or len(value) > MAX_EPISODE_ID_CHARS:
                raise ObservationError(key, f"expected a string of at most {MAX_EPISODE_ID_CHARS} characters")
            out[key] = value
    return out


def _validate_array(key: str, value: Any, field: FieldSpec) -> np.ndarray:
    """`value` as an array of the field's dtype and shape, every value representable and finite."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ObservationError(key, f"not an array ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise ObservationError(key, f"expected numbers of dtype {field.dtype}, got dtype {arr.dtype}")
    if not _shape_matches(arr.shape, field.shape):
        raise ObservationError(key, f"expected shape {list(field.shape)}, got {list(arr.shape)}")
    try:
        target = np.dtype(field.dtype)
    except TypeError:
        raise ObservationError(key, f"the policy declares an unknown dtype {field.dtype!r}") from None
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ObservationError(key, "contains NaN or inf")
    if not arr.size:
        return arr.astype(target)
    if target.kind == "f":
        # Range first: the cast would turn a finite 1e300 into inf without a word.
        limit = float(np.finfo(target).max)
        peak = float(np.max(np.abs(arr.astype(np.float64))))  # float64: |int64 min| must not overflow
        if peak > limit:
            raise ObservationError(key, f"values beyond the {field.dtype} range (|x| up to {peak:.3g}, "
                                        f"limit {limit:.3g})")
    elif target.kind in "uib":
        info = np.iinfo(target) if target.kind != "b" else None
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise ObservationError(key, f"expected integers ({field.dtype}), got fractional values")
        low, high = (info.min, info.max) if info is not None else (0, 1)
        if arr.min() < low or arr.max() > high:
            raise ObservationError(key, f"values outside the {field.dtype} range [{low}, {high}]")
    return arr.astype(target, copy=False)


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
        if a.dtype.kind in "iuf" and a.size and float(np.max(np.abs(a.astype(np.float64)))) > MAX_STATE_ABS:
            raise ObservationError(f"{key}/{name}", f"values beyond {MAX_STATE_ABS:.0e} are not a simulator state")
        total += a.size
        out[name] = a
    if total > MAX_STATE_ELEMENTS:
        raise ObservationError(key, f"{total} values exceed the limit of {MAX_STATE_ELEMENTS}")
    return out


def episode_ids(batch: Any, count: int) -> list[str]:
    """A batch's (count,) episode ids ("" for a row without one; all "" without the column), or
    ObservationError on a malformed column or an id twice in one batch (one request per episode and
    step). A policy with per-episode memory keys it by these."""
    if EPISODE_ID_KEY not in batch:
        return [""] * count
    ids = np.asarray(batch[EPISODE_ID_KEY])
    if ids.ndim == 0 and count == 1:
        ids = ids.reshape(1)
    if ids.shape != (count,):
        raise ObservationError(EPISODE_ID_KEY, f"expected {count} ids, got shape {list(ids.shape)}")
    out = [str(x) for x in ids.tolist()]
    named = [x for x in out if x]
    if len(set(named)) != len(named):
        dup = next(x for x in named if named.count(x) > 1)
        raise ObservationError(EPISODE_ID_KEY, f"{dup!r} appears more than once in one batch")
    return out
