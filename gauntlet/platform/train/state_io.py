"""Training checkpoints: the full optimizer state, pickle-free, written then renamed.

A training checkpoint is a directory:

    state.npz     trainable params ("trainable/a/b"), EMA ("ema/a/b"), optimizer leaves ("opt/00012")
    meta.json     step, the loss history up to that step, the run identity, per-array shapes

Optimizer state is an optax pytree of named tuples; its leaves are stored in tree-flatten order and
put back into the structure of a freshly initialised optimizer, after checking that count, shapes
and dtypes agree: a checkpoint of another model or mode is refused with the file named, never
silently reshaped. The history travels with the state so a resumed run's loss curve continues
exactly where the checkpoint left it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.policies.checkpoints import flatten_tree, unflatten_tree
from gauntlet.runtime.atomic_files import atomic_write
from gauntlet.runtime.manifests import ManifestError, read_manifest, write_json

STATE_FILE = "state.npz"
META_FILE = "meta.json"
FORMAT = "gauntlet-train-state"
FORMAT_VERSION = 1


class TrainStateError(ManifestError):
    """A training checkpoint that cannot continue this run; names the file."""


@dataclass
class SavedState:
    """What a training checkpoint holds, as NumPy."""

    step: int  # optimizer steps taken
    trainable: dict[str, Any]  # nested dict of arrays
    opt_leaves: list[np.ndarray]  # optimizer state leaves in tree-flatten order
    ema: dict[str, Any] | None  # EMA of the trainable tree, when enabled
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics record per step
    identity: dict[str, Any] = field(default_factory=dict)  # what must match to resume


def save_train_state(directory: str | Path, state: SavedState) -> Path:
    """Write `state` into `directory` (created). meta.json is written last and names the arrays,
    so a directory without it, or whose arrays disagree with it, is refused on load."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    arrays.update(flatten_tree({"trainable": state.trainable}))
    if state.ema is not None:
        arrays.update(flatten_tree({"ema": state.ema}))
    for i, leaf in enumerate(state.opt_leaves):
        arrays[f"opt/{i:05d}"] = np.asarray(leaf)
    atomic_write(directory / STATE_FILE, lambda tmp: _savez(tmp, arrays))
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "step": int(state.step),
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in arrays.items()},
        "num_opt_leaves": len(state.opt_leaves), "has_ema": state.ema is not None,
        "history": state.history, "identity": state.identity,
    }
    write_json(directory / META_FILE, meta, indent=None)
    return directory


def _savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez(f, **arrays)


def load_train_state(directory: str | Path) -> SavedState:
    """The checkpoint in `directory`; TrainStateError names the file that is missing or wrong."""
    directory = Path(directory)
    meta_path, state_path = directory / META_FILE, directory / STATE_FILE
    if not meta_path.is_file():
        raise TrainStateError(meta_path, "file not found (an interrupted checkpoint write?)")
    try:
        meta = read_manifest(meta_path, format_name=FORMAT, versions=(FORMAT_VERSION,), what="train state")
    except ManifestError as exc:
        raise TrainStateError(meta_path, exc.problem) from None
    try:
        with np.load(state_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise TrainStateError(state_path, f"unreadable ({exc})") from None
    for key, spec in meta["arrays"].items():
        if key not in arrays or list(arrays[key].shape) != spec["shape"]:
            raise TrainStateError(state_path, f"array {key!r} missing or not of shape {spec['shape']}")
    grouped: dict[str, dict[str, np.ndarray]] = {"trainable": {}, "ema": {}, "opt": {}}
    for key, value in arrays.items():
        head, _, rest = key.partition("/")
        grouped[head][rest] = value
    opt = [grouped["opt"][f"{i:05d}"] for i in range(int(meta["num_opt_leaves"]))]
    return SavedState(
        step=int(meta["step"]), trainable=unflatten_tree(grouped["trainable"]), opt_leaves=opt,
        ema=unflatten_tree(grouped["ema"]) if meta.get("has_ema") else None,
        history=list(meta.get("history", [])), identity=dict(meta.get("identity", {})),
    )


def check_compatible(saved: SavedState, trainable_shapes: Mapping[str, tuple[int, ...]],
                     opt_leaf_shapes: list[tuple[int, ...]], identity: Mapping[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint from another model, mode or dataset before the first step."""
    for key in sorted(set(identity) | set(saved.identity)):
        if saved.identity.get(key) != identity.get(key):
            raise TrainStateError(path, f"checkpoint was written by a different run: {key} is "
                                        f"{saved.identity.get(key)!r} there, {identity.get(key)!r} here")
    got = {k: tuple(v.shape) for k, v in flatten_tree(saved.trainable).items()}
    if got != dict(trainable_shapes):
        raise TrainStateError(path, "trainable parameters do not match this model (another model or mode?)")
    if [tuple(x.shape) for x in saved.opt_leaves] != [tuple(s) for s in opt_leaf_shapes]:
        raise TrainStateError(path, "optimizer state does not match this model and optimizer")
