"""The training pre-flight: `validate` checks a whole dataset before a job starts its workers.

Opening a dataset (gauntlet.data.dataset_reader) checks only its metadata; `validate` also checks
what the policy expects (dimensions, split), every split, every episode file and, unless told not
to, every frame for NaN/inf, so a bad dataset fails in seconds with a message naming the file,
episode, frame and field rather than hours into training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gauntlet.data.dataset_reader import Dataset
from gauntlet.data.dataset_schema import DatasetError, first_nonfinite
from gauntlet.keys import ACTION_FEATURE, STATE_FEATURE

_COLUMNS = (STATE_FEATURE, ACTION_FEATURE)  # the numeric columns every episode must have


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
    _check_dims(ds, expected_state_dim, expected_action_dim)
    _check_splits(ds, split)
    for ep in range(ds.num_episodes):
        _check_episode_files(ds, ep)
    if check_values:
        _check_values(ds)
    if require_stats:
        ds.load_norm_stats()
    return ds


def _check_dims(ds: Dataset, expected_state_dim: int | None, expected_action_dim: int | None) -> None:
    if expected_state_dim is not None and ds.state_dim != expected_state_dim:
        raise DatasetError(ds.info_path, f"state_dim is {ds.state_dim}, the policy expects {expected_state_dim} "
                                         "(feature dimension mismatch)")
    if expected_action_dim is not None and ds.action_dim != expected_action_dim:
        raise DatasetError(ds.info_path, f"action_dim is {ds.action_dim}, the policy expects "
                                         f"{expected_action_dim} (feature dimension mismatch)")


def _check_splits(ds: Dataset, split: str | None) -> None:
    """Every split is non-empty with valid indices, `split` exists, and the episode table agrees."""
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


def _check_episode_files(ds: Dataset, ep: int) -> None:
    """The episode's Parquet file (present, length, columns; its footer only) and its sim file."""
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
    missing = [c for c in [*_COLUMNS, *ds.image_features] if c not in names]
    if missing:
        raise DatasetError(path, f"episode {ep}: missing column(s) {missing}")
    if ds.has_sim and not ds.sim_path(ep).is_file():
        raise DatasetError(ds.sim_path(ep), f"episode {ep}: simulator state file is missing")


def _check_values(ds: Dataset) -> None:
    """Every state and action is finite; the first NaN/inf is named by episode and frame."""
    ep_starts = ds.starts
    for chunk_start, chunk in _chunks_with_offsets(ds, _COLUMNS):
        for name in _COLUMNS:
            bad = first_nonfinite(chunk[name].astype(np.float64, copy=False))
            if bad is not None:
                global_index = chunk_start + bad[0]
                ep = int(np.searchsorted(ep_starts, global_index, side="right") - 1)
                frame = global_index - int(ep_starts[ep])
                raise DatasetError(ds.episode_path(ep), f"episode {ep} frame {frame}: {name}[{bad[1]}] is "
                                                        f"{chunk[name][bad]} (NaN/inf)")


def _chunks_with_offsets(ds: Dataset, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    offset = 0
    for chunk in ds.iter_column_chunks(columns):
        yield offset, chunk
        offset += len(chunk[columns[0]])
