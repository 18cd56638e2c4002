"""The dataset format's schema: paths, features, columns, the info.json manifest and its checks.

What a dataset directory holds is described in gauntlet.data.dataset_format; this module is the one
place that spells its names and versions, builds `meta/info.json` and checks one when it is read.
The writer (gauntlet.data.dataset_writer) and the reader (gauntlet.data.dataset_reader) both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gauntlet.keys import ACTION_FEATURE, DATASET_CAMERAS, PROMPT_COLUMN, STATE_FEATURE, image_feature
from gauntlet.runtime.manifests import read_manifest

FORMAT_NAME = "gauntlet-dataset"
FORMAT_VERSION = 1
DATA_PATH = "data/chunk-{chunk:03d}/episode_{episode:06d}.parquet"
SIM_PATH = "sim/episode_{episode:06d}.npz"
XML_PATH = "sim/episode_{episode:06d}.xml"
INFO_PATH = "meta/info.json"
EPISODES_PATH = "meta/episodes.parquet"
STATS_PATH = "meta/stats.json"
CHUNKS_SIZE = 1000  # episodes per data/chunk-NNN directory
DEFAULT_FPS = 20

# camera name (add_episode's `images` keys) -> feature / column name
IMAGE_FEATURES: dict[str, str] = {cam: image_feature(cam) for cam in DATASET_CAMERAS}
STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "gripper_q0", "gripper_q1"]
ACTION_NAMES = ["dx", "dy", "dz", "dax", "day", "daz", "gripper"]

# column -> pandas dtype of meta/episodes.parquet. Booleans are booleans; seed is nullable.
EPISODE_COLUMNS: dict[str, str] = {
    "episode_index": "int64",
    "length": "int64",  # frames in the episode
    "dataset_from_index": "int64",  # global index of its first frame
    "dataset_to_index": "int64",  # global index one past its last frame
    "task": "string",
    "variant": "string",
    PROMPT_COLUMN: "string",  # the language instruction
    "success": "bool",
    "split": "string",
    "seed": "Int64",  # env reset seed; <NA> when unknown (imported demos)
    "fingerprint": "string",  # env fingerprint (collected) or "sha256:" model-XML hash (imported)
    "source_episode": "string",  # provenance: e.g. the HDF5 demo name
    # EpisodeTags: which scene the episode starts from
    "recovery": "bool",
    "scene_id": "string",
    "error_type": "string",
    "origin": "string",
}
# per-frame scalar columns beside the state, action and image columns
FRAME_SCALARS = ("index", "episode_index", "frame_index", "timestamp", "next.done")
_SCALAR_FEATURES: dict[str, dict[str, Any]] = {
    "episode_index": {"dtype": "int64", "shape": [1]},
    "frame_index": {"dtype": "int64", "shape": [1]},
    "timestamp": {"dtype": "float32", "shape": [1]},
    "index": {"dtype": "int64", "shape": [1]},
    "next.done": {"dtype": "bool", "shape": [1]},
}
_INT_FIELDS = ("fps", "total_episodes", "total_frames", "state_dim", "action_dim", "chunks_size")


@dataclass(frozen=True)
class EpisodeTags:
    """Where an episode starts: a reset (the defaults) or a scene's state (`data collect --from-scenes`).

    They are columns of meta/episodes.parquet, so a recipe can select or weight recovery episodes; a
    dataset written before the columns existed reads with the defaults (every episode from a reset).
    """

    recovery: bool = False  # the episode is the oracle recovering from an error scene's state
    scene_id: str = ""  # the scene it starts from ("" after a reset)
    error_type: str = ""  # that scene's error type ("none" for a nominal scene)
    origin: str = ""  # that scene's origin (gauntlet.envs.scene_db.ORIGINS)

    def columns(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EpisodeTags:
        """The tags of an episode-table row (a pandas row or a dict with the tag columns); a missing
        or null tag (a foreign file's None, NaN or <NA>) reads as its default: `bool(nan)` is True and
        `str(nan)` is "nan", which would make an untagged episode a recovery one."""
        return cls(**{k: d if is_na(row.get(k)) else type(d)(row[k]) for k, d in asdict(cls()).items()})


def is_na(value: Any) -> bool:
    """True for a missing scalar: None, NaN, pandas' NA/NaT (what a null Parquet cell reads as)."""
    import pandas as pd

    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


EPISODE_TAG_DEFAULTS: dict[str, Any] = EpisodeTags().columns()


def unite_env(envs: dict[str, dict[str, Any]], task: str, variant: str, meta: Mapping[str, Any]) -> str:
    """Adds one env configuration to info.json's `envs` (what rebuilds the env an episode ran in);
    returns its key. The key is always "task/variant", so demonstrations of one task's D0 and D1 (or
    nominal demos and recoveries from another variant's scenes) sit side by side and merge. A second,
    different configuration of the same task and variant (e.g. another camera size) is kept too, as
    "task/variant#" + a digest of its metadata: every configuration a dataset's episodes ran in is listed."""
    import hashlib
    import json

    key = f"{task}/{variant}"
    if envs.setdefault(key, dict(meta)) == dict(meta):
        return key
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:12]
    envs.setdefault(f"{key}#{digest}", dict(meta))
    return f"{key}#{digest}"


