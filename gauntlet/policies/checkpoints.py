"""A pickle-free checkpoint format for parameter trees (used by the VLA; NumPy only, no JAX).

A checkpoint is a directory:

    config.json       manifest: {"format": "gauntlet-checkpoint", "format_version": 1,
                      "kind": "base" | "adapter", "model_config": {...},
                      "fingerprint": <digest of this checkpoint's architecture + params>,
                      "base_fingerprint": <for adapters: the fingerprint of the base they were
                      trained on, else null>, "params": {"a/b/c": {"shape": [...], "dtype": "float32"}},
                      "files": {"params.npz": {"blake2b": ..., "bytes": ...}, ...}, "extra": {...}}
    params.npz        the parameter tree flattened to "a/b/c" keys, written by np.savez and read with
                      allow_pickle=False (plain .npy members: readable by any NumPy, no code runs)
    norm_stats.json   optional normalisation statistics (see gauntlet.data.normalization)

Loading checks the format and version, each file's digest (so truncation and bit rot are caught
and named), that every expected key is present with the right shape, and for adapters that the base
fingerprint matches the base they are being applied to. Every error is a `CheckpointError` that
names the offending file. Writes are atomic: everything goes to a temporary sibling directory that
is renamed into place, so a crash mid-save never leaves a half-written checkpoint under the name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gauntlet.data.normalization import NormStats, NormStatsError

FORMAT_NAME = "gauntlet-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.npz"
NORM_STATS_FILE = "norm_stats.json"
KINDS = ("base", "adapter")
CheckpointKind = Literal["base", "adapter"]

_SEP = "/"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used. `path` is the offending file (or directory)."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class CheckpointFormatError(CheckpointError):
    """A missing, truncated, corrupt or unsupported file."""


class CheckpointMismatchError(CheckpointError):
    """A well-formed checkpoint that does not fit what it is loaded into (config, keys, shapes)."""


class AdapterBaseMismatchError(CheckpointMismatchError):
    """An adapter trained on a different base than the one it is being applied to."""


# ---------------------------------------------------------------------------------------------
# Trees


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"a/b/c": array}. Keys must not contain '/'."""
    flat: dict[str, np.ndarray] = {}
    for key in sorted(tree):
        if _SEP in str(key):
            raise ValueError(f"tree key {key!r} contains {_SEP!r}")
        value = tree[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, name + _SEP))
        else:
            flat[name] = np.asarray(value)
    return flat


