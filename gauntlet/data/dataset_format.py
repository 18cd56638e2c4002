"""The dataset format: LeRobot-style Parquet episodes plus what evaluation needs (simulator states).

A dataset is a directory any pandas user can read, with no pickle anywhere:

    DS/
      meta/info.json                          format, version, fps, dims, features, splits, env metadata
      meta/episodes.parquet                   one row per episode (EPISODE_COLUMNS)
      meta/stats.json                         NormStats JSON, written by `gauntlet data stats DS`
      data/chunk-000/episode_000000.parquet   one row per frame (index, episode_index, frame_index,
                                              timestamp, observation.state, action, next.done,
                                              observation.images.* as PNG bytes)
      sim/episode_000000.npz                  simulator states per frame ("states": (T, S) float64,
                                              robomimic's flattened MuJoCo state: time, qpos, qvel)
      sim/episode_000000.xml                  the MuJoCo model XML the states belong to

This module is the format's import surface (code outside gauntlet.data imports from here); each
part lives in its own module:
gauntlet.data.dataset_schema (names, versions, info.json and its checks), dataset_writer
(`DatasetWriter`: staged, renamed into place by `finalize()`), dataset_reader (`Dataset`,
`open_dataset`, `describe`), dataset_validation (`validate`, the training pre-flight) and
gauntlet.data.images (PNG codec and the eval path's resize).
"""

from __future__ import annotations

from gauntlet.data.dataset_reader import Dataset, describe, open_dataset
from gauntlet.data.dataset_schema import (
    ACTION_NAMES,
    CHUNKS_SIZE,
    DATA_PATH,
    DEFAULT_FPS,
    EPISODE_COLUMNS,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_FEATURES,
    SIM_PATH,
    STATE_NAMES,
    XML_PATH,
    DatasetError,
    column_to_numpy,
    data_path,
)
from gauntlet.data.dataset_validation import validate
from gauntlet.data.dataset_writer import DatasetWriter
from gauntlet.data.images import decode_png, encode_png, resize_image

__all__ = [
    "ACTION_NAMES", "CHUNKS_SIZE", "DATA_PATH", "DEFAULT_FPS", "EPISODE_COLUMNS", "FORMAT_NAME", "FORMAT_VERSION",
    "IMAGE_FEATURES", "SIM_PATH", "STATE_NAMES", "XML_PATH", "Dataset", "DatasetError", "DatasetWriter",
    "column_to_numpy", "data_path", "decode_png", "describe", "encode_png", "open_dataset", "resize_image",
    "validate",
]
