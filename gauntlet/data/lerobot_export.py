"""`gauntlet data export-lerobot DS --out DIR`: a Gauntlet dataset as a LeRobot v3.0 dataset.

The result is what `LeRobotDataset(repo_id, root=DIR)` of lerobot 0.4.4 and 0.6.1 loads offline (layout in
gauntlet.data.lerobot_format): the state, action and camera features under Gauntlet's own column
names (which are LeRobot's: `observation.state`, `action`, `observation.images.<camera>`), tasks
from the episodes' prompts, per-episode and dataset statistics, and each episode's tags (`recovery`,
`scene_id`, `error_type`, `origin`) as columns of meta/episodes, which LeRobotDataset carries through. PNG frames are copied as they are
(no decode and re-encode, so pixels are bit-identical); only a sample of them is decoded for the
image statistics, as LeRobot does. Simulator states (`sim/`) and Gauntlet's episode table travel
alongside in folders LeRobot ignores. Everything is written into a staging sibling and renamed into
place at the end, so an interrupted export leaves nothing that reads as a dataset.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gauntlet.data.dataset_reader import Dataset, open_dataset
from gauntlet.data.dataset_schema import EPISODES_PATH as GAUNTLET_EPISODES_PATH
from gauntlet.data.dataset_schema import IMAGE_FEATURES, DatasetError, EpisodeTags
from gauntlet.data.images import decode_png
from gauntlet.data.lerobot_format import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_FILE_SIZE_MB,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_PATH,
    EXTRA_EPISODES_PATH,
    EXTRA_INFO_PATH,
    INFO_PATH,
    SIM_DIR,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_FILE_SIZE_MB,
    aggregate_stats,
    data_schema,
    feature_stats,
    next_file,
    sample_indices,
    stats_to_json,
)
from gauntlet.keys import ACTION_FEATURE, PROMPT_COLUMN, STATE_FEATURE
from gauntlet.runtime.atomic_files import replace_dir, staging_dir
from gauntlet.runtime.config_args import option, parse_config, require_at_least, run_command
from gauntlet.runtime.manifests import write_json
from gauntlet.runtime.progress import Progress

TAG = "data export-lerobot"


@dataclass(frozen=True)
class ExportConfig:
    """Exports a Gauntlet dataset as a LeRobot v3.0 dataset (the LeRobotDataset of lerobot 0.4.4 and 0.6.1 loads it)."""

    dataset: str = option(help="Gauntlet dataset directory to export", positional=True)
    out: str = option(help="LeRobot dataset directory to create (LeRobotDataset(repo_id, root=OUT))")
    images: bool = option(True, help="export camera images as LeRobot image features (PNG, as stored)")
    sim: bool = option(True, help="copy simulator states (sim/) alongside, in a folder LeRobot ignores")
    data_file_size_mb: int = option(DATA_FILE_SIZE_MB, help="start a new data/chunk-*/file-*.parquet once a "
                                                            "file reaches this size (MiB), as LeRobot does")
    chunks_size: int = option(CHUNKS_SIZE, help="files per data/chunk-NNN directory (LeRobot's default)")
    overwrite: bool = option(False, help="replace an existing LeRobot dataset at --out")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "data_file_size_mb", "chunks_size")


class _DataFiles:
    """Appends episode tables to data/chunk-C/file-F.parquet, rolling to the next file past the size
    limit between episodes (an episode never spans two files, as in LeRobot's writer)."""

    def __init__(self, root: Path, schema: pa.Schema, limit_mb: int, chunks_size: int):
        self.root, self.schema, self.limit_bytes, self.chunks_size = root, schema, limit_mb * 2**20, chunks_size
        self.chunk = self.file = 0
        self.bytes = 0
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> tuple[int, int]:
        if self.writer is not None and self.bytes + table.nbytes > self.limit_bytes:
            self.close()
            self.chunk, self.file = next_file(self.chunk, self.file, self.chunks_size)
        if self.writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, self.schema, compression="snappy")
            self.bytes = 0
        self.writer.write_table(table)
        self.bytes += table.nbytes
        return self.chunk, self.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def lerobot_features(ds: Dataset, images: bool) -> dict[str, dict[str, Any]]:
    """info.json's `features`: state, action, cameras (as LeRobot image features), then LeRobot's
    bookkeeping columns; every feature carries the fps, as LeRobot's v3.0 conversion writes."""
    src = ds.info["features"]
    feats: dict[str, dict[str, Any]] = {}
    for name in (STATE_FEATURE, ACTION_FEATURE):
        feats[name] = {"dtype": "float32", "shape": [int(src[name]["shape"][0])], "names": src[name].get("names")}
    if images:
        for name in ds.image_features:
            # names: LeRobot's dataset_to_policy_features reads them to know the layout is HWC.
            feats[name] = {"dtype": "image", "shape": list(src[name]["shape"]),
                           "names": ["height", "width", "channel"]}
    feats.update({name: dict(spec) for name, spec in DEFAULT_FEATURES.items()})
    for spec in feats.values():
        spec["fps"] = ds.fps
    return feats


