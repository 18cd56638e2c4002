"""`gauntlet data stats DS`: normalisation statistics of a dataset, streamed and vectorised.

Writes DS/meta/stats.json in gauntlet.data.normalization.NormStats format (keys
"observation/state", "actions" and, when the dataset has the column, "observation/object_state"),
which policies load with `NormStats.load`.

Episode files are read in chunks of whole episodes (threads, pyarrow) and reduced with NumPy on
whole columns; nothing loops over frames in Python.

- mean / std: exact. Each chunk's mean and sum of squared deviations are computed in float64 and
  merged with Chan et al.'s parallel update, which stays accurate where a naive sum of squares
  would cancel catastrophically.
- min / max: exact.
- q01 / q99: exact (np.quantile, linear interpolation, over every frame) when the columns fit in
  `exact_quantile_mb`; otherwise a second streamed pass fills a histogram of `histogram_bins`
  equal bins per dimension between the global min and max, and each quantile is read off the
  cumulative counts, interpolating uniformly within its bin. Error bound of the approximation, per
  dimension: |q_approx - x_(k)| <= (max - min) / histogram_bins, where x_(k) is the order
  statistic of rank k = floor(q * (N - 1)); np.quantile's value lies between x_(k) and x_(k+1).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gauntlet.data.dataset_reader import Dataset, describe
from gauntlet.data.dataset_schema import DatasetError
from gauntlet.keys import DATASET_COLUMNS
from gauntlet.runtime.config_args import option, parse_config, require_at_least, run_command
from gauntlet.runtime.progress import Progress

if TYPE_CHECKING:
    from gauntlet.data.normalization import NormStats

# dataset column -> NormStats key (the policy's raw key names)
STATS_KEYS: dict[str, str] = {column: key for key, column in DATASET_COLUMNS.items()}  # column -> wire key
QUANTILES = (0.01, 0.99)


@dataclass(frozen=True)
class StatsConfig:
    """Computes normalisation statistics (mean, std, min, max, q01, q99) of a dataset's states and actions."""

    dataset: str = option(help="dataset directory", positional=True)
    split: str = option("", help="only this split's episodes ('' = every frame of the dataset)")
    exact_quantile_mb: int = option(1024, help="memory budget (MiB) for exact quantiles; a larger dataset "
                                               "gets streamed histogram quantiles (two passes)")
    histogram_bins: int = option(65536, help="bins per dimension of the approximate quantiles; "
                                             "error <= (max - min) / bins")
    chunk_frames: int = option(262144, help="frames read per chunk (bounds memory when streaming)")
    read_threads: int = option(2, help="threads reading episode files")
    out: str = option("", help="where to write (default: DATASET/meta/stats.json)")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "histogram_bins", "chunk_frames", "read_threads")
        require_at_least(self, 0, "exact_quantile_mb")


@dataclass(frozen=True)
class StatsReport:
    """What a stats run did: how many frames, how fast, which quantile method."""

    frames: int  # frames reduced
    episodes: int  # episodes read
    seconds: float  # wall time of the computation (both passes)
    quantile_method: str  # "exact" or "histogram"
    passes: int  # 1 (exact) or 2 (histogram)
    path: Path | None = None  # where stats.json was written
    quantile_error_bound: dict[str, list[float]] = field(default_factory=dict)  # histogram: bin width per dim

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


class _Moments:
    """Running count/mean/M2/min/max per dimension, merged chunk by chunk (Chan et al.)."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)

    def add(self, x: np.ndarray) -> None:
        nb = x.shape[0]
        if nb == 0:
            return
        x = x.astype(np.float64, copy=False)
        mb = x.mean(axis=0)
        m2b = np.square(x - mb).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + np.square(delta) * (self.n * nb / n)
        self.n = n
        np.minimum(self.min, x.min(axis=0), out=self.min)
        np.maximum(self.max, x.max(axis=0), out=self.max)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n)


class _Histogram:
    """Fixed equal-width bins per dimension between known bounds; vectorised bincount."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, bins: int):
        self.lo = lo.astype(np.float64)
        self.bins = bins
        span = hi.astype(np.float64) - self.lo
        self.width = np.where(span > 0, span / bins, 0.0)
        self.scale = np.where(span > 0, bins / np.where(span > 0, span, 1.0), 0.0)
        self.counts = np.zeros((lo.shape[0], bins), dtype=np.int64)
        self._offsets = np.arange(lo.shape[0], dtype=np.int64) * bins

    def add(self, x: np.ndarray) -> None:
        b = ((x.astype(np.float64, copy=False) - self.lo) * self.scale).astype(np.int64)
        np.clip(b, 0, self.bins - 1, out=b)
        b += self._offsets
        self.counts += np.bincount(b.ravel(), minlength=self.counts.size).reshape(self.counts.shape)

    def quantile(self, q: float) -> np.ndarray:
        cum = np.cumsum(self.counts, axis=1)  # (D, bins)
        n = cum[:, -1]
        k = np.floor(q * (n - 1)).astype(np.int64)  # rank of the order statistic x_(k), 0-based
        b = (cum <= k[:, None]).sum(axis=1)  # bin holding rank k
        below = np.where(b > 0, cum[np.arange(len(b)), np.maximum(b - 1, 0)], 0)
        in_bin = self.counts[np.arange(len(b)), b]
        frac = (k - below + 0.5) / np.maximum(in_bin, 1)
        return self.lo + (b + frac) * self.width