class DatasetError(ValueError):
    """A dataset (or one file of it) is missing, malformed or unusable; names the file and field."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def data_path(episode: int, chunks_size: int = CHUNKS_SIZE) -> str:
    """The episode's Parquet file, relative to the dataset root."""
    return DATA_PATH.format(chunk=episode // chunks_size, episode=episode)


# ----------------------------------------------------------------------------------- features
def features(state_dim: int, action_dim: int, state_names: Sequence[str] | None,
             action_names: Sequence[str] | None, image_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """info.json's `features`: every frame column with its dtype and shape (LeRobot's layout)."""
    out: dict[str, Any] = {
        STATE_FEATURE: {"dtype": "float32", "shape": [state_dim], "names": state_names},
        ACTION_FEATURE: {"dtype": "float32", "shape": [action_dim], "names": action_names},
    }
    for cam, shape in sorted(image_shapes.items()):
        out[IMAGE_FEATURES[cam]] = {"dtype": "image", "shape": list(shape),
                                    "names": ["height", "width", "channel"], "encoding": "png"}
    out.update({name: dict(spec) for name, spec in _SCALAR_FEATURES.items()})
    return out


def image_features_of(info: Mapping[str, Any]) -> list[str]:
    """The image columns an info.json declares, in its order."""
    return [name for name, f in info["features"].items() if isinstance(f, dict) and f.get("dtype") == "image"]


# ---------------------------------------------------------------------------------- info.json
def read_info(path: Path) -> dict[str, Any]:
    """A dataset's meta/info.json, checked: format, version, field types, feature dimensions."""
    info = read_manifest(path, format_name=FORMAT_NAME, versions=(FORMAT_VERSION,), what="dataset manifest",
                         error=DatasetError, hint="not a dataset, or its write was interrupted; create one "
                                                  "with `gauntlet data collect` or `gauntlet data import-hdf5`")
    for key in _INT_FIELDS:
        _require(info, path, key, int)
    _require(info, path, "features", dict)
    _require(info, path, "splits", dict)
    _require(info, path, "data_path", str)
    feats = info["features"]
    for name, dim_key in ((STATE_FEATURE, "state_dim"), (ACTION_FEATURE, "action_dim")):
        feat = feats.get(name)
        if not isinstance(feat, dict) or not isinstance(feat.get("shape"), list) or len(feat["shape"]) != 1:
            raise DatasetError(path, f"features[{name!r}] is missing or has no 1-D 'shape'")
        if feat["shape"][0] != info[dim_key]:
            raise DatasetError(path, f"features[{name!r}].shape is {feat['shape']} but {dim_key} is "
                                     f"{info[dim_key]} (feature dimension mismatch)")
    for name in image_features_of(info):
        shape = feats[name].get("shape")
        if not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3:
            raise DatasetError(path, f"features[{name!r}].shape must be [H, W, 3], got {shape}")
    return info


def _require(info: Mapping[str, Any], path: Path, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in info:
        raise DatasetError(path, f"missing field {key!r}")
    value = info[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise DatasetError(path, f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


# ------------------------------------------------------------------------------------ columns
def fixed_list(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    """(N, width) floats -> a Parquet fixed-size-list float32 column."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)


def column_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A Parquet column as NumPy: (N, D) for fixed-size lists, (N,) for scalars."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), -1) if len(col) else flat.reshape(0, 0)
    return col.to_numpy(zero_copy_only=False)


def first_nonfinite(arr: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first NaN/inf in a 2-D array, or None."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    row = int(np.argmax(bad.any(axis=1)))
    return row, int(np.argmax(bad[row]))
