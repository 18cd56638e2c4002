"""Writing a dataset episode by episode: `DatasetWriter`.

Everything is staged in a hidden sibling directory and renamed into place in `finalize()`, after
`meta/info.json` is written, so an interrupted write never leaves anything at the destination that
reads as a dataset. Each episode is checked (shapes, NaN/inf, cameras, simulator states) as it is
added, and the message names the episode, frame and field.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gauntlet.data.dataset_schema import (
    ACTION_NAMES,
    CHUNKS_SIZE,
    DATA_PATH,
    DEFAULT_FPS,
    EPISODE_COLUMNS,
    EPISODES_PATH,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_FEATURES,
    INFO_PATH,
    SIM_PATH,
    STATE_NAMES,
    XML_PATH,
    DatasetError,
    EpisodeTags,
    data_path,
    features,
    first_nonfinite,
    fixed_list,
    unite_env,
)
from gauntlet.data.images import encode_png
from gauntlet.keys import (
    ACTION_DIM,
    ACTION_FEATURE,
    OBJECT_STATE_FEATURE,
    PROMPT_COLUMN,
    STATE_DIM,
    STATE_FEATURE,
)
from gauntlet.runtime.atomic_files import atomic_write, replace_dir, staging_dir
from gauntlet.runtime.manifests import write_json


@dataclass(frozen=True)
class _CheckedEpisode:
    """One episode's arrays after add_episode's checks."""

    states: np.ndarray  # (T, state_dim) float32
    actions: np.ndarray  # (T, action_dim) float32
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    sim: np.ndarray | None  # (T, S) float64, or None without simulator states
    object_states: np.ndarray | None  # (T, K) float32, or None without the object state


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
        state_dim: int = STATE_DIM,
        action_dim: int = ACTION_DIM,
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
        self._check_destination(overwrite)
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
        self.stage = staging_dir(self.root, "partial")
        self._rows: list[dict[str, Any]] = []
        self._frames = 0
        self._image_shapes: dict[str, tuple[int, ...]] | None = None  # decided by the first episode
        self._has_sim: bool | None = None
        self._object_dim: int | None = None  # 0: no object state; decided by the first episode
        self._done = False

    def _check_destination(self, overwrite: bool) -> None:
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise DatasetError(self.root, "exists and is not a directory")
        is_dataset = (self.root / INFO_PATH).exists()
        if is_dataset and not overwrite:
            raise DatasetError(self.root, "a dataset already exists here; pass --overwrite to replace it")
        if any(self.root.iterdir()) and not is_dataset:
            raise DatasetError(self.root, "directory is not empty and is not a dataset; choose another --out")

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

    def register_env(self, task: str, variant: str, meta: Mapping[str, Any]) -> str:
        """Env metadata (env name, robot, controller/env_args) of a task and variant's episodes; goes
        into info.json's `envs` under the key `unite_env` returns."""
        return unite_env(self.envs, task, variant, meta)

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
        object_states: np.ndarray | None = None,
        tags: EpisodeTags | None = None,
    ) -> int:
        """Writes one episode's files (each atomically) and returns its episode index.

        states (T, state_dim), actions (T, action_dim): per frame, the action applied at that frame.
        sim_states (T, S) float64; model_xml the MuJoCo XML; images {camera: (T, H, W, 3) uint8}
        with cameras from IMAGE_FEATURES; sim_extra: more arrays for the episode's .npz (e.g. the
        exact initial state), plain numeric/string arrays only. object_states (T, K): the privileged
        object state before each frame's action (every episode has it, at one width, or none does).
        tags: the scene the episode starts from (a recovery demonstration); None after a reset.
        """
        if self._done:
            raise RuntimeError("finalize() or abort() was already called")
        ep = len(self._rows)
        where = f"episode {ep}"
        checked = self._check_episode(where, states, actions, images, sim_states, model_xml, split, object_states)
        n, start = checked.states.shape[0], self._frames
        table = self._frame_table(ep, start, checked)
        atomic_write(self.stage / data_path(ep, self.chunks_size), lambda tmp: pq.write_table(table, tmp))
        if checked.sim is not None:
            self._write_sim(ep, where, checked.sim, str(model_xml), sim_extra or {})
        self._rows.append({
            "episode_index": ep, "length": n, "dataset_from_index": start, "dataset_to_index": start + n,
            "task": task, "variant": variant, PROMPT_COLUMN: prompt, "success": bool(success), "split": split,
            "seed": None if seed is None else int(seed), "fingerprint": fingerprint,
            "source_episode": source_episode, **(tags or EpisodeTags()).columns(),
        })
        self._frames += n
        return ep

    def _check_episode(self, where: str, states: np.ndarray, actions: np.ndarray,
                       images: Mapping[str, np.ndarray] | None, sim_states: np.ndarray | None,
                       model_xml: str | None, split: str, object_states: np.ndarray | None) -> _CheckedEpisode:
        states = np.asarray(states, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float32)
        if states.ndim != 2 or states.shape[1] != self.state_dim or states.shape[0] < 1:
            raise DatasetError(self.root, f"{where}: states must have shape (T>=1, {self.state_dim}), got {states.shape}")
        n = states.shape[0]
        if actions.shape != (n, self.action_dim):
            raise DatasetError(self.root, f"{where}: actions must have shape ({n}, {self.action_dim}), got {actions.shape}")
        for name, arr in (("states", states), ("actions", actions)):
            bad = first_nonfinite(arr)
            if bad is not None:
                raise DatasetError(self.root, f"{where} frame {bad[0]}: {name}[{bad[1]}] is {arr[bad]} (NaN/inf)")
        if not split:
            raise DatasetError(self.root, f"{where}: split must be a non-empty name")
        return _CheckedEpisode(states, actions, self._check_images(where, n, images),
                               self._check_sim(where, n, sim_states, model_xml),
                               self._check_object_states(where, n, object_states))

    def _check_object_states(self, where: str, n: int, object_states: np.ndarray | None) -> np.ndarray | None:
        """The episode's object states as float32, checked; the first episode decides the width."""
        arr = None if object_states is None else np.asarray(object_states, dtype=np.float32)
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1):
            raise DatasetError(self.root, f"{where}: object_states must have shape ({n}, K>=1), got {arr.shape}")
        width = 0 if arr is None else int(arr.shape[1])
        if self._object_dim is None:
            self._object_dim = width
        if width != self._object_dim:
            raise DatasetError(self.root, f"{where}: object_states width {width}, but earlier episodes' is "
                                          f"{self._object_dim} (every episode has them at one width, or none does)")
        bad = None if arr is None else first_nonfinite(arr)
        if bad is not None:
            raise DatasetError(self.root, f"{where} frame {bad[0]}: object_states[{bad[1]}] is {arr[bad]} (NaN/inf)")
        return arr

    def _check_images(self, where: str, n: int, images: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """The episode's images, checked; the first episode decides the dataset's cameras and sizes."""
        images = {cam: np.asarray(arr) for cam, arr in (images or {}).items()}
        unknown = sorted(set(images) - set(IMAGE_FEATURES))
        if unknown:
            raise DatasetError(self.root, f"{where}: unknown camera(s) {unknown}; known: {sorted(IMAGE_FEATURES)}")
        shapes = {}
        for cam, arr in images.items():
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != n or arr.shape[3] != 3:
                raise DatasetError(self.root, f"{where}: images[{cam!r}] must be ({n}, H, W, 3) uint8, "
                                              f"got {arr.shape} {arr.dtype}")
            shapes[cam] = tuple(int(s) for s in arr.shape[1:])
        if self._image_shapes is None:
            self._image_shapes = shapes
        elif shapes != self._image_shapes:
            raise DatasetError(self.root, f"{where}: images {shapes} differ from the dataset's {self._image_shapes} "
                                          "(every episode needs the same cameras at the same size)")
        return images

    def _check_sim(self, where: str, n: int, sim_states: np.ndarray | None,
                   model_xml: str | None) -> np.ndarray | None:
        """The episode's simulator states as float64, checked; every episode has them or none does."""
        has_sim = sim_states is not None
        if self._has_sim is None:
            self._has_sim = has_sim
        elif has_sim != self._has_sim:
            raise DatasetError(self.root, f"{where}: sim_states {'given' if has_sim else 'missing'}, but not "
                                          "for earlier episodes (all or none)")
        if sim_states is None:
            return None
        sim = np.asarray(sim_states, dtype=np.float64)
        if sim.ndim != 2 or sim.shape[0] != n:
            raise DatasetError(self.root, f"{where}: sim_states must have shape ({n}, S), got {sim.shape}")
        if model_xml is None:
            raise DatasetError(self.root, f"{where}: sim_states given without model_xml")
        return sim

    def _frame_table(self, ep: int, start: int, episode: _CheckedEpisode) -> pa.Table:
        """The episode's Parquet table: one row per frame, images as PNG bytes."""
        n = episode.states.shape[0]
        frame_index = np.arange(n, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        done[-1] = True
        columns: dict[str, pa.Array] = {
            "index": pa.array(start + frame_index),
            "episode_index": pa.array(np.full(n, ep, dtype=np.int64)),
            "frame_index": pa.array(frame_index),
            "timestamp": pa.array((frame_index / self.fps).astype(np.float32)),
            STATE_FEATURE: fixed_list(episode.states, self.state_dim),
            ACTION_FEATURE: fixed_list(episode.actions, self.action_dim),
            "next.done": pa.array(done),
        }
        if episode.object_states is not None:
            columns[OBJECT_STATE_FEATURE] = fixed_list(episode.object_states, episode.object_states.shape[1])
        for cam in sorted(episode.images):
            columns[IMAGE_FEATURES[cam]] = pa.array([encode_png(img) for img in episode.images[cam]],
                                                    type=pa.binary())
        return pa.table(columns)

    def _write_sim(self, ep: int, where: str, sim: np.ndarray, model_xml: str,
                   sim_extra: Mapping[str, np.ndarray]) -> None:
        arrays = {"states": sim}
        for key, value in sim_extra.items():
            value = np.asarray(value)
            if value.dtype == object:  # would need pickle to store
                raise DatasetError(self.root, f"{where}: sim_extra[{key!r}] has dtype object")
            arrays[key] = value

        def write_npz(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        atomic_write(self.stage / SIM_PATH.format(episode=ep), write_npz)
        atomic_write(self.stage / XML_PATH.format(episode=ep), lambda tmp: Path(tmp).write_text(model_xml))

    # ------------------------------------------------------------------------------ finishing
    def info(self) -> dict[str, Any]:
        """The dataset's meta/info.json as it stands."""
        from gauntlet import __version__

        splits: dict[str, list[int]] = {}
        for row in self._rows:
            splits.setdefault(row["split"], []).append(row["episode_index"])
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fps": self.fps,
            "total_episodes": len(self._rows),
            "total_frames": self._frames,
            "robot": self.robot,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "features": self._features(),
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

    def _features(self) -> dict[str, Any]:
        feats = features(self.state_dim, self.action_dim, self.state_names, self.action_names,
                         self._image_shapes or {})
        if self._object_dim:
            feats[OBJECT_STATE_FEATURE] = {"dtype": "float32", "shape": [self._object_dim], "names": None}
        return feats

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
        atomic_write(self.stage / EPISODES_PATH, lambda tmp: pq.write_table(table, tmp))
        # info.json last: it is what makes a directory read as a dataset.
        write_json(self.stage / INFO_PATH, self.info(), indent=2)
        if self.root.exists():
            if (self.root / INFO_PATH).exists():
                if not self.overwrite:
                    self.abort()
                    raise DatasetError(self.root, "a dataset appeared here while writing; not overwritten")
            else:
                self.root.rmdir()  # empty (checked in __init__); fails loudly if something appeared
        replace_dir(self.stage, self.root)
        self._done = True
        return self.root

    def abort(self) -> None:
        """Discards everything written so far (nothing at `root` is touched)."""
        self._done = True
        shutil.rmtree(self.stage, ignore_errors=True)