def compute_stats(
    dataset: Dataset | Path | str,
    split: str = "",
    exact_quantile_mb: int = 1024,
    histogram_bins: int = 65536,
    chunk_frames: int = 262144,
    read_threads: int = 2,
    progress: bool = True,
) -> tuple[NormStats, StatsReport]:
    """Statistics of "observation.state", "action" and, when the dataset has it,
    "observation.object_state", over the dataset (or one split)."""
    from gauntlet.data.normalization import FieldStats, NormStats

    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    episodes = ds.split(split) if split else np.arange(ds.num_episodes)
    total = int(ds.lengths[episodes].sum())
    if total == 0:
        raise DatasetError(ds.root, "no frames to compute statistics over")
    dims = {c: int(ds.info["features"][c]["shape"][0]) for c in STATS_KEYS if c in ds.info["features"]}
    columns = list(dims)
    exact = total * sum(dims.values()) * 8 <= exact_quantile_mb * 2**20
    start = time.perf_counter()
    moments = {c: _Moments(dims[c]) for c in columns}
    kept: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    passes = 1 if exact else 2
    bar = Progress(total * passes, "data stats", unit="frames", stream=sys.stdout if progress else _Null())
    for chunk in ds.iter_column_chunks(columns, episodes, frames_per_chunk=chunk_frames, threads=read_threads):
        for c in columns:
            x = chunk[c]
            if not np.all(np.isfinite(x)):
                raise DatasetError(ds.root, f"column {c!r} contains NaN/inf; run validate() to find the frame")
            moments[c].add(x)
            if exact:
                kept[c].append(x)
        bar.update(len(chunk[columns[0]]), extra=f"pass 1/{passes}")
    if exact:
        quantiles, bounds = _exact_quantiles(kept), {}
    else:
        chunks = ds.iter_column_chunks(columns, episodes, frames_per_chunk=chunk_frames, threads=read_threads)
        quantiles, bounds = _histogram_quantiles(chunks, moments, histogram_bins, bar)
    fields = {
        STATS_KEYS[c]: FieldStats(mean=moments[c].mean, std=moments[c].std, min=moments[c].min,
                                  max=moments[c].max, q01=quantiles[c][0], q99=quantiles[c][1])
        for c in columns
    }
    report = StatsReport(frames=total, episodes=len(episodes), seconds=time.perf_counter() - start,
                         quantile_method="exact" if exact else "histogram", passes=passes,
                         quantile_error_bound=bounds)
    return NormStats(fields), report


def _exact_quantiles(kept: dict[str, list[np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(q01, q99) per column over every kept frame (np.quantile); the kept chunks are released."""
    quantiles = {}
    for c, parts in kept.items():
        allx = np.concatenate(parts).astype(np.float64)
        parts.clear()
        q = np.quantile(allx, QUANTILES, axis=0)
        quantiles[c] = (q[0], q[1])
    return quantiles


def _histogram_quantiles(chunks: Iterator[dict[str, np.ndarray]], moments: dict[str, _Moments], bins: int,
                         bar: Progress) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, list[float]]]:
    """The second, streamed pass: (q01, q99) per column read off histograms between the first
    pass's min and max, and each wire key's error bound (the bin width per dimension)."""
    hists = {c: _Histogram(m.min, m.max, bins) for c, m in moments.items()}
    for chunk in chunks:
        for c, hist in hists.items():
            hist.add(chunk[c])
        bar.update(len(next(iter(chunk.values()))), extra="pass 2/2")
    quantiles = {c: (h.quantile(QUANTILES[0]), h.quantile(QUANTILES[1])) for c, h in hists.items()}
    return quantiles, {STATS_KEYS[c]: h.width.tolist() for c, h in hists.items()}


class _Null:
    """A stream that drops what it is given (progress lines when `progress=False`)."""

    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def write_stats(cfg: StatsConfig, progress: bool = True) -> StatsReport:
    """Computes and writes stats.json (atomically, NormStats.save). Returns the report."""
    ds = Dataset(cfg.dataset)
    stats, report = compute_stats(ds, cfg.split, cfg.exact_quantile_mb, cfg.histogram_bins, cfg.chunk_frames,
                                  cfg.read_threads, progress=progress)
    path = Path(cfg.out) if cfg.out else ds.stats_path
    stats.save(path)  # creates the parent directory
    return replace(report, path=path)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(StatsConfig, argv, prog="gauntlet data stats", description=StatsConfig.__doc__)

    def work() -> int:
        print(f"[data stats] {describe(Dataset(cfg.dataset))}", flush=True)
        report = write_stats(cfg)
        message = (f"[data stats] {report.frames} frames of {report.episodes} episodes in {report.seconds:.2f} s "
                   f"({report.frames_per_s:,.0f} frames/s, quantiles: {report.quantile_method}); wrote {report.path}")
        print(message, flush=True)
        return 0

    return run_command("gauntlet data stats", work, {DatasetError: 1})


if __name__ == "__main__":
    sys.exit(main())
