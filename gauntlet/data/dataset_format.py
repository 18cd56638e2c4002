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

`DatasetWriter` stages everything in a hidden sibling directory and renames it into place in
`finalize()`, after `meta/info.json` is written, so an interrupted write never leaves anything at
the destination that reads as a dataset. `Dataset` (or `open_dataset`) reads one; `validate` is the
pre-flight a training job runs before it starts workers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gauntlet.keys import ACTION_FEATURE, ACTIONS_KEY, STATE_FEATURE, STATE_KEY
from gauntlet.runtime.atomic_files import atomic_write

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.data.normalization import NormStats

FORMAT_NAME = "gauntlet-dataset"
FORMAT_VERSION = 1
DATA_PATH = "data/chunk-{chunk:03d}/episode_{episode:06d}.parquet"
SIM_PATH = "sim/episode_{episode:06d}.npz"
XML_PATH = "sim/episode_{episode:06d}.xml"
CHUNKS_SIZE = 1000  # episodes per data/chunk-NNN directory
DEFAULT_FPS = 20

# camera name (add_episode's `images` keys) -> feature / column name
IMAGE_FEATURES: dict[str, str] = {
    "agentview": "observation.images.agentview",
    "wrist": "observation.images.wrist",
}
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
    "prompt": "string",  # the language instruction
    "success": "bool",
    "split": "string",
    "seed": "Int64",  # env reset seed; <NA> when unknown (imported demos)
    "fingerprint": "string",  # env fingerprint (collected) or "sha256:" model-XML hash (imported)
    "source_episode": "string",  # provenance: e.g. the HDF5 demo name
}
_FRAME_SCALARS = ("index", "episode_index", "frame_index", "timestamp", "next.done")