def unflatten_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_tree`."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(_SEP)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def tree_shapes(tree: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} for a tree of arrays or of shape-carrying leaves (e.g. jax.ShapeDtypeStruct)."""
    out: dict[str, tuple[int, ...]] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key in sorted(node):
            value = node[key]
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}{_SEP}")
            else:
                out[f"{prefix}{key}"] = tuple(int(d) for d in value.shape)

    walk(tree, "")
    return out


def fingerprint(model_config: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """Digest of an architecture and its parameter values.

    Any change to the config, a key, a shape, a dtype or a single value changes it; an adapter
    records its base's fingerprint so it is never applied to weights it was not trained against.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(model_config, sort_keys=True, default=str).encode())
    for name, arr in flatten_tree(params).items():
        arr = np.ascontiguousarray(arr)
        h.update(f"|{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Save / load


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint; `params` is a nested dict of NumPy arrays."""

    path: Path  # the checkpoint directory
    kind: str  # "base" or "adapter"
    model_config: dict[str, Any]  # the model's config as saved
    params: dict[str, Any]  # nested dict of np.ndarray
    fingerprint: str  # this checkpoint's own fingerprint
    base_fingerprint: str | None  # adapters: the base they belong to
    norm_stats: NormStats | None  # None when the checkpoint has no norm_stats.json
    extra: dict[str, Any] = field(default_factory=dict)  # free-form (e.g. adapter rank/alpha, training step)


def save_checkpoint(
    path: str | Path,
    *,
    kind: CheckpointKind,
    model_config: Mapping[str, Any],
    params: Mapping[str, Any],
    norm_stats: NormStats | None = None,
    fingerprint_value: str | None = None,
    base_fingerprint: str | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    `fingerprint_value` defaults to `fingerprint(model_config, params)`; callers that fingerprint a
    subset of the config (e.g. leaving out LoRA settings) pass their own.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if kind == "adapter" and not base_fingerprint:
        raise ValueError("base_fingerprint: required for an adapter checkpoint")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: checkpoint exists (pass overwrite=True to replace it)")
    flat = flatten_tree(params)
    for name, arr in flat.items():
        if arr.dtype.kind not in "biuf" or arr.dtype.str[1:] not in {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}:
            raise ValueError(f"param {name!r}: dtype {arr.dtype} cannot be stored pickle-free; cast to float32")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with (tmp / PARAMS_FILE).open("wb") as f:
            np.savez(f, **flat)
        files = {PARAMS_FILE: {"blake2b": _file_digest(tmp / PARAMS_FILE), "bytes": (tmp / PARAMS_FILE).stat().st_size}}
        if norm_stats is not None:
            norm_stats.save(tmp / NORM_STATS_FILE)
            files[NORM_STATS_FILE] = {"blake2b": _file_digest(tmp / NORM_STATS_FILE), "bytes": (tmp / NORM_STATS_FILE).stat().st_size}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "model_config": dict(model_config),
            "fingerprint": fingerprint_value or fingerprint(model_config, params),
            "base_fingerprint": base_fingerprint,
            "params": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in flat.items()},
            "files": files,
            "extra": dict(extra or {}),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(manifest, indent=1, default=str))
        # Swap in: an existing checkpoint is moved aside first, so the name always points at a
        # complete checkpoint (old or new) except for the instant between two renames.
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The validated config.json of a checkpoint directory (cheap: reads no arrays)."""
    path = Path(path)
    cfg = path / CONFIG_FILE
    if not path.is_dir():
        raise CheckpointFormatError(path, "checkpoint directory not found")
    if not cfg.is_file():
        raise CheckpointFormatError(cfg, "file not found (not a checkpoint directory?)")
    try:
        manifest = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointFormatError(cfg, f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointFormatError(cfg, f"not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointFormatError(cfg, f"format_version {version} is not supported (this code reads {FORMAT_VERSION})")
    for key in ("kind", "model_config", "fingerprint", "params", "files"):
        if key not in manifest:
            raise CheckpointFormatError(cfg, f"missing field {key!r}")
    if manifest["kind"] not in KINDS:
        raise CheckpointFormatError(cfg, f"kind {manifest['kind']!r} is not one of {KINDS}")
    return manifest


def _verify_file(path: Path, entry: Mapping[str, Any]) -> None:
    if not path.is_file():
        raise CheckpointFormatError(path, "file not found")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise CheckpointFormatError(path, f"size {size} bytes, manifest says {entry.get('bytes')} (truncated or replaced?)")
    if _file_digest(path) != entry.get("blake2b"):
        raise CheckpointFormatError(path, "digest does not match the manifest (corrupt or modified)")


def load_checkpoint(
    path: str | Path,
    *,
    expected_kind: CheckpointKind | None = None,
    expected_config: Mapping[str, Any] | None = None,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    base_fingerprint: str | None = None,
) -> Checkpoint:
    """Read and validate a checkpoint.

    expected_config: keys that must equal the saved model_config (others are not compared).
    expected_shapes: {"a/b/c": shape} that the params must match exactly (no missing, no extra).
    base_fingerprint: for adapters, the fingerprint of the base they are applied to.
    """
    path = Path(path)
    manifest = read_manifest(path)
    cfg_file = path / CONFIG_FILE
    kind = manifest["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointMismatchError(cfg_file, f"is a {kind!r} checkpoint, expected {expected_kind!r}")
    model_config = manifest["model_config"]
    if expected_config is not None:
        diffs = [f"{k}={model_config.get(k)!r} (expected {v!r})" for k, v in expected_config.items() if model_config.get(k) != v]
        if diffs:
            raise CheckpointMismatchError(cfg_file, "model config does not match: " + ", ".join(diffs))
    if kind == "adapter" and base_fingerprint is not None and manifest.get("base_fingerprint") != base_fingerprint:
        raise AdapterBaseMismatchError(
            cfg_file,
            f"adapter was trained on base {manifest.get('base_fingerprint')}, but the loaded base is "
            f"{base_fingerprint}; load the base checkpoint it was trained from",
        )

    params_file = path / PARAMS_FILE
    files = manifest["files"]
    if PARAMS_FILE not in files:
        raise CheckpointFormatError(cfg_file, f"manifest lists no {PARAMS_FILE}")
    _verify_file(params_file, files[PARAMS_FILE])
    try:
        with np.load(params_file, allow_pickle=False) as npz:
            flat = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CheckpointFormatError(params_file, f"cannot read arrays ({exc})") from None

    listed = {k: tuple(v["shape"]) for k, v in manifest["params"].items()}
    actual = {k: tuple(v.shape) for k, v in flat.items()}
    if listed != actual:
        raise CheckpointFormatError(params_file, "arrays do not match the manifest's param list")
    if expected_shapes is not None:
        expected = {k: tuple(v) for k, v in expected_shapes.items()}
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        if missing:
            raise CheckpointMismatchError(params_file, f"missing {len(missing)} expected params, e.g. {missing[:3]}")
        if extra:
            raise CheckpointMismatchError(params_file, f"{len(extra)} unexpected params, e.g. {extra[:3]}")
        wrong = [f"{k}: {actual[k]} (expected {expected[k]})" for k in sorted(expected) if actual[k] != expected[k]]
        if wrong:
            raise CheckpointMismatchError(params_file, f"wrong shapes: {'; '.join(wrong[:3])}")

    norm_stats = None
    if NORM_STATS_FILE in files:
        ns_file = path / NORM_STATS_FILE
        _verify_file(ns_file, files[NORM_STATS_FILE])
        try:
            norm_stats = NormStats.load(ns_file)
        except NormStatsError as exc:
            raise CheckpointFormatError(ns_file, exc.message) from None
    return Checkpoint(
        path=path, kind=kind, model_config=model_config, params=unflatten_tree(flat),
        fingerprint=manifest["fingerprint"], base_fingerprint=manifest.get("base_fingerprint"),
        norm_stats=norm_stats, extra=manifest.get("extra", {}),
    )
