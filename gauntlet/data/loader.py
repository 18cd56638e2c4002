"""Training batches from a dataset, in the policies' raw key format, with bounded threaded prefetch.

Each sample is one frame: its state, the next H actions of its episode (padded past the episode's
end by repeating the last action, with `action_is_pad` marking the padding, so a window never
crosses into another episode), its episode's prompt and, when the dataset has them, its camera
images. Batches:

    "observation/state"        (B, state_dim) float32
    "actions"                  (B, H, action_dim) float32
    "action_is_pad"            (B, H) bool
    "prompt"                   (B,) str
    "observation/image"        (B, S, S, 3) uint8      (agentview, when wanted and present)
    "observation/wrist_image"  (B, S, S, 3) uint8      (wrist, when wanted and present)
    "episode_index", "frame_index"  (B,) int64
    "recovery"                 (B,) bool               (the sample's episode is a recovery demonstration,
                                                        so a recipe can weight or select them)

States and actions of the split are loaded once (vectorised, pyarrow); images stay PNG bytes on
disk, with an LRU cache of whole episodes' bytes capped by what the memory budget leaves, and are
decoded per batch by `decode_workers` threads (OpenCV releases the GIL). `num_workers` threads
assemble batches; at most `prefetch_depth` batches are in flight or ready ahead of the consumer.
Sharding: every shard draws the same per-epoch permutation (seeded by `seed` and the epoch) and
takes every `num_shards`-th frame of it, so shards are disjoint and together cover the split. With a
recovery fraction the epoch is as many frames drawn with replacement by their weights (same seeding
and sharding); `val_episodes` holds episodes out (`held_out` draws only them; see data/sampling.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.data.dataset_reader import Dataset
from gauntlet.data.dataset_schema import DatasetError
from gauntlet.data.image_cache import EpisodeImageCache
from gauntlet.data.images import decode_png, resize_image
from gauntlet.data.sampling import SamplingError, holdout, recovery_weights
from gauntlet.keys import (
    ACTION_FEATURE,
    ACTION_IS_PAD_KEY,
    ACTIONS_KEY,
    DATASET_CAMERAS,
    PROMPT_COLUMN,
    PROMPT_KEY,
    STATE_FEATURE,
    STATE_KEY,
)
from gauntlet.runtime.config_args import option, require_at_least

# dataset camera -> the policy's observation key
CAMERA_KEYS = DATASET_CAMERAS


class LoaderError(ValueError):
    """A loader configuration that cannot work with this dataset; names the field."""


@dataclass(frozen=True)
class LoaderConfig:
    """How training batches are drawn and assembled (every field is a sweepable knob)."""

    batch_size: int = option(64, help="samples per batch")
    chunk_len: int = option(10, help="H: future actions per sample (the policy's action chunk)")
    shuffle: bool = option(True, help="shuffle frames (a fresh permutation every epoch)")
    seed: int = option(0, help="seed of the per-epoch permutations (same seed, same batches)")
    num_workers: int = option(2, help="threads assembling batches")
    prefetch_depth: int = option(4, help="batches assembled ahead of the consumer (bounded queue)")
    decode_workers: int = option(2, help="threads decoding PNG images (1 = decode in the assembling thread)")
    memory_budget_mb: int = option(2048, help="MiB for preloaded columns + prefetched batches + image cache; "
                                              "a configuration needing more is refused")
    drop_last: bool = option(True, help="drop each epoch's last partial batch (and equalise shard sizes)")
    split: str = option("train", help="dataset split to draw from ('' = every episode)")
    shard_index: int = option(0, help="this worker's shard (data-parallel rank)")
    num_shards: int = option(1, help="number of shards (data-parallel world size)")
    cameras: tuple[str, ...] | None = option(None, help="cameras to load (agentview, wrist); "
                                                        "default: all the dataset has; none: pass an empty tuple")
    image_size: int = option(0, help="resize images to this square size (pixels; 0 = stored size)")
    epochs: int = option(1, help="passes over the data (0 = infinite)")
    val_episodes: int = option(0, help="hold out N episodes (not drawn; which ones: data/sampling.py)")
    held_out: bool = option(False, help="draw the held-out episodes instead (validation batches)")
    recovery_fraction: float | None = option(None, help="share of draws from recovery-tagged episodes, the rest "
                                                        "from the others (frames drawn with replacement by "
                                                        "these weights; None = a permutation of every frame)")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "batch_size", "chunk_len", "num_workers", "prefetch_depth", "decode_workers",
                         "memory_budget_mb", "num_shards", error=LoaderError)
        if not 0 <= self.shard_index < self.num_shards:
            raise LoaderError(f"shard_index must be in [0, num_shards={self.num_shards}), got {self.shard_index}")
        require_at_least(self, 0, "image_size", error=LoaderError)
        if self.epochs < 0:
            raise LoaderError(f"epochs must be >= 0 (0 = infinite), got {self.epochs}")
        for cam in self.cameras or ():
            if cam not in CAMERA_KEYS:
                raise LoaderError(f"cameras: unknown camera {cam!r}; known: {sorted(CAMERA_KEYS)}")


def _drawn_episodes(ds: Dataset, cfg: LoaderConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(the episodes drawn from: the split less its held-out episodes, or only those; with a recovery
    fraction each of their frames' draw probability, its episode's weight over its length, else None)."""
    try:
        trained, held = holdout(ds, cfg.split, cfg.val_episodes)
        episodes = held if cfg.held_out else trained
        if cfg.recovery_fraction is None:
            return episodes, None
        lengths = ds.lengths[episodes]
        tags = ds.episodes["recovery"].to_numpy(dtype=bool)[episodes]
        return episodes, np.repeat(recovery_weights(lengths, tags, cfg.recovery_fraction) / lengths, lengths)
    except SamplingError as exc:
        raise LoaderError(str(exc)) from None


