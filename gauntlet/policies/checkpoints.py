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
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from gauntlet.data.normalization import NormStats, NormStatsError
from gauntlet.runtime import manifests
from gauntlet.runtime.atomic_files import replace_dir, staging_dir

FORMAT_NAME = "gauntlet-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.npz"
NORM_STATS_FILE = "norm_stats.json"
KINDS = ("base", "adapter")
CheckpointKind = Literal["base", "adapter"]
C = TypeVar("C")  # a model config type (has architecture_dict())

_SEP = "/"
# NumPy dtypes np.load reads back with allow_pickle=False
_PICKLE_FREE_DTYPES = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"})


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
    """blake2b-128 of a file's bytes, read in 4 MiB blocks."""
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
        if arr.dtype.kind not in "biuf" or arr.dtype.str[1:] not in _PICKLE_FREE_DTYPES:
            raise ValueError(f"param {name!r}: dtype {arr.dtype} cannot be stored pickle-free; cast to float32")
    stage = staging_dir(path, "tmp")
    try:
        with (stage / PARAMS_FILE).open("wb") as f:
            np.savez(f, **flat)
        files = {PARAMS_FILE: _file_entry(stage / PARAMS_FILE)}
        if norm_stats is not None:
            norm_stats.save(stage / NORM_STATS_FILE)
            files[NORM_STATS_FILE] = _file_entry(stage / NORM_STATS_FILE)
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
        # A plain write: the whole directory is staged and renamed into place below.
        (stage / CONFIG_FILE).write_text(json.dumps(manifest, indent=1, default=str))
        replace_dir(stage, path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The validated config.json of a checkpoint directory (cheap: reads no arrays)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointFormatError(path, "checkpoint directory not found")
    cfg = path / CONFIG_FILE
    manifest = manifests.read_manifest(cfg, format_name=FORMAT_NAME, versions=(FORMAT_VERSION,),
                                       what="checkpoint manifest", error=CheckpointFormatError,
                                       hint="not a checkpoint directory?")
    for key in ("kind", "model_config", "fingerprint", "params", "files"):
        if key not in manifest:
            raise CheckpointFormatError(cfg, f"missing field {key!r}")
    if manifest["kind"] not in KINDS:
        raise CheckpointFormatError(cfg, f"kind {manifest['kind']!r} is not one of {KINDS}")
    return manifest


def _file_entry(path: Path) -> dict[str, Any]:
    """The manifest's record of a file: digest and size, checked on load."""
    return {"blake2b": _file_digest(path), "bytes": path.stat().st_size}


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
    _check_manifest_fits(path / CONFIG_FILE, manifest, expected_kind, expected_config, base_fingerprint)
    flat = _read_params(path, manifest)
    if expected_shapes is not None:
        _check_shapes(path / PARAMS_FILE, {k: tuple(v.shape) for k, v in flat.items()}, expected_shapes)
    return Checkpoint(
        path=path, kind=manifest["kind"], model_config=manifest["model_config"], params=unflatten_tree(flat),
        fingerprint=manifest["fingerprint"], base_fingerprint=manifest.get("base_fingerprint"),
        norm_stats=_read_norm_stats(path, manifest["files"]), extra=manifest.get("extra", {}),
    )


def load_model_checkpoint(
    path: str | Path,
    config_from_dict: Callable[[dict[str, Any]], C],
    expected_shapes_of: Callable[[C], Mapping[str, tuple[int, ...]]],
    *,
    model: str | None = None,
) -> tuple[C, Checkpoint]:
    """(model config, checkpoint) of a base checkpoint whose config.json still describes its params.

    `model`: the `extra.model` name the checkpoint must carry (policies that share the format).
    The file digests prove the bytes are intact; the fingerprint check proves config.json still
    describes them (a hand-edited field can keep every shape but change the function).
    """
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    manifest = read_manifest(path)
    if model is not None and manifest.get("extra", {}).get("model") != model:
        found = manifest.get("extra", {}).get("model")
        raise CheckpointMismatchError(cfg_file, f"is a {found!r} checkpoint, not a {model!r} one")
    try:
        config = config_from_dict(dict(manifest["model_config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointMismatchError(cfg_file, f"invalid model_config ({exc})") from None
    ckpt = load_checkpoint(path, expected_kind="base", expected_shapes=expected_shapes_of(config))
    if fingerprint(config.architecture_dict(), ckpt.params) != ckpt.fingerprint:
        raise CheckpointFormatError(cfg_file, "fingerprint does not match model_config + params (edited by hand?)")
    return config, ckpt


def _check_manifest_fits(cfg_file: Path, manifest: Mapping[str, Any], expected_kind: str | None,
                         expected_config: Mapping[str, Any] | None, base_fingerprint: str | None) -> None:
    """Kind, config and (adapters) base fingerprint are what the caller loads this checkpoint as."""
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


def _read_params(path: Path, manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """params.npz's arrays ("a/b/c" keys), digest-checked and matching the manifest's param list."""
    params_file = path / PARAMS_FILE
    files = manifest["files"]
    if PARAMS_FILE not in files:
        raise CheckpointFormatError(path / CONFIG_FILE, f"manifest lists no {PARAMS_FILE}")
    _verify_file(params_file, files[PARAMS_FILE])
    try:
        with np.load(params_file, allow_pickle=False) as npz:
            flat = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CheckpointFormatError(params_file, f"cannot read arrays ({exc})") from None
    listed = {k: tuple(v["shape"]) for k, v in manifest["params"].items()}
    if listed != {k: tuple(v.shape) for k, v in flat.items()}:
        raise CheckpointFormatError(params_file, "arrays do not match the manifest's param list")
    return flat


def _check_shapes(params_file: Path, actual: Mapping[str, tuple[int, ...]],
                  expected_shapes: Mapping[str, tuple[int, ...]]) -> None:
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


def _read_norm_stats(path: Path, files: Mapping[str, Any]) -> NormStats | None:
    if NORM_STATS_FILE not in files:
        return None
    ns_file = path / NORM_STATS_FILE
    _verify_file(ns_file, files[NORM_STATS_FILE])
    try:
        return NormStats.load(ns_file)
    except NormStatsError as exc:
        raise CheckpointFormatError(ns_file, exc.message) from None
