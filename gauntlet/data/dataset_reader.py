"""Reading a dataset: `Dataset` (or `open_dataset`) opens one, checks it cheaply and reads its columns.

Opening reads and checks `meta/info.json` and `meta/episodes.parquet` only; frames are read on
demand, whole numeric columns streamed in bounded chunks by parallel threads, images as PNG bytes
or decoded. Every error is a DatasetError naming the file, episode and field. The full pre-flight
that reads every frame is gauntlet.data.dataset_validation.validate.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gauntlet.data.dataset_schema import (
    EPISODE_COLUMNS,
    EPISODE_TAG_DEFAULTS,
    EPISODES_PATH,
    FRAME_SCALARS,
    IMAGE_FEATURES,
    INFO_PATH,
    SIM_PATH,
    STATS_PATH,
    XML_PATH,
    DatasetError,
    column_to_numpy,
    image_features_of,
    read_info,
)
from gauntlet.data.images import decode_png
from gauntlet.keys import ACTION_FEATURE, ACTIONS_KEY, STATE_FEATURE, STATE_KEY

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.data.normalization import NormStats


class Dataset:
    """A dataset directory, opened and checked (cheap checks only; `validate` reads every frame)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(self.root, "no such dataset (directory does not exist)")
        self.info = read_info(self.info_path)
        # read_info has checked these fields' presence and types
        self.num_frames = int(self.info["total_frames"])
        self.fps = int(self.info["fps"])
        self.state_dim = int(self.info["state_dim"])
        self.action_dim = int(self.info["action_dim"])
        self.episodes = self._read_episodes()
        self._lengths = self.episodes["length"].to_numpy(dtype=np.int64)
        self._starts = self.episodes["dataset_from_index"].to_numpy(dtype=np.int64)

    # ------------------------------------------------------------------------------ opening
    @property
    def info_path(self) -> Path:
        return self.root / INFO_PATH

    @property
    def episodes_path(self) -> Path:
        return self.root / EPISODES_PATH

    @property
    def stats_path(self) -> Path:
        return self.root / STATS_PATH

    def _read_episodes(self) -> pd.DataFrame:
        path = self.episodes_path
        if not path.is_file():
            raise DatasetError(path, "missing (the dataset's write was interrupted?)")
        try:
            frame = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(path, f"corrupt Parquet table ({exc})") from None
        for column, default in EPISODE_TAG_DEFAULTS.items():  # absent or null: the episode starts from a reset
            if column in frame.columns:
                frame[column] = frame[column].astype(object).where(frame[column].notna(), default)
            else:
                frame[column] = default
        missing = [c for c in EPISODE_COLUMNS if c not in frame.columns]
        if missing:
            raise DatasetError(path, f"missing columns {missing}")
        frame = frame.astype(EPISODE_COLUMNS)
        n = len(frame)
        if n != self.info["total_episodes"]:
            raise DatasetError(path, f"{n} rows but info.json total_episodes is {self.info['total_episodes']}")
        if not np.array_equal(frame["episode_index"].to_numpy(), np.arange(n)):
            raise DatasetError(path, "column 'episode_index' must be 0..N-1 in order")
        lengths = frame["length"].to_numpy(dtype=np.int64)
        if (lengths < 1).any():
            raise DatasetError(path, f"episode {int(np.argmax(lengths < 1))}: column 'length' must be >= 1")
        ends = np.cumsum(lengths)
        if not (np.array_equal(frame["dataset_to_index"].to_numpy(), ends)
                and np.array_equal(frame["dataset_from_index"].to_numpy(), ends - lengths)):
            raise DatasetError(path, "columns 'dataset_from_index'/'dataset_to_index' are not the running "
                                     "frame offsets of 'length'")
        total = int(ends[-1]) if n else 0
        if total != self.info["total_frames"]:
            raise DatasetError(path, f"lengths sum to {total} frames but info.json total_frames is "
                                     f"{self.info['total_frames']}")
        return frame

    # ---------------------------------------------------------------------------- properties
    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def image_features(self) -> list[str]:
        """Image columns present, e.g. ["observation.images.agentview", "observation.images.wrist"]."""
        return image_features_of(self.info)

    @property
    def cameras(self) -> list[str]:
        """Camera names present (keys of IMAGE_FEATURES)."""
        return [cam for cam, feat in IMAGE_FEATURES.items() if feat in self.image_features]

    def image_shape(self, camera: str) -> tuple[int, int, int]:
        feat = self.info["features"].get(IMAGE_FEATURES.get(camera, camera))
        if feat is None or feat.get("dtype") != "image":
            raise DatasetError(self.info_path, f"no image feature for camera {camera!r} (have {self.cameras})")
        h, w, c = feat["shape"]
        return int(h), int(w), int(c)

    @property
    def has_sim(self) -> bool:
        return bool(self.info.get("sim"))

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths.copy()

    @property
    def starts(self) -> np.ndarray:
        return self._starts.copy()

    def episode_path(self, episode: int) -> Path:
        self._check_episode(episode)
        chunk = episode // int(self.info["chunks_size"])
        return self.root / self.info["data_path"].format(chunk=chunk, episode=episode)

    def sim_path(self, episode: int) -> Path:
        self._check_episode(episode)
        return self.root / SIM_PATH.format(episode=episode)

    def xml_path(self, episode: int) -> Path:
        self._check_episode(episode)
        return self.root / XML_PATH.format(episode=episode)

    def _check_episode(self, episode: int) -> None:
        if not 0 <= int(episode) < self.num_episodes:
            raise DatasetError(self.episodes_path, f"no episode {episode} (the dataset has {self.num_episodes})")

    # ------------------------------------------------------------------------------- splits
    @property
    def split_names(self) -> list[str]:
        return list(self.info["splits"])

    def split(self, name: str) -> np.ndarray:
        """Episode indices of a split, as int64. Raises DatasetError if it is unknown or empty."""
        splits = self.info["splits"]
        if name not in splits:
            raise DatasetError(self.info_path, f"splits: no split {name!r} (have {sorted(splits)})")
        idx = np.asarray(splits[name], dtype=np.int64)
        if idx.size == 0:
            raise DatasetError(self.info_path, f"splits[{name!r}] is empty: no episodes to use")
        if idx.min() < 0 or idx.max() >= self.num_episodes:
            raise DatasetError(self.info_path, f"splits[{name!r}] names episodes outside 0..{self.num_episodes - 1}")
        return idx

    def frame_indices(self, episodes: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Global frame indices of these episodes (all if None), in episode order."""
        eps = np.arange(self.num_episodes) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if eps.size == 0:
            return np.zeros(0, dtype=np.int64)
        lengths = self._lengths[eps]
        offsets = np.repeat(self._starts[eps] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return np.arange(int(lengths.sum()), dtype=np.int64) + offsets

    # ------------------------------------------------------------------------------ reading
    def _read_table(self, episode: int, columns: Sequence[str]) -> pa.Table:
        path = self.episode_path(episode)
        if not path.is_file():
            raise DatasetError(path, f"episode {episode}: data file is missing")
        try:
            # ParquetFile.read is several times cheaper per file than pq.read_table (no dataset
            # discovery); callers parallelise across files, so no threads inside one read.
            pf = pq.ParquetFile(path)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise DatasetError(path, f"episode {episode}: missing column(s) {missing}")
            table = pf.read(columns=list(columns), use_threads=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(path, f"episode {episode}: corrupt or incomplete Parquet file ({exc})") from None
        if table.num_rows != self._lengths[episode]:
            raise DatasetError(path, f"episode {episode}: {table.num_rows} frames but meta/episodes.parquet "
                                     f"says length {self._lengths[episode]}")
        return table

    def _check_columns(self, columns: Sequence[str]) -> None:
        known = set(self.info["features"])
        for name in columns:
            if name not in known:
                raise DatasetError(self.info_path, f"features: no column {name!r} (have {sorted(known)})")

    def _numeric(self, episode: int, table: pa.Table, name: str) -> np.ndarray:
        arr = column_to_numpy(table.column(name))
        feat = self.info["features"][name]
        if name in (STATE_FEATURE, ACTION_FEATURE):
            want = int(feat["shape"][0])
            if arr.ndim != 2 or arr.shape[1] != want:
                raise DatasetError(self.episode_path(episode), f"episode {episode}: column {name!r} has shape "
                                                               f"{arr.shape[1:]}, features say [{want}] (dim mismatch)")
        return arr

    def iter_column_chunks(
        self, columns: Sequence[str], episodes: Sequence[int] | np.ndarray | None = None,
        frames_per_chunk: int = 262_144, threads: int = 2,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Streams numeric columns in chunks of roughly `frames_per_chunk` frames (whole episodes),
        reading files in parallel threads; memory stays bounded by the chunk size."""
        self._check_columns(columns)
        if any(c in self.image_features for c in columns):
            raise DatasetError(self.info_path, "image columns are read with .episode() or the loader")
        eps = np.arange(self.num_episodes) if episodes is None else np.asarray(episodes, dtype=np.int64)
        groups = _episode_groups(eps, self._lengths, frames_per_chunk)

        def read(ep: int) -> dict[str, np.ndarray]:
            table = self._read_table(ep, columns)
            return {c: self._numeric(ep, table, c) for c in columns}

        # The next chunk is read while the caller reduces this one (at most two chunks in memory).
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="dataset-read") as pool:
            pending = [pool.submit(read, e) for e in groups[0]] if groups else []
            try:
                for i in range(len(groups)):
                    parts = [f.result() for f in pending]
                    pending = [pool.submit(read, e) for e in groups[i + 1]] if i + 1 < len(groups) else []
                    yield {c: np.concatenate([p[c] for p in parts]) for c in columns}
            finally:
                for f in pending:
                    f.cancel()

    def load_columns(self, columns: Sequence[str] = (STATE_FEATURE, ACTION_FEATURE),
                     episodes: Sequence[int] | np.ndarray | None = None, threads: int = 2) -> dict[str, np.ndarray]:
        """Whole numeric columns of these episodes (all if None), concatenated in episode order:
        (N, D) for vector features, (N,) for scalars."""
        out: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        for chunk in self.iter_column_chunks(columns, episodes, frames_per_chunk=1 << 62, threads=threads):
            for c in columns:
                out[c].append(chunk[c])
        return {c: (np.concatenate(v) if v else np.zeros((0,), dtype=np.float32)) for c, v in out.items()}

    def read_image_bytes(self, episode: int, cameras: Sequence[str] | None = None) -> dict[str, list[bytes]]:
        """{camera: [PNG bytes per frame]} of one episode (undecoded)."""
        cams = self.cameras if cameras is None else list(cameras)
        for cam in cams:
            self.image_shape(cam)
        table = self._read_table(episode, [IMAGE_FEATURES[c] for c in cams])
        return {cam: table.column(IMAGE_FEATURES[cam]).to_pylist() for cam in cams}

    def episode(self, episode: int, images: bool = True, sim: bool = False) -> dict[str, Any]:
        """One episode as arrays: the frame columns under their names ("observation.state" (T, D),
        "action" (T, A), "index", "frame_index", "timestamp", "next.done"), decoded images under
        their feature names ((T, H, W, 3) uint8), and with `sim` "sim_states" (T, S) + "model_xml"."""
        columns = [STATE_FEATURE, ACTION_FEATURE, *FRAME_SCALARS]
        image_cols = self.image_features if images else []
        table = self._read_table(episode, columns + image_cols)
        out: dict[str, Any] = {c: self._numeric(episode, table, c) for c in columns}
        for name in image_cols:
            out[name] = np.stack([decode_png(b) for b in table.column(name).to_pylist()])
        if sim:
            out.update(self.sim(episode))
        return out

    def sim(self, episode: int) -> dict[str, Any]:
        """{"sim_states": (T, S) float64, "model_xml": str, plus any extra arrays stored with them}."""
        if not self.has_sim:
            raise DatasetError(self.info_path, "field 'sim' is empty: this dataset has no simulator states")
        path = self.sim_path(episode)
        if not path.is_file():
            raise DatasetError(path, f"episode {episode}: simulator state file is missing")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise DatasetError(path, f"episode {episode}: corrupt state file ({type(exc).__name__}: {exc})") from None
        if "states" not in arrays:
            raise DatasetError(path, f"episode {episode}: no 'states' array")
        xml = self.xml_path(episode)
        if not xml.is_file():
            raise DatasetError(xml, f"episode {episode}: model XML is missing")
        out: dict[str, Any] = {"sim_states": arrays.pop("states"), "model_xml": xml.read_text()}
        out.update(arrays)
        return out

    # -------------------------------------------------------------------------------- stats
    def load_norm_stats(self) -> NormStats:
        """The dataset's normalisation statistics (meta/stats.json, NormStats format)."""
        from gauntlet.data.normalization import NormStats, NormStatsError

        if not self.stats_path.is_file():
            raise DatasetError(self.stats_path, f"missing normalisation statistics; run "
                                                f"`gauntlet data stats {self.root}` first")
        try:
            stats = NormStats.load(self.stats_path)
            stats.check_dims({STATE_KEY: self.state_dim, ACTIONS_KEY: self.action_dim}, self.stats_path)
        except NormStatsError as exc:
            raise DatasetError(self.stats_path, f"{exc.message}; re-run `gauntlet data stats {self.root}`") from None
        return stats

    def __repr__(self) -> str:
        return (f"Dataset({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
                f"cameras={self.cameras}, splits={ {k: len(v) for k, v in self.info['splits'].items()} })")