def _frame_table(ds: Dataset, ep: int, task_index: int, image_features: list[str],
                 schema: pa.Schema) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """One episode's rows in LeRobot's columns, and its arrays for the statistics."""
    arrays = ds.episode(ep, images=False)
    n = len(arrays["index"])
    numeric = {
        STATE_FEATURE: arrays[STATE_FEATURE].astype(np.float32),
        ACTION_FEATURE: arrays[ACTION_FEATURE].astype(np.float32),
        "timestamp": arrays["timestamp"].astype(np.float32),
        "frame_index": arrays["frame_index"].astype(np.int64),
        "episode_index": np.full(n, ep, dtype=np.int64),
        "index": arrays["index"].astype(np.int64),
        "task_index": np.full(n, task_index, dtype=np.int64),
    }
    columns: dict[str, pa.Array] = {}
    for field in schema:
        if field.name in image_features:
            continue
        values = numeric[field.name]
        if pa.types.is_fixed_size_list(field.type):
            columns[field.name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        else:
            columns[field.name] = pa.array(values, type=field.type)
    stats_arrays: dict[str, np.ndarray] = dict(numeric)
    if image_features:
        cams = {cam: IMAGE_FEATURES[cam] for cam in ds.cameras if IMAGE_FEATURES[cam] in image_features}
        png = ds.read_image_bytes(ep, list(cams))
        for cam, feat in cams.items():
            frames = png[cam]
            columns[feat] = pa.array([{"bytes": b, "path": None} for b in frames], type=schema.field(feat).type)
            stats_arrays[feat] = np.stack([decode_png(frames[i]) for i in sample_indices(n)])
    return pa.table([columns[f.name] for f in schema], schema=schema), stats_arrays


def episode_tags(ds: Dataset) -> list[dict[str, Any]]:
    """Each episode's EpisodeTags as plain values: extra columns of LeRobot's meta/episodes, which
    LeRobotDataset keeps (`meta.episodes["recovery"]`, ...) as it keeps every non-stats column."""
    return [EpisodeTags.from_row(row).columns() for row in ds.episodes.to_dict("records")]


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetError(out, "exists and is not a directory")
    is_lerobot = (out / INFO_PATH).is_file()
    if is_lerobot and not overwrite:
        raise DatasetError(out, "a LeRobot dataset already exists here; pass --overwrite to replace it")
    if not is_lerobot and any(out.iterdir()):
        raise DatasetError(out, "directory is not empty and is not a LeRobot dataset; choose another --out")


def export_lerobot(cfg: ExportConfig) -> Path:
    """Writes `cfg.out` from the Gauntlet dataset `cfg.dataset`; returns the LeRobot dataset's path."""
    ds = open_dataset(cfg.dataset)
    out = Path(cfg.out)
    _check_destination(out, cfg.overwrite)
    stage = staging_dir(out, "partial")
    try:
        _write(ds, cfg, stage)
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _write(ds: Dataset, cfg: ExportConfig, stage: Path) -> None:
    prompts = ds.episodes[PROMPT_COLUMN].astype(str).tolist()
    tasks = list(dict.fromkeys(prompts))  # first-appearance order: task_index is stable across exports
    task_index = {t: i for i, t in enumerate(tasks)}
    features = lerobot_features(ds, cfg.images)
    schema = data_schema(features)
    image_features = [f for f, spec in features.items() if spec["dtype"] == "image"]
    print(f"[{TAG}] {ds.root}: {ds.num_episodes} episodes, {ds.num_frames} frames, {len(tasks)} tasks, "
          f"cameras {image_features or 'none'} -> {cfg.out} (LeRobot {CODEBASE_VERSION})", flush=True)
    progress = Progress(ds.num_episodes, TAG, unit="episodes")
    files = _DataFiles(stage, schema, cfg.data_file_size_mb, cfg.chunks_size)
    rows: list[dict[str, Any]] = []
    tags = episode_tags(ds)
    ep_stats: list[dict[str, dict[str, np.ndarray]]] = []
    try:
        for ep in range(ds.num_episodes):
            table, arrays = _frame_table(ds, ep, task_index[prompts[ep]], image_features, schema)
            chunk, file = files.write(table)
            stats = {name: feature_stats(values, image=name in image_features) for name, values in arrays.items()}
            ep_stats.append(stats)
            start = int(ds.starts[ep])
            rows.append({"episode_index": ep, "tasks": [prompts[ep]], "length": table.num_rows,
                         "data/chunk_index": chunk, "data/file_index": file,
                         "dataset_from_index": start, "dataset_to_index": start + table.num_rows,
                         "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, **tags[ep],
                         **{f"stats/{name}/{k}": v.tolist() for name, s in stats.items() for k, v in s.items()}})
            progress.update(extra=f"data/chunk-{chunk:03d}/file-{file:03d}")
    finally:
        files.close()
    _write_meta(ds, cfg, stage, features, tasks, rows, aggregate_stats(ep_stats))
    if cfg.sim and ds.has_sim:
        shutil.copytree(ds.root / SIM_DIR, stage / SIM_DIR)


def _write_meta(ds: Dataset, cfg: ExportConfig, stage: Path, features: Mapping[str, Any], tasks: list[str],
                rows: list[dict[str, Any]], stats: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """meta/ as LeRobot writes it, plus Gauntlet's extras; info.json last (it makes the directory a
    dataset, though the staging directory is renamed into place only after everything is written)."""
    import pandas as pd

    episodes = stage / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), episodes)
    # LeRobot's write_tasks: the task string is the (unnamed) index, so pandas restores it as such.
    pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)}, index=tasks).to_parquet(stage / TASKS_PATH)
    write_json(stage / STATS_PATH, stats_to_json(stats), indent=4)
    extra = stage / EXTRA_INFO_PATH
    extra.parent.mkdir(parents=True, exist_ok=True)
    write_json(extra, {**ds.info, "exported_with_sim": bool(cfg.sim and ds.has_sim)}, indent=2)
    shutil.copyfile(ds.root / GAUNTLET_EPISODES_PATH, stage / EXTRA_EPISODES_PATH)
    write_json(stage / INFO_PATH, {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": ds.info.get("robot"),
        "total_episodes": ds.num_episodes,
        "total_frames": ds.num_frames,
        "total_tasks": len(tasks),
        "chunks_size": cfg.chunks_size,
        "data_files_size_in_mb": cfg.data_file_size_mb,
        "video_files_size_in_mb": VIDEO_FILE_SIZE_MB,
        "fps": ds.fps,
        "splits": {"train": f"0:{ds.num_episodes}"},  # as LeRobot writes; Gauntlet's splits are in gauntlet/
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
    }, indent=4)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExportConfig, argv, prog="gauntlet data export-lerobot", description=ExportConfig.__doc__)

    def work() -> int:
        out = export_lerobot(cfg)
        print(f"[{TAG}] wrote {out} (LeRobot {CODEBASE_VERSION}); load it with "
              f"LeRobotDataset('<repo_id>', root='{out}')", flush=True)
        return 0

    return run_command("gauntlet data export-lerobot", work, {DatasetError: 1})


if __name__ == "__main__":
    sys.exit(main())