class DatasetLoader:
    """Iterate with `for batch in loader` (or `iter_batches()`); `close()` or use `with`."""

    def __init__(self, dataset: Dataset | Path | str, config: LoaderConfig | None = None):
        self.ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
        self.config = cfg = config or LoaderConfig()
        ds = self.ds
        self.episodes, self._frame_p = _drawn_episodes(ds, cfg)
        # Cameras: what was asked for, or everything the dataset has.
        if cfg.cameras is None:
            self.cameras = list(ds.cameras)
        else:
            missing = [c for c in cfg.cameras if c not in ds.cameras]
            if missing:
                raise LoaderError(f"cameras: the dataset has no {missing} images (it has {ds.cameras or 'none'})")
            self.cameras = list(cfg.cameras)
        self.image_sizes = {cam: (cfg.image_size or ds.image_shape(cam)[0]) for cam in self.cameras}
        for cam in self.cameras:
            h, w, _ = ds.image_shape(cam)
            if not cfg.image_size and h != w:
                raise LoaderError(f"image_size: camera {cam!r} images are {h}x{w}; set image_size to get squares")
        lengths = ds.lengths[self.episodes]
        self.num_frames = int(lengths.sum())
        # Memory: preloaded columns + prefetched batches must fit; what is left caps the image cache.
        prompts = ds.episodes[PROMPT_COLUMN].astype(str).to_numpy()[self.episodes]
        self._prompt_width = max((len(p) for p in prompts), default=1) or 1
        preload_bytes = self.num_frames * ((ds.state_dim + ds.action_dim) * 4 + 3 * 8)
        budget = cfg.memory_budget_mb * 2**20
        need = preload_bytes + self.batch_bytes * cfg.prefetch_depth
        if need > budget:
            raise LoaderError(
                f"memory_budget_mb={cfg.memory_budget_mb} is too small: {need / 2**20:.1f} MiB needed "
                f"({preload_bytes / 2**20:.1f} MiB of preloaded states/actions + prefetch_depth={cfg.prefetch_depth} x "
                f"{self.batch_bytes / 2**20:.2f} MiB per batch of batch_size={cfg.batch_size}); raise "
                "memory_budget_mb or lower prefetch_depth / batch_size / image_size")
        self.cache_cap_bytes = budget - need
        # Preload the split's states and actions (vectorised) and each row's episode bounds.
        cols = ds.load_columns([STATE_FEATURE, ACTION_FEATURE], self.episodes)
        self._state = np.ascontiguousarray(cols[STATE_FEATURE], dtype=np.float32)
        self._action = np.ascontiguousarray(cols[ACTION_FEATURE], dtype=np.float32)
        local_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._row_episode = np.repeat(np.arange(len(self.episodes), dtype=np.int64), lengths)  # local ep
        self._row_end = np.repeat(local_starts + lengths, lengths)  # exclusive end row of its episode
        self._row_frame = np.arange(self.num_frames, dtype=np.int64) - np.repeat(local_starts, lengths)
        self._prompts = np.asarray(prompts, dtype=str)  # (episodes,) fixed-width unicode
        self._recovery = ds.episodes["recovery"].to_numpy(dtype=bool)[self.episodes]  # (episodes,)
        self._cache = EpisodeImageCache(ds, self.cameras, self.cache_cap_bytes) if self.cameras else None
        if self.batches_per_epoch == 0:
            raise LoaderError(
                f"batch_size={cfg.batch_size} is larger than shard {cfg.shard_index}'s "
                f"{self.shard_frames} frames of split {cfg.split!r} with drop_last; lower batch_size")
        # Threads are started on first iteration and stopped by close().
        self._assemble_pool: ThreadPoolExecutor | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()
        # Counters (for benchmarks and the throughput sweep).
        self.samples_yielded = 0
        self.batches_yielded = 0
        self.wait_s = 0.0  # time the consumer spent blocked waiting for a batch
        self.assemble_s = 0.0  # summed assembly time over worker threads
        self._t_first: float | None = None

    # --------------------------------------------------------------------------- properties
    @property
    def batch_bytes(self) -> int:
        """Bytes of one assembled batch (what prefetching holds per queued batch)."""
        cfg = self.config
        per_sample = (self.ds.state_dim * 4 + cfg.chunk_len * (self.ds.action_dim * 4 + 1)
                      + self._prompt_width * 4 + 17)
        for cam in self.cameras:
            h, w, _ = self.ds.image_shape(cam)
            size = self.image_sizes[cam]
            per_sample += size * size * 3 + h * w * 3  # output + the decoded image before resizing
        return per_sample * cfg.batch_size

    @property
    def shard_frames(self) -> int:
        """Frames this shard draws per epoch."""
        cfg = self.config
        if cfg.drop_last and cfg.num_shards > 1:
            return self.num_frames // cfg.num_shards
        return len(range(cfg.shard_index, self.num_frames, cfg.num_shards))

    @property
    def batches_per_epoch(self) -> int:
        """Equal on every shard when drop_last (what data-parallel training needs)."""
        b = self.config.batch_size
        return self.shard_frames // b if self.config.drop_last else math.ceil(self.shard_frames / b)

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._t_first if self._t_first is not None else 0.0

    @property
    def samples_per_second(self) -> float:
        elapsed = self.elapsed_s
        return self.samples_yielded / elapsed if elapsed > 0 else 0.0

    def counters(self) -> dict[str, float]:
        cache = self._cache
        return {
            "samples": self.samples_yielded, "batches": self.batches_yielded, "elapsed_s": self.elapsed_s,
            "samples_per_second": self.samples_per_second, "wait_s": self.wait_s,
            "assemble_s": self.assemble_s,
            "cache_bytes": cache.bytes if cache else 0, "cache_hits": cache.hits if cache else 0,
            "cache_misses": cache.misses if cache else 0,
        }

    # ------------------------------------------------------------------------------ sampling
    def epoch_rows(self, epoch: int) -> np.ndarray:
        """This shard's rows (local frame positions) for `epoch`, in the order they are drawn."""
        cfg = self.config
        if self._frame_p is not None:
            order = np.random.default_rng([cfg.seed, epoch]).choice(self.num_frames, self.num_frames, p=self._frame_p)
        elif cfg.shuffle:
            order = np.random.default_rng([cfg.seed, epoch]).permutation(self.num_frames)
        else:
            order = np.arange(self.num_frames, dtype=np.int64)
        rows = order[cfg.shard_index::cfg.num_shards]
        return rows[: self.shard_frames]

    def _plan(self, start_epoch: int, start_batch: int = 0) -> Iterator[np.ndarray]:
        cfg = self.config
        epoch = start_epoch
        first = start_batch
        while cfg.epochs == 0 or epoch < cfg.epochs:
            rows = self.epoch_rows(epoch)
            for b in range(first, self.batches_per_epoch):
                yield rows[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            epoch += 1
            first = 0

    # ------------------------------------------------------------------------------ assembly
    def assemble(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """One batch for these local rows (vectorised over the batch)."""
        t0 = time.perf_counter()
        cfg = self.config
        rows = np.asarray(rows, dtype=np.int64)
        offsets = rows[:, None] + np.arange(cfg.chunk_len, dtype=np.int64)[None, :]  # (B, H)
        ends = self._row_end[rows][:, None]
        is_pad = offsets >= ends
        offsets = np.minimum(offsets, ends - 1)  # repeat the episode's last action
        local_ep = self._row_episode[rows]
        batch: dict[str, np.ndarray] = {
            STATE_KEY: self._state[rows],
            ACTIONS_KEY: self._action[offsets],
            ACTION_IS_PAD_KEY: is_pad,
            PROMPT_KEY: self._prompts[local_ep],
            "episode_index": self.episodes[local_ep],
            "frame_index": self._row_frame[rows],
            "recovery": self._recovery[local_ep],
        }
        if self.cameras:
            batch.update(self._images(local_ep, batch["frame_index"]))
        with self._lock:
            self.assemble_s += time.perf_counter() - t0
        return batch

    def _images(self, local_ep: np.ndarray, frames: np.ndarray) -> dict[str, np.ndarray]:
        assert self._cache is not None
        episodes = self.episodes[local_ep]
        jobs: list[tuple[str, int, bytes]] = []
        for ep in np.unique(episodes).tolist():
            data = self._cache.get(ep)
            for i in np.flatnonzero(episodes == ep).tolist():
                for cam in self.cameras:
                    jobs.append((cam, i, data[cam][int(frames[i])]))
        out = {cam: np.empty((len(episodes), s, s, 3), dtype=np.uint8) for cam, s in self.image_sizes.items()}

        def decode(job: tuple[str, int, bytes]) -> None:
            cam, i, png = job
            out[cam][i] = resize_image(decode_png(png), self.image_sizes[cam])

        pool = self._decode_pool
        if pool is None:
            for job in jobs:
                decode(job)
        else:
            list(pool.map(decode, jobs, chunksize=1))
        return {CAMERA_KEYS[cam]: arr for cam, arr in out.items()}

    # ----------------------------------------------------------------------------- iteration
    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the loader is closed")
            if self._assemble_pool is None:
                self._assemble_pool = ThreadPoolExecutor(self.config.num_workers, thread_name_prefix="loader-assemble")
                if self.cameras and self.config.decode_workers > 1:
                    self._decode_pool = ThreadPoolExecutor(self.config.decode_workers,
                                                           thread_name_prefix="loader-decode")

    def iter_batches(self, start_epoch: int = 0, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches of `config.epochs` epochs from batch `start_batch` of `start_epoch` (forever when
        epochs == 0). A resumed training run starts where it stopped without assembling (or
        decoding the images of) the batches it already consumed."""
        if not 0 <= start_batch < self.batches_per_epoch:
            raise LoaderError(f"start_batch must be in [0, {self.batches_per_epoch}), got {start_batch}")
        self._start()
        pool = self._assemble_pool
        assert pool is not None
        plan = self._plan(start_epoch, start_batch)
        pending: deque[Future] = deque()
        if self._t_first is None:
            self._t_first = time.perf_counter()
        try:
            for rows in plan:
                pending.append(pool.submit(self.assemble, rows))
                if len(pending) >= self.config.prefetch_depth:
                    break
            while pending:
                if self._closed:
                    return
                t0 = time.perf_counter()
                try:
                    batch = pending.popleft().result()
                except CancelledError:  # close() from another thread
                    return
                self.wait_s += time.perf_counter() - t0
                if not self._closed:
                    nxt = next(plan, None)
                    if nxt is not None:
                        pending.append(pool.submit(self.assemble, nxt))
                self.samples_yielded += len(batch["frame_index"])
                self.batches_yielded += 1
                yield batch
        finally:
            for fut in pending:
                fut.cancel()

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.iter_batches()

    def close(self) -> None:
        """Stops and joins every thread the loader started (idempotent)."""
        with self._lock:
            self._closed = True
            assemble, decode = self._assemble_pool, self._decode_pool
            self._assemble_pool = self._decode_pool = None
        if assemble is not None:
            assemble.shutdown(wait=True, cancel_futures=True)
        if decode is not None:
            decode.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DatasetLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def make_loader(dataset: Dataset | Path | str, **config: Any) -> DatasetLoader:
    """`make_loader(DS, batch_size=32, chunk_len=10, ...)`: a loader with these LoaderConfig fields."""
    return DatasetLoader(dataset, LoaderConfig(**config))


__all__ = ["CAMERA_KEYS", "DatasetError", "DatasetLoader", "LoaderConfig", "LoaderError", "make_loader"]