def open_dataset(root: Path | str) -> Dataset:
    """The dataset at `root`, opened and cheaply checked (same as `Dataset(root)`)."""
    return Dataset(root)


def _episode_groups(episodes: np.ndarray, lengths: np.ndarray, frames_per_chunk: int) -> list[list[int]]:
    """Consecutive runs of whole episodes holding at least `frames_per_chunk` frames each (the last may hold fewer)."""
    groups: list[list[int]] = []
    current: list[int] = []
    count = 0
    for e in episodes.tolist():
        current.append(e)
        count += int(lengths[e])
        if count >= frames_per_chunk:
            groups.append(current)
            current, count = [], 0
    if current:
        groups.append(current)
    return groups


def describe(ds: Dataset) -> str:
    """One human line about a dataset."""
    splits = ", ".join(f"{k}={len(v)}" for k, v in ds.info["splits"].items())
    seconds = ds.num_frames / ds.fps if ds.fps else math.nan
    return (f"{ds.root}: {ds.num_episodes} episodes, {ds.num_frames} frames ({seconds / 60:.1f} min at "
            f"{ds.fps} fps), cameras={ds.cameras or 'none'}, splits: {splits}{_describe_recovery(ds)}")


def _describe_recovery(ds: Dataset) -> str:
    """", recovery: E episodes, F frames (by error type: ...; by origin: ...)", or "" without any."""
    eps = ds.episodes[ds.episodes["recovery"].astype(bool)]
    if eps.empty:
        return ""

    def counts(column: str) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(eps[column].astype(str).value_counts().items()))

    return (f"; recovery: {len(eps)} episodes, {int(eps['length'].sum())} frames (by error type: "
            f"{counts('error_type')}; by origin: {counts('origin')})")
