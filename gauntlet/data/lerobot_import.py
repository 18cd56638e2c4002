"""`gauntlet data import-lerobot DIR --out DS`: a LeRobot v3.0 dataset as a Gauntlet dataset.

Reads what lerobot 0.4.x to 0.6.x write (and what openpi's LIBERO training data uses): meta/info.json,
meta/tasks.parquet, meta/episodes/*/*.parquet and data/*/*.parquet, with image features embedded as
{bytes, path} structs, and video features from videos/*/*/*.mp4 (decoded with PyAV: lerobot_video). Which LeRobot feature becomes Gauntlet's state, action and each camera is a
mapping the user can set (`--state-feature`, `--action-feature`, `--camera agentview=...`); the
defaults find Gauntlet's own names and LIBERO's (`observation.images.image`, `...wrist_image`).

Everything that can be checked without reading frames (version, features, files) is checked before
any work, and the message names the file and the field. Data files are read one at a time (each
holds many episodes) and split by `episode_index`, so memory is bounded by one file. A dataset that
Gauntlet exported comes back whole: its `gauntlet/` episode table restores task, variant, success,
split and seed, and its `sim/` folder the simulator states.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gauntlet.data.commands import run_dataset_command
from gauntlet.data.dataset_schema import (
    EPISODE_TAG_DEFAULTS,
    IMAGE_FEATURES,
    SIM_PATH,
    XML_PATH,
    DatasetError,
    EpisodeTags,
    column_to_numpy,
)
from gauntlet.data.dataset_writer import DatasetWriter
from gauntlet.data.images import decode_png, resize_image
from gauntlet.data.lerobot_format import (
    EPISODES_DIR,
    EXTRA_EPISODES_PATH,
    EXTRA_INFO_PATH,
    INFO_PATH,
    TASKS_PATH,
    feature_names,
    read_info,
)
from gauntlet.data.lerobot_video import (
    VideoSpan,
    check_video_file,
    decode_episode,
    episode_span,
    is_depth_map,
    span_columns,
)
from gauntlet.keys import ACTION_FEATURE, PROMPT_COLUMN, STATE_FEATURE, image_feature
from gauntlet.runtime.config_args import option, parse_config, require_at_least
from gauntlet.runtime.progress import Progress

TAG = "data import-lerobot"
# Gauntlet camera -> LeRobot features tried when --camera does not name one (Gauntlet's, then LIBERO's).
CAMERA_CANDIDATES: dict[str, tuple[str, ...]] = {
    "agentview": (image_feature("agentview"), image_feature("image"), "image"),
    "wrist": (image_feature("wrist"), image_feature("wrist_image"), "wrist_image"),
}
_EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index")
_NUMERIC = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")


@dataclass(frozen=True)
class ImportConfig:
    """Imports a LeRobot v3.0 dataset (lerobot 0.4.x to 0.6.x; openpi's LIBERO data) into a Gauntlet dataset."""

    source: str = option(help="LeRobot dataset directory (the `root` of LeRobotDataset)", positional=True)
    out: str = option(help="Gauntlet dataset directory to create")
    state_feature: str = option(STATE_FEATURE, help="LeRobot feature that becomes Gauntlet's state")
    action_feature: str = option(ACTION_FEATURE, help="LeRobot feature that becomes Gauntlet's action")
    camera: tuple[str, ...] = option((), help="CAMERA=FEATURE: a Gauntlet camera (agentview, wrist) and the "
                                             "LeRobot image feature it is read from, e.g. agentview="
                                             "observation.images.image (default: found by name)")
    images: bool = option(True, help="import camera images")
    image_size: int = option(0, help="resize images to this square size (pixels; 0 = keep)")
    task: str = option("", help="task name for the episodes (default: the exported Gauntlet task, else 'lerobot')")
    variant: str = option("", help="variant for the episodes (default: the exported Gauntlet variant, else 'D0')")
    limit: int = option(0, help="import at most this many episodes (0 = all), in episode order")
    overwrite: bool = option(False, help="replace an existing dataset at --out")

    def __post_init__(self) -> None:
        require_at_least(self, 0, "image_size", "limit")
        for item in self.camera:
            cam, sep, feat = item.partition("=")
            if not sep or not feat:
                raise ValueError(f"camera: {item!r} is not CAMERA=FEATURE (e.g. agentview=observation.images.image)")
            if cam not in IMAGE_FEATURES:
                raise ValueError(f"camera: unknown camera {cam!r} in {item!r}; known: {sorted(IMAGE_FEATURES)}")

    @property
    def camera_map(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.camera)


@dataclass(frozen=True)
class _Plan:
    """What will be imported, decided (and checked) before any frame is read."""

    root: Path
    info: dict[str, Any]
    cameras: dict[str, str]  # Gauntlet camera -> LeRobot feature
    episodes: Any  # pandas DataFrame of meta/episodes, sorted by episode_index
    tasks: dict[int, str]  # task_index -> task string
    videos: dict[int, dict[str, VideoSpan]]  # episode_index -> LeRobot video feature -> where its frames lie
    extra: Any  # Gauntlet's own episode table when the dataset is a Gauntlet export, else None
    has_sim: bool


def _vector(info: dict[str, Any], path: Path, name: str, flag: str) -> int:
    feat = info["features"].get(name)
    if feat is None:
        raise DatasetError(path, f"features: no {name!r} (have {sorted(info['features'])}); choose one with {flag}")
    if feat["dtype"] not in _NUMERIC or len(feat["shape"]) != 1:
        raise DatasetError(path, f"features[{name!r}]: needs a numeric 1-D feature, got dtype {feat['dtype']!r} "
                                 f"shape {feat['shape']}")
    return int(feat["shape"][0])


def _cameras(cfg: ImportConfig, info: dict[str, Any], path: Path) -> dict[str, str]:
    """The camera mapping: --camera's, else each Gauntlet camera's first candidate present."""
    if not cfg.images:
        return {}
    feats = info["features"]
    chosen = cfg.camera_map or {cam: next(c for c in cands if c in feats)
                                for cam, cands in CAMERA_CANDIDATES.items() if any(c in feats for c in cands)}
    for cam, name in chosen.items():
        if name not in feats:
            raise DatasetError(path, f"features: no {name!r} for --camera {cam}={name} (image features: "
                                     f"{sorted(k for k, f in feats.items() if f['dtype'] in ('image', 'video'))})")
        if feats[name]["dtype"] not in ("image", "video"):
            raise DatasetError(path, f"features[{name!r}]: dtype {feats[name]['dtype']!r} is not an image")
        if is_depth_map(feats[name]):
            raise DatasetError(path, f"features[{name!r}]: a depth map, not an RGB camera; map --camera to "
                                     "an RGB feature")
    return chosen


def _read_parquet(path: Path, what: str) -> pa.Table:
    if not path.is_file():
        raise DatasetError(path, f"missing ({what})")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(path, f"corrupt Parquet file ({exc})") from None


def _episodes(root: Path, info: dict[str, Any]) -> Any:
    files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise DatasetError(root / EPISODES_DIR, "no chunk-*/file-*.parquet: the episode table is missing")
    tables = [_read_parquet(f, "the episode table") for f in files]
    # Per-episode statistics are not needed (and are most of the table): dropped, as LeRobot does.
    tables = [t.select([c for c in t.column_names if not c.startswith("stats/")]) for t in tables]
    frame = pa.concat_tables(tables, promote_options="default").to_pandas()
    for col in _EPISODE_COLUMNS:
        if col not in frame.columns:
            raise DatasetError(files[0], f"missing column {col!r}")
    frame = frame.sort_values("episode_index").reset_index(drop=True)
    if len(frame) != info["total_episodes"]:
        raise DatasetError(root / INFO_PATH, f"field 'total_episodes' is {info['total_episodes']} but "
                                             f"{EPISODES_DIR} has {len(frame)} rows")
    return frame


def _tasks(root: Path) -> dict[int, str]:
    """task_index -> task string. LeRobot stores the string as the pandas index; a `task` column
    (as some converters write) is accepted too."""
    frame = _read_parquet(root / TASKS_PATH, "the task table").to_pandas()
    if "task_index" not in frame.columns:
        raise DatasetError(root / TASKS_PATH, "missing column 'task_index'")
    names = frame["task"] if "task" in frame.columns else frame.index
    return {int(i): str(t) for i, t in zip(frame["task_index"], names, strict=True)}


def _video_spans(root: Path, info: dict[str, Any], episodes: Any, keys: list[str]) -> dict[int, dict[str, VideoSpan]]:
    """Each planned episode's span in each video feature's files, every file opened and checked."""
    if keys and not isinstance(info.get("video_path"), str):
        raise DatasetError(root / INFO_PATH, f"field 'video_path' is missing but {keys} are video features")
    for key in keys:
        absent = [c for c in span_columns(key) if c not in episodes.columns]
        if absent:
            raise DatasetError(root / EPISODES_DIR, f"missing column(s) {absent}: the episodes' places in {key!r}'s videos")
    spans = {int(row["episode_index"]): {key: episode_span(root, info, row, key) for key in keys}
             for _, row in episodes.iterrows()} if keys else {}
    by_file: dict[Path, list[tuple[int, VideoSpan]]] = {}
    for ep, per_key in spans.items():
        for span in per_key.values():
            by_file.setdefault(span.path, []).append((ep, span))
    for path, placed in sorted(by_file.items()):
        check_video_file(path, placed)
    return spans


def plan(cfg: ImportConfig) -> _Plan:
    """Every check that needs no frames: version, features, mapping, the files the episodes name."""
    root = Path(cfg.source)
    info = read_info(root)
    _vector(info, root / INFO_PATH, cfg.state_feature, "--state-feature")
    _vector(info, root / INFO_PATH, cfg.action_feature, "--action-feature")
    cameras = _cameras(cfg, info, root / INFO_PATH)
    episodes = _episodes(root, info)
    if cfg.limit:
        episodes = episodes.iloc[: cfg.limit]
    for chunk, file in sorted(set(zip(episodes["data/chunk_index"], episodes["data/file_index"], strict=True))):
        path = root / info["data_path"].format(chunk_index=int(chunk), file_index=int(file))
        if not path.is_file():
            raise DatasetError(path, f"missing: {EPISODES_DIR} places episodes in it (data/chunk_index={chunk}, "
                                     f"data/file_index={file})")
    videos = _video_spans(root, info, episodes, [f for f in cameras.values() if info["features"][f]["dtype"] == "video"])
    extra = None
    if (root / EXTRA_EPISODES_PATH).is_file():
        extra = _read_parquet(root / EXTRA_EPISODES_PATH, "Gauntlet's episode table").to_pandas()
    has_sim = extra is not None and (root / EXTRA_INFO_PATH).is_file() and (root / "sim").is_dir()
    return _Plan(root, info, cameras, episodes, _tasks(root), videos, extra, has_sim)


def _file_episodes(p: _Plan, cfg: ImportConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    """(episode_index, {column: rows}) for every planned episode, one data file read at a time."""
    embedded = [name for name in p.cameras.values() if p.info["features"][name]["dtype"] != "video"]
    columns = [cfg.state_feature, cfg.action_feature, "episode_index", "frame_index", "task_index",
               *(["timestamp"] if p.videos else []), *embedded]
    groups = p.episodes.groupby(["data/chunk_index", "data/file_index"], sort=True)
    for (chunk, file), eps in groups:
        path = p.root / p.info["data_path"].format(chunk_index=int(chunk), file_index=int(file))
        have = pq.read_schema(path).names
        missing = [c for c in columns if c not in have and c not in ("frame_index", "task_index")]
        if missing:
            raise DatasetError(path, f"missing column(s) {missing}")
        table = pq.read_table(path, columns=[c for c in dict.fromkeys(columns) if c in have])
        ep_col = table.column("episode_index").to_numpy()
        for ep, length in zip(eps["episode_index"], eps["length"], strict=True):
            rows = table.filter(pa.array(ep_col == ep))
            if "frame_index" in rows.column_names:
                rows = rows.sort_by("frame_index")
            if rows.num_rows != length:
                raise DatasetError(path, f"episode {ep}: {rows.num_rows} frames but {EPISODES_DIR} says length {length}")
            yield int(ep), {name: rows.column(name) for name in rows.column_names}


def _images(p: _Plan, cfg: ImportConfig, ep: int, rows: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for cam, name in p.cameras.items():
        if name in p.videos.get(ep, {}):
            decoded = decode_episode(p.videos[ep][name], column_to_numpy(rows["timestamp"]).reshape(-1), ep)
            out[cam] = np.stack([resize_image(img, cfg.image_size) for img in decoded]) if cfg.image_size else decoded
            continue
        frames = []
        for i, cell in enumerate(rows[name].to_pylist()):
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            if not data:
                raise DatasetError(p.root, f"episode {ep} frame {i}: {name!r} has no embedded image bytes "
                                           "(image files referenced by path are not supported)")
            img = decode_png(data)  # OpenCV's imdecode: PNG and JPEG alike
            frames.append(resize_image(img, cfg.image_size) if cfg.image_size else img)
        out[cam] = np.stack(frames)
    return out


def _meta(p: _Plan, cfg: ImportConfig, ep: int, rows: dict[str, Any]) -> dict[str, Any]:
    """The episode's Gauntlet metadata: from Gauntlet's own table when it was exported by Gauntlet."""
    import pandas as pd

    task_idx = rows.get("task_index")
    if task_idx is not None and len(task_idx):
        prompt = p.tasks.get(int(task_idx[0].as_py()))
    else:
        listed = p.episodes.loc[p.episodes["episode_index"] == ep, "tasks"] if "tasks" in p.episodes else []
        prompt = str(list(listed.iloc[0])[0]) if len(listed) else None
    meta = {"task": cfg.task or "lerobot", "variant": cfg.variant or "D0", PROMPT_COLUMN: prompt or "",
            "success": True, "split": "train", "seed": None, "fingerprint": "", "source_episode": f"episode_{ep:06d}"}
    if p.extra is not None and ep < len(p.extra):
        row = p.extra.iloc[ep]
        seed = row["seed"]  # nullable: <NA> for imported demos
        meta.update(task=cfg.task or str(row["task"]), variant=cfg.variant or str(row["variant"]),
                    success=bool(row["success"]), split=str(row["split"]), fingerprint=str(row["fingerprint"]),
                    seed=None if pd.isna(seed) else int(seed),
                    source_episode=str(row["source_episode"]) or meta["source_episode"])
    tagged = p.episodes[p.episodes["episode_index"] == ep]
    if len(tagged) and set(EPISODE_TAG_DEFAULTS) <= set(p.episodes.columns):  # e.g. a Gauntlet export's tags
        meta["tags"] = EpisodeTags.from_row(tagged.iloc[0])
    return meta


def _sim(p: _Plan, ep: int) -> dict[str, Any]:
    if not p.has_sim:
        return {}
    npz, xml = p.root / SIM_PATH.format(episode=ep), p.root / XML_PATH.format(episode=ep)
    if not npz.is_file() or not xml.is_file():
        raise DatasetError(npz, f"episode {ep}: simulator state file is missing (the export has sim/)")
    with np.load(npz, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return {"sim_states": arrays.pop("states"), "model_xml": xml.read_text(), "sim_extra": arrays}


def import_lerobot(cfg: ImportConfig) -> Path:
    """Imports `cfg.source` into `cfg.out`; returns the Gauntlet dataset's path."""
    import json

    p = plan(cfg)
    feats = p.info["features"]
    state_dim, action_dim = int(feats[cfg.state_feature]["shape"][0]), int(feats[cfg.action_feature]["shape"][0])
    gauntlet_info = json.loads((p.root / EXTRA_INFO_PATH).read_text()) if p.extra is not None else {}
    source = {"kind": "lerobot", "dir": str(p.root.resolve()), "codebase_version": p.info["codebase_version"],
              "state_feature": cfg.state_feature, "action_feature": cfg.action_feature, "cameras": p.cameras}
    print(f"[{TAG}] {p.root}: {len(p.episodes)} episodes (LeRobot {p.info['codebase_version']}), state="
          f"{cfg.state_feature}[{state_dim}] action={cfg.action_feature}[{action_dim}] cameras={p.cameras} "
          f"-> {cfg.out}", flush=True)
    progress = Progress(len(p.episodes), TAG, unit="episodes")
    with DatasetWriter(cfg.out, source=source, fps=int(round(p.info["fps"])), robot=p.info.get("robot_type") or
                       "unknown", state_dim=state_dim, action_dim=action_dim, envs=gauntlet_info.get("envs"),
                       overwrite=cfg.overwrite, state_names=feature_names(feats[cfg.state_feature]),
                       action_names=feature_names(feats[cfg.action_feature])) as writer:
        for ep, rows in _file_episodes(p, cfg):
            state = column_to_numpy(rows[cfg.state_feature])
            action = column_to_numpy(rows[cfg.action_feature])
            images = _images(p, cfg, ep, rows) or None
            try:
                writer.add_episode(state, action, images=images, **_meta(p, cfg, ep, rows), **_sim(p, ep))
            except DatasetError as exc:
                raise DatasetError(p.root, f"episode {ep}: {exc.problem}") from None
            progress.update(extra=f"frames={writer.num_frames}")
        return writer.finalize()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ImportConfig, argv, prog="gauntlet data import-lerobot", description=ImportConfig.__doc__)
    return run_dataset_command("gauntlet data import-lerobot", TAG, lambda: import_lerobot(cfg))


if __name__ == "__main__":
    sys.exit(main())
