"""Training loader throughput: `DatasetLoader` (threaded assembly, parallel PNG decode, episode cache)
vs a naive per-sample loader.

    .venv/bin/python benchmarks/bench_loader.py [--episodes 100] [--length 100] [--image-size 64] [--batches 40]

Builds (or reuses, in --cache) a dataset with two 64x64 cameras; building is not timed. Then:

  baseline   a map-style __getitem__ per sample, the usual first attempt: read the frame's episode
             file with pandas, decode its two PNGs with PIL, slice the action window in Python;
             batches stacked from samples, no threads, no cache.
  ours       DatasetLoader with a few (num_workers, decode_workers, prefetch_depth) settings, the
             knobs `gauntlet sweep throughput --target loader` tunes. The first batch is a warm-up.

Prints samples/s for each row and its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gauntlet.data.dataset_reader import open_dataset
from gauntlet.data.dataset_schema import IMAGE_FEATURES, DatasetError
from gauntlet.data.dataset_writer import DatasetWriter
from gauntlet.data.loader import LoaderConfig, make_loader
from gauntlet.keys import ACTION_FEATURE, STATE_FEATURE

CHUNK_LEN = 10


def ensure_dataset(cache: Path, episodes: int, length: int, size: int) -> Path:
    root = cache / f"images-{episodes}e-{length}f-{size}px"
    try:
        ds = open_dataset(root)
        if ds.num_episodes == episodes and ds.cameras == ["agentview", "wrist"]:
            print(f"reusing {root}", flush=True)
            return root
    except DatasetError:
        pass
    print(f"building {root} (not timed)", flush=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    with DatasetWriter(root, source={"kind": "synthetic"}, overwrite=True) as writer:
        for ep in range(episodes):
            # Smooth, render-like images (noise would not compress like real renders do).
            t = np.arange(length)[:, None, None]
            base = (128 + 60 * np.sin((xx[None] + 2 * t + ep) / 9.0) + 40 * np.cos(yy[None] / 7.0)).clip(0, 255)
            img = np.repeat(base[..., None], 3, axis=3).astype(np.uint8)
            img[..., 0] = (img[..., 0].astype(int) + rng.integers(0, 8, img.shape[:3])).clip(0, 255)
            writer.add_episode(rng.normal(size=(length, 8)), rng.uniform(-1, 1, (length, 7)), task="lift",
                               variant="D0", prompt="pick up the red cube", success=True,
                               images={"agentview": img, "wrist": img[:, ::-1].copy()})
    return root


def naive_batches(root: Path, batch_size: int, batches: int, seed: int = 0) -> tuple[int, float]:
    from PIL import Image

    ds = open_dataset(root)
    starts = ds.starts
    rng = np.random.default_rng(seed)
    order = rng.permutation(ds.num_frames)
    t0 = time.perf_counter()
    n = 0
    for b in range(batches):
        samples = []
        for g in order[b * batch_size:(b + 1) * batch_size].tolist():
            ep = int(np.searchsorted(starts, g, side="right") - 1)
            frame = pd.read_parquet(ds.episode_path(ep))
            t = g - int(starts[ep])
            row = frame.iloc[t]
            acts = [frame[ACTION_FEATURE].iloc[min(t + h, len(frame) - 1)] for h in range(CHUNK_LEN)]
            sample = {
                "observation/state": np.asarray(row[STATE_FEATURE], dtype=np.float32),
                "actions": np.stack(acts).astype(np.float32),
                "action_is_pad": np.array([t + h >= len(frame) for h in range(CHUNK_LEN)]),
                "observation/image": np.asarray(Image.open(io.BytesIO(row[IMAGE_FEATURES["agentview"]]))),
                "observation/wrist_image": np.asarray(Image.open(io.BytesIO(row[IMAGE_FEATURES["wrist"]]))),
            }
            samples.append(sample)
        _ = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
        n += len(samples)
    return n, time.perf_counter() - t0


def loader_rate(root: Path, batches: int, **config: int) -> tuple[float, dict]:
    with make_loader(root, chunk_len=CHUNK_LEN, epochs=0, **config) as loader:
        it = iter(loader)
        next(it)  # warm-up (threads start, first files read)
        t0 = time.perf_counter()
        n = 0
        for _ in range(batches):
            n += len(next(it)["frame_index"])
        return n / (time.perf_counter() - t0), loader.counters()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--length", type=int, default=100, help="frames per episode")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per loader setting")
    parser.add_argument("--baseline-batches", type=int, default=3)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "gauntlet-bench-data"))
    args = parser.parse_args(argv)
    root = ensure_dataset(Path(args.cache), args.episodes, args.length, args.image_size)

    n, secs = naive_batches(root, args.batch_size, args.baseline_batches)
    base = n / secs
    rows = [("baseline: per-sample pandas read + PIL decode", base, "")]
    settings = [(1, 1, 2), (2, 1, 4), (2, 2, 4), (4, 4, 8)]
    for workers, decoders, depth in settings:
        cfg = {"batch_size": args.batch_size, "num_workers": workers, "decode_workers": decoders,
               "prefetch_depth": depth}
        LoaderConfig(**cfg)  # validates
        rate, counters = loader_rate(root, args.batches, **cfg)
        rows.append((f"DatasetLoader workers={workers} decode={decoders} prefetch={depth}", rate,
                     f"consumer waited {counters['wait_s']:.2f} s"))
    rate, _ = loader_rate(root, args.batches, batch_size=args.batch_size, cameras=())
    rows.append(("DatasetLoader, no images (state + action chunks only)", rate, ""))

    print(f"\nloader throughput: {args.episodes} episodes x {args.length} frames, two {args.image_size}px cameras, "
          f"batch {args.batch_size}, chunk {CHUNK_LEN}")
    header = f"{'loader':<58}{'samples/s':>12}{'ratio':>9}  note"
    print(header)
    print("-" * (len(header) + 20))
    for name, rate, note in rows:
        print(f"{name:<58}{rate:>12,.0f}{rate / base:>8.0f}x  {note}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