class DatasetError(ValueError):
    """A dataset (or one file of it) is missing, malformed or unusable; names the file and field."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


# ------------------------------------------------------------------------------------ helpers
def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))  # OpenCV writes BGR
    if not ok:
        raise ValueError(f"could not PNG-encode an image of shape {image.shape}")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 RGB. OpenCV releases the GIL, so threads decode in parallel."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a decodable PNG image")
    return np.ascontiguousarray(img[..., ::-1])


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes to (size, size) exactly as the eval path does (gauntlet.platform.eval.episode.filter_obs:
    OpenCV INTER_AREA), so training images match what policies are sent at evaluation."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def data_path(episode: int, chunks_size: int = CHUNKS_SIZE) -> str:
    return DATA_PATH.format(chunk=episode // chunks_size, episode=episode)


def _fixed_list(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
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


def _first_nonfinite(arr: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first NaN/inf in a 2-D array, or None."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    row = int(np.argmax(bad.any(axis=1)))
    return row, int(np.argmax(bad[row]))


# ------------------------------------------------------------------------------------- writer
class DatasetWriter:
    """Writes a dataset episode by episode; nothing appears at `root` until `finalize()`.

    Use as a context manager: an exception aborts (the staging directory is removed), a clean exit
    finalizes if `finalize()` was not called.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        source: Mapping[str, Any],
        fps: int = DEFAULT_FPS,
        robot: str = "Panda",
        state_dim: int = 8,
        action_dim: int = 7,
        envs: Mapping[str, Mapping[str, Any]] | None = None,
        chunks_size: int = CHUNKS_SIZE,
        overwrite: bool = False,
        state_names: Sequence[str] | None = None,
        action_names: Sequence[str] | None = None,
    ):
        self.root = Path(root)
        if "kind" not in source:
            raise ValueError("source: needs a 'kind' ('collect' or 'hdf5') for provenance")
        if fps <= 0 or state_dim <= 0 or action_dim <= 0 or chunks_size <= 0:
            raise ValueError(f"fps, state_dim, action_dim and chunks_size must be positive, got "
                             f"{fps}, {state_dim}, {action_dim}, {chunks_size}")
        if self.root.exists():
            if not self.root.is_dir():
                raise DatasetError(self.root, "exists and is not a directory")
            if (self.root / "meta" / "info.json").exists() and not overwrite:
                raise DatasetError(self.root, "a dataset already exists here; pass --overwrite to replace it")
            if any(self.root.iterdir()) and not (self.root / "meta" / "info.json").exists():
                raise DatasetError(self.root, "directory is not empty and is not a dataset; choose another --out")
        self.source = dict(source)
        self.fps = int(fps)
        self.robot = robot
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.envs: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (envs or {}).items()}
        self.chunks_size = int(chunks_size)
        self.overwrite = overwrite
        self.state_names = list(state_names) if state_names is not None else (
            STATE_NAMES if state_dim == len(STATE_NAMES) else None)
        self.action_names = list(action_names) if action_names is not None else (
            ACTION_NAMES if action_dim == len(ACTION_NAMES) else None)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.stage = self.root.parent / f".{self.root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stage.mkdir()
        self._rows: list[dict[str, Any]] = []
        self._frames = 0
        self._image_shapes: dict[str, tuple[int, ...]] | None = None  # decided by the first episode
        self._has_sim: bool | None = None
        self._sim_dim: int | None = None
        self._done = False

    # ----------------------------------------------------------------------------- context
    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.finalize()

    @property
    def num_episodes(self) -> int:
        return len(self._rows)

    @property
    def num_frames(self) -> int:
        return self._frames

    def register_env(self, task: str, meta: Mapping[str, Any]) -> None:
        """Env metadata for a task (env name, robot, controller/env_args); goes into info.json."""
        self.envs[task] = dict(meta)

    # ------------------------------------------------------------------------------ episodes
    def add_episode(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        *,
        task: str,
        variant: str,
        prompt: str,
        success: bool,
        sim_states: np.ndarray | None = None,
        model_xml: str | None = None,
        images: Mapping[str, np.ndarray] | None = None,
        split: str = "train",
        seed: int | None = None,
        fingerprint: str = "",
        source_episode: str = "",
        sim_extra: Mapping[str, np.ndarray] | None = None,
    ) -> int:
        """Writes one episode's files (each atomically) and returns its episode index.

        states (T, state_dim), actions (T, action_dim): per frame, the action applied at that frame.
        sim_states (T, S) float64; model_xml the MuJoCo XML; images {camera: (T, H, W, 3) uint8}
        with cameras from IMAGE_FEATURES; sim_extra: more arrays for the episode's .npz (e.g. the
        exact initial state), plain numeric/string arrays only.
        """
        if self._done:
            raise RuntimeError("finalize() or abort() was already called")
        ep = len(self._rows)
        where = f"episode {ep}"
        states = np.asarray(states, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float32)
        if states.ndim != 2 or states.shape[1] != self.state_dim or states.shape[0] < 1:
            raise DatasetError(self.root, f"{where}: states must have shape (T>=1, {self.state_dim}), got {states.shape}")
        n = states.shape[0]
        if actions.shape != (n, self.action_dim):
            raise DatasetError(self.root, f"{where}: actions must have shape ({n}, {self.action_dim}), got {actions.shape}")
        for name, arr in (("states", states), ("actions", actions)):
            bad = _first_nonfinite(arr)
            if bad is not None:
                raise DatasetError(self.root, f"{where} frame {bad[0]}: {name}[{bad[1]}] is {arr[bad]} (NaN/inf)")
        if not split:
            raise DatasetError(self.root, f"{where}: split must be a non-empty name")
        # Images: the first episode decides which cameras (and sizes) the dataset has.
        images = dict(images or {})
        unknown = sorted(set(images) - set(IMAGE_FEATURES))
        if unknown:
            raise DatasetError(self.root, f"{where}: unknown camera(s) {unknown}; known: {sorted(IMAGE_FEATURES)}")
        shapes = {}
        for cam, arr in images.items():
            arr = np.asarray(arr)
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != n or arr.shape[3] != 3:
                raise DatasetError(self.root, f"{where}: images[{cam!r}] must be ({n}, H, W, 3) uint8, "
                                              f"got {arr.shape} {arr.dtype}")
            shapes[cam] = tuple(int(s) for s in arr.shape[1:])
        if self._image_shapes is None:
            self._image_shapes = shapes
        elif shapes != self._image_shapes:
            raise DatasetError(self.root, f"{where}: images {shapes} differ from the dataset's {self._image_shapes} "
                                          "(every episode needs the same cameras at the same size)")
        has_sim = sim_states is not None
        if self._has_sim is None:
            self._has_sim = has_sim
        elif has_sim != self._has_sim:
            raise DatasetError(self.root, f"{where}: sim_states {'given' if has_sim else 'missing'}, but not "
                                          "for earlier episodes (all or none)")
        sim = None
        if sim_states is not None:
            sim = np.asarray(sim_states, dtype=np.float64)
            if sim.ndim != 2 or sim.shape[0] != n:
                raise DatasetError(self.root, f"{where}: sim_states must have shape ({n}, S), got {sim.shape}")
            if model_xml is None:
                raise DatasetError(self.root, f"{where}: sim_states given without model_xml")

        start = self._frames
        frame_index = np.arange(n, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        done[-1] = True
        columns: dict[str, pa.Array] = {
            "index": pa.array(start + frame_index),
            "episode_index": pa.array(np.full(n, ep, dtype=np.int64)),
            "frame_index": pa.array(frame_index),
            "timestamp": pa.array((frame_index / self.fps).astype(np.float32)),
            STATE_FEATURE: _fixed_list(states, self.state_dim),
            ACTION_FEATURE: _fixed_list(actions, self.action_dim),
            "next.done": pa.array(done),
        }
        for cam in sorted(images):
            columns[IMAGE_FEATURES[cam]] = pa.array([encode_png(img) for img in np.asarray(images[cam])],
                                                    type=pa.binary())
        table = pa.table(columns)
        atomic_write(self.stage / data_path(ep, self.chunks_size), lambda tmp: pq.write_table(table, tmp))
        if sim is not None:
            arrays = {"states": sim}
            for key, value in (sim_extra or {}).items():
                value = np.asarray(value)
                if value.dtype == object:
                    raise DatasetError(self.root, f"{where}: sim_extra[{key!r}] has dtype object")
                arrays[key] = value

            def write_npz(tmp: str) -> None:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, **arrays)

            atomic_write(self.stage / SIM_PATH.format(episode=ep), write_npz)
            atomic_write_text(self.stage / XML_PATH.format(episode=ep), str(model_xml))
        self._rows.append({
            "episode_index": ep, "length": n, "dataset_from_index": start, "dataset_to_index": start + n,
            "task": task, "variant": variant, "prompt": prompt, "success": bool(success), "split": split,
            "seed": None if seed is None else int(seed), "fingerprint": fingerprint,
            "source_episode": source_episode,
        })
        self._frames += n
        return ep

    # ------------------------------------------------------------------------------ finishing
    def info(self) -> dict[str, Any]:
        from gauntlet import __version__

        features: dict[str, Any] = {
            STATE_FEATURE: {"dtype": "float32", "shape": [self.state_dim], "names": self.state_names},
            ACTION_FEATURE: {"dtype": "float32", "shape": [self.action_dim], "names": self.action_names},
        }
        for cam, shape in sorted((self._image_shapes or {}).items()):
            features[IMAGE_FEATURES[cam]] = {"dtype": "image", "shape": list(shape),
                                             "names": ["height", "width", "channel"], "encoding": "png"}
        features.update({
            "episode_index": {"dtype": "int64", "shape": [1]},
            "frame_index": {"dtype": "int64", "shape": [1]},
            "timestamp": {"dtype": "float32", "shape": [1]},
            "index": {"dtype": "int64", "shape": [1]},
            "next.done": {"dtype": "bool", "shape": [1]},
        })
        splits: dict[str, list[int]] = {}
        for row in self._rows:
            splits.setdefault(row["split"], []).append(row["episode_index"])
        info: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fps": self.fps,
            "total_episodes": len(self._rows),
            "total_frames": self._frames,
            "robot": self.robot,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "features": features,
            "data_path": DATA_PATH,
            "chunks_size": self.chunks_size,
            "source": self.source,
            "splits": splits,
            "envs": self.envs,
            "sim": None if not self._has_sim else {
                "states_path": SIM_PATH, "model_xml_path": XML_PATH,
                "states": "robomimic flattened MuJoCo state per frame: [time, qpos, qvel], float64",
            },
            "gauntlet_version": __version__,
        }
        return info

    def finalize(self) -> Path:
        """Writes meta/ and moves the dataset into place. Returns `root`."""
        import pandas as pd

        if self._done:
            raise RuntimeError("finalize() or abort() was already called")
        if not self._rows:
            self.abort()
            raise DatasetError(self.root, "no episodes were added; an empty dataset is not written")
        frame = pd.DataFrame(self._rows, columns=list(EPISODE_COLUMNS)).astype(EPISODE_COLUMNS)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        atomic_write(self.stage / "meta" / "episodes.parquet", lambda tmp: pq.write_table(table, tmp))
        # info.json last: it is what makes a directory read as a dataset.
        atomic_write_text(self.stage / "meta" / "info.json", json.dumps(self.info(), indent=2))
        trash = None
        if self.root.exists():
            if (self.root / "meta" / "info.json").exists():
                if not self.overwrite:
                    self.abort()
                    raise DatasetError(self.root, "a dataset appeared here while writing; not overwritten")
                trash = self.root.parent / f".{self.root.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(self.root, trash)
            else:
                self.root.rmdir()  # empty (checked in __init__); fails loudly if something appeared
        os.replace(self.stage, self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        self._done = True
        return self.root

    def abort(self) -> None:
        """Discards everything written so far (nothing at `root` is touched)."""
        self._done = True
        shutil.rmtree(self.stage, ignore_errors=True)


# ------------------------------------------------------------------------------------- reader
def _require(info: Mapping[str, Any], path: Path, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in info:
        raise DatasetError(path, f"missing field {key!r}")
    value = info[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise DatasetError(path, f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


class Dataset:
    """A dataset directory, opened and checked (cheap checks only; `validate` reads every frame)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(self.root, "no such dataset (directory does not exist)")
        self.info = self._read_info()
        self.episodes = self._read_episodes()
        self._lengths = self.episodes["length"].to_numpy(dtype=np.int64)
        self._starts = self.episodes["dataset_from_index"].to_numpy(dtype=np.int64)

    # ------------------------------------------------------------------------------ opening
    @property
    def info_path(self) -> Path:
        return self.root / "meta" / "info.json"

    @property
    def episodes_path(self) -> Path:
        return self.root / "meta" / "episodes.parquet"

    @property
    def stats_path(self) -> Path:
        return self.root / "meta" / "stats.json"

    def _read_info(self) -> dict[str, Any]:
        path = self.info_path
        if not path.is_file():
            raise DatasetError(path, "missing: not a dataset, or its write was interrupted "
                                     "(create one with `gauntlet data collect` or `gauntlet data import-hdf5`)")
        try:
            info = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(path, f"garbled JSON ({exc})") from None
        if not isinstance(info, dict):
            raise DatasetError(path, "expected a JSON object")
        if info.get("format") != FORMAT_NAME:
            raise DatasetError(path, f"field 'format' is {info.get('format')!r}, expected {FORMAT_NAME!r}")
        version = info.get("format_version")
        if version != FORMAT_VERSION:
            raise DatasetError(path, f"field 'format_version' is {version!r}; this code reads version "
                                     f"{FORMAT_VERSION} (re-create the dataset with this gauntlet version)")
        for key in ("fps", "total_episodes", "total_frames", "state_dim", "action_dim", "chunks_size"):
            _require(info, path, key, int)
        _require(info, path, "features", dict)
        _require(info, path, "splits", dict)
        _require(info, path, "data_path", str)
        features = info["features"]
        for name, dim_key in ((STATE_FEATURE, "state_dim"), (ACTION_FEATURE, "action_dim")):
            feat = features.get(name)
            if not isinstance(feat, dict) or not isinstance(feat.get("shape"), list) or len(feat["shape"]) != 1:
                raise DatasetError(path, f"features[{name!r}] is missing or has no 1-D 'shape'")
            if feat["shape"][0] != info[dim_key]:
                raise DatasetError(path, f"features[{name!r}].shape is {feat['shape']} but {dim_key} is "
                                         f"{info[dim_key]} (feature dimension mismatch)")
        for name in self._image_features_of(info):
            shape = features[name].get("shape")
            if not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3:
                raise DatasetError(path, f"features[{name!r}].shape must be [H, W, 3], got {shape}")
        return info

    @staticmethod
    def _image_features_of(info: Mapping[str, Any]) -> list[str]:
        return [name for name, f in info["features"].items() if isinstance(f, dict) and f.get("dtype") == "image"]

    def _read_episodes(self) -> pd.DataFrame:
        path = self.episodes_path
        if not path.is_file():
            raise DatasetError(path, "missing (the dataset's write was interrupted?)")
        try:
            frame = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(path, f"corrupt Parquet table ({exc})") from None
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
    def num_frames(self) -> int:
        return int(self.info["total_frames"])

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def state_dim(self) -> int:
        return int(self.info["state_dim"])

    @property
    def action_dim(self) -> int:
        return int(self.info["action_dim"])

    @property
    def image_features(self) -> list[str]:
        """Image columns present, e.g. ["observation.images.agentview", "observation.images.wrist"]."""
        return self._image_features_of(self.info)

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
        groups: list[list[int]] = []
        current: list[int] = []
        count = 0
        for e in eps.tolist():
            current.append(e)
            count += int(self._lengths[e])
            if count >= frames_per_chunk:
                groups.append(current)
                current, count = [], 0
        if current:
            groups.append(current)

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
        columns = [STATE_FEATURE, ACTION_FEATURE, *_FRAME_SCALARS]
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
    return Dataset(root)


def validate(
    root: Path | str,
    expected_action_dim: int | None = None,
    expected_state_dim: int | None = None,
    split: str | None = None,
    require_stats: bool = False,
    check_values: bool = True,
) -> Dataset:
    """Training pre-flight: raises DatasetError (naming file and field) for anything unusable.

    Checks info.json (presence, JSON, format version, feature dims), the episode table, the state
    and action dims against what the policy expects, every split (non-empty, valid indices; `split`
    must exist), every episode file (present, length, column widths) and, with `check_values`,
    every frame for NaN/inf (naming the episode and frame). With `require_stats`, meta/stats.json
    must exist with matching dims.
    """
    ds = Dataset(root)
    if expected_state_dim is not None and ds.state_dim != expected_state_dim:
        raise DatasetError(ds.info_path, f"state_dim is {ds.state_dim}, the policy expects {expected_state_dim} "
                                         "(feature dimension mismatch)")
    if expected_action_dim is not None and ds.action_dim != expected_action_dim:
        raise DatasetError(ds.info_path, f"action_dim is {ds.action_dim}, the policy expects "
                                         f"{expected_action_dim} (feature dimension mismatch)")
    if not ds.split_names:
        raise DatasetError(ds.info_path, "splits: no splits defined")
    for name in ds.split_names:
        ds.split(name)
    if split is not None:
        ds.split(split)
    split_col = ds.episodes["split"].astype(str).to_numpy()
    for name, eps in ds.info["splits"].items():
        wrong = [e for e in eps if split_col[e] != name]
        if wrong:
            raise DatasetError(ds.episodes_path, f"episode {wrong[0]}: column 'split' is {split_col[wrong[0]]!r} "
                                                 f"but info.json splits lists it under {name!r}")
    columns = [STATE_FEATURE, ACTION_FEATURE]
    for ep in range(ds.num_episodes):
        path = ds.episode_path(ep)
        if not path.is_file():
            raise DatasetError(path, f"episode {ep}: data file is missing")
        try:
            meta = pq.read_metadata(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(path, f"episode {ep}: corrupt Parquet file ({exc})") from None
        if meta.num_rows != ds.lengths[ep]:
            raise DatasetError(path, f"episode {ep}: {meta.num_rows} frames but meta/episodes.parquet says "
                                     f"length {ds.lengths[ep]}")
        names = set(meta.schema.to_arrow_schema().names)
        missing = [c for c in [*columns, *ds.image_features] if c not in names]
        if missing:
            raise DatasetError(path, f"episode {ep}: missing column(s) {missing}")
        if ds.has_sim and not ds.sim_path(ep).is_file():
            raise DatasetError(ds.sim_path(ep), f"episode {ep}: simulator state file is missing")
    if check_values:
        ep_starts = ds.starts
        for chunk_start, chunk in _chunks_with_offsets(ds, columns):
            for name in columns:
                bad = _first_nonfinite(chunk[name].astype(np.float64, copy=False))
                if bad is not None:
                    global_index = chunk_start + bad[0]
                    ep = int(np.searchsorted(ep_starts, global_index, side="right") - 1)
                    frame = global_index - int(ep_starts[ep])
                    raise DatasetError(ds.episode_path(ep), f"episode {ep} frame {frame}: {name}[{bad[1]}] is "
                                                            f"{chunk[name][bad]} (NaN/inf)")
    if require_stats:
        ds.load_norm_stats()
    return ds


def _chunks_with_offsets(ds: Dataset, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    offset = 0
    for chunk in ds.iter_column_chunks(columns):
        yield offset, chunk
        offset += len(chunk[columns[0]])


def describe(ds: Dataset) -> str:
    """One human line about a dataset."""
    splits = ", ".join(f"{k}={len(v)}" for k, v in ds.info["splits"].items())
    seconds = ds.num_frames / ds.fps if ds.fps else math.nan
    return (f"{ds.root}: {ds.num_episodes} episodes, {ds.num_frames} frames ({seconds / 60:.1f} min at "
            f"{ds.fps} fps), cameras={ds.cameras or 'none'}, splits: {splits}")
