"""LeRobot's dataset format (codebase v3.0: lerobot 0.4.x to 0.6.x): the names, paths and statistics both
`gauntlet data export-lerobot` and `gauntlet data import-lerobot` use.

Source: lerobot 0.4.4, `lerobot/datasets/utils.py` (DEFAULT_* paths, DEFAULT_FEATURES,
`get_hf_features_from_features`, `create_empty_dataset_info`), `lerobot_dataset.py`
(`LeRobotDatasetMetadata.save_episode`, `_save_episode_data`) and `compute_stats.py`. A v3.0 dataset:

    DIR/
      meta/info.json                          codebase_version "v3.0", fps, features, totals, paths
      meta/stats.json                         per feature: min, max, mean, std, count, q01..q99
      meta/tasks.parquet                      index: task string; column task_index
      meta/episodes/chunk-000/file-000.parquet  one row per episode: episode_index, tasks, length,
                                              data/chunk_index, data/file_index, dataset_from_index,
                                              dataset_to_index, meta/episodes/*, stats/<feature>/<stat>
                                              (+ Gauntlet's episode tags: recovery, scene_id, error_type,
                                              origin; LeRobot keeps every non-stats column)
      data/chunk-000/file-000.parquet         one row per frame, many episodes per file; image
                                              features embedded as HF Image structs {bytes, path}
      videos/<key>/chunk-000/file-000.mp4     video features (import only: lerobot_video), many
                                              episodes per file, placed by meta/episodes' videos/<key>/*

Gauntlet adds, in folders LeRobot never globs: `sim/` (its simulator states, unchanged) and
`gauntlet/` (the source dataset's info.json and per-episode table, so a round trip loses nothing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gauntlet.data.dataset_schema import DatasetError
from gauntlet.runtime.manifests import read_json

CODEBASE_VERSION = "v3.0"
SUPPORTED_VERSIONS = (CODEBASE_VERSION,)
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000  # files per chunk-NNN directory (LeRobot's DEFAULT_CHUNK_SIZE)
DATA_FILE_SIZE_MB = 100  # LeRobot's DEFAULT_DATA_FILE_SIZE_IN_MB
VIDEO_FILE_SIZE_MB = 200
# Gauntlet's extras: LeRobot reads only meta/{info,stats,tasks}.json/parquet, meta/episodes/ and data/.
EXTRA_INFO_PATH = "gauntlet/info.json"
EXTRA_EPISODES_PATH = "gauntlet/episodes.parquet"
SIM_DIR = "sim"

# The per-frame bookkeeping columns every LeRobot dataset has, in LeRobot's order.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
# HF datasets' Image() storage type: what `datasets` decodes into a PIL image.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's DEFAULT_QUANTILES -> q01, q10, q50, q90, q99
_QUANTILE_KEYS = tuple(f"q{int(q * 100):02d}" for q in QUANTILES)


# ------------------------------------------------------------------------------- arrow schema
def arrow_type(feature: Mapping[str, Any]) -> pa.DataType:
    """The Arrow type `datasets` stores a LeRobot feature as (get_hf_features_from_features)."""
    if feature["dtype"] == "image":
        return IMAGE_STRUCT
    value = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    shape = list(feature["shape"])
    if shape == [1]:
        return value
    if len(shape) == 1:
        return pa.list_(value, shape[0])  # Sequence(length=N) is a fixed-size list
    raise ValueError(f"feature shape {shape} is not exported (only scalars, vectors and images)")


def hf_feature(feature: Mapping[str, Any]) -> dict[str, Any]:
    """The feature as `datasets` 4.x serialises it into Parquet metadata, so that a plain
    `datasets.load_dataset("parquet", ...)` (and the Hub's viewer) decodes images too."""
    if feature["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": feature["dtype"], "_type": "Value"}
    if list(feature["shape"]) == [1]:
        return value
    return {"feature": value, "length": int(feature["shape"][0]), "_type": "List"}


def data_schema(features: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
    """The data files' schema: one column per feature (videos excepted), with HF's metadata."""
    cols = [(name, arrow_type(f)) for name, f in features.items() if f["dtype"] != "video"]
    hf = {"info": {"features": {name: hf_feature(f) for name, f in features.items() if f["dtype"] != "video"}}}
    return pa.schema(cols, metadata={"huggingface": json.dumps(hf)})


def next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one (LeRobot's update_chunk_file_indices)."""
    return (chunk_index + 1, 0) if file_index == chunks_size - 1 else (chunk_index, file_index + 1)


# ---------------------------------------------------------------------------------- statistics
def sample_indices(n: int) -> np.ndarray:
    """Frames whose images enter the statistics (LeRobot's estimate_num_samples: all up to 100, then
    n**0.75, at most 10 000): decoding every frame would dominate the export's time."""
    count = n if n < 100 else max(100, min(int(n ** 0.75), 10_000))
    return np.round(np.linspace(0, n - 1, count)).astype(int)


def feature_stats(values: np.ndarray, image: bool = False) -> dict[str, np.ndarray]:
    """One episode's statistics of one feature, in LeRobot's shapes: (D,) for a vector, (1,) for a
    scalar, (3, 1, 1) per channel in [0, 1] for images ((N, H, W, 3) uint8 in)."""
    if image:
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
    else:
        flat = values.reshape(len(values), -1).astype(np.float64)
    stats = {"min": flat.min(axis=0), "max": flat.max(axis=0), "mean": flat.mean(axis=0), "std": flat.std(axis=0)}
    for key, q in zip(_QUANTILE_KEYS, np.quantile(flat, QUANTILES, axis=0), strict=True):
        stats[key] = q
    if image:
        stats = {k: v.reshape(3, 1, 1) for k, v in stats.items()}
    stats["count"] = np.array([len(values)], dtype=np.int64)
    return stats


def aggregate_stats(per_episode: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Dataset statistics from episodes' (LeRobot's aggregate_feature_stats): exact min, max, mean
    and std (parallel variance); quantiles as the count-weighted mean of the episodes', as LeRobot
    does, so a policy normalising with them sees what LeRobot's own writer would have produced."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in per_episode[0]:
        parts = [ep[name] for ep in per_episode]
        counts = np.stack([p["count"] for p in parts]).astype(np.float64)
        means = np.stack([p["mean"] for p in parts])
        weights = counts.reshape(counts.shape[:1] + (1,) * (means.ndim - 1))
        total = counts.sum()
        mean = (means * weights).sum(axis=0) / total
        var = ((np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2) * weights).sum(axis=0) / total
        agg = {"min": np.min(np.stack([p["min"] for p in parts]), axis=0),
               "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
               "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)], dtype=np.int64)}
        for key in _QUANTILE_KEYS:
            agg[key] = (np.stack([p[key] for p in parts]) * weights).sum(axis=0) / total
        out[name] = agg
    return out


def stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {name: {k: np.asarray(v).tolist() for k, v in s.items()} for name, s in stats.items()}


# ------------------------------------------------------------------------------- reading info
def read_info(root: Path) -> dict[str, Any]:
    """A LeRobot dataset's meta/info.json, checked: version and the fields import needs."""
    path = root / INFO_PATH
    if not root.is_dir():
        raise DatasetError(root, "no such LeRobot dataset (directory does not exist)")
    info = read_json(path, "LeRobot info", error=DatasetError,
                     hint="not a LeRobot dataset (LeRobot datasets have meta/info.json)")
    if not isinstance(info, dict):
        raise DatasetError(path, "not a JSON object")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        hint = (" (convert it with lerobot's `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`)"
                if isinstance(version, str) and version.startswith("v2") else "")
        raise DatasetError(path, f"field 'codebase_version' is {version!r}; supported: "
                                 f"{', '.join(SUPPORTED_VERSIONS)} (lerobot 0.4.x to 0.6.x){hint}")
    for key, kind in (("fps", (int, float)), ("features", dict), ("data_path", str),
                      ("total_episodes", int), ("total_frames", int)):
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise DatasetError(path, f"field {key!r} is missing or has the wrong type")
    for name, feat in info["features"].items():
        if not isinstance(feat, dict) or "dtype" not in feat or not isinstance(feat.get("shape"), list):
            raise DatasetError(path, f"features[{name!r}] needs 'dtype' and a 'shape' list")
    return info


def feature_names(feature: Mapping[str, Any]) -> list[str] | None:
    """A vector feature's per-dimension names: LeRobot writes a list, or {"motors": [...]}."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    width = int(feature["shape"][0])
    if isinstance(names, list) and len(names) == width and all(isinstance(n, str) for n in names):
        return list(names)
    return None
